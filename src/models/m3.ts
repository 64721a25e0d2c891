import { FlagserveError } from "../runtime/errors.js";
import { dot, Float32Matrix, l2NormalizeInPlace } from "../runtime/matrix.js";
import {
  batchFeeds,
  type OnnxSession,
  type PaddedBatch,
  padBatch,
  type TokenIds,
  tensorToFloat32,
} from "../runtime/session.js";
import type { Encoding } from "../runtime/tokenizer.js";
import {
  AbsEmbedder,
  type EmbedderOptions,
  type EncodeOptions,
  type ResolvedEncode,
} from "./abs-embedder.js";
import { loadAs } from "./base.js";
import type { LoadedModel } from "./loader.js";
import { positiveInt } from "./options.js";
import {
  colbertScore,
  type LexicalWeights,
  lexicalMatch,
  lexicalWeightsOf,
  type M3Raw,
  specialIds,
} from "./scoring.js";

export type { LexicalWeights, M3Raw };

import { lengthSortedOrder, realSpan } from "./pooling.js";

export interface M3Options extends EmbedderOptions {
  returnDense?: boolean;
  returnSparse?: boolean;
  returnColbertVecs?: boolean;
}

export interface M3EncodeOptions extends EncodeOptions {
  returnDense?: boolean;
  returnSparse?: boolean;
  returnColbertVecs?: boolean;
}

/** encode() of a list: FlagEmbedding's {dense_vecs, lexical_weights, colbert_vecs}. */
export interface M3Output {
  denseVecs: Float32Matrix | null;
  lexicalWeights: LexicalWeights[] | null;
  /** Per input: one row per token after the first (cls), [tokens - 1, dim]. */
  colbertVecs: Float32Matrix[] | null;
}

/** encode() of a single string. */
export interface M3Single {
  denseVecs: Float32Array | null;
  lexicalWeights: LexicalWeights | null;
  colbertVecs: Float32Matrix | null;
}

export interface M3ScoreOptions {
  batchSize?: number;
  maxQueryLength?: number;
  maxPassageLength?: number;
  /** Weights of [dense, sparse, colbert]. Default [1, 1, 1]. */
  weightsForDifferentModes?: [number, number, number];
}

export interface M3Scores {
  colbert: number[];
  sparse: number[];
  dense: number[];
  "sparse+dense": number[];
  "colbert+sparse+dense": number[];
}

export type M3PairScores = { [K in keyof M3Scores]: number };

/** The graph outputs of a flagserve M3 export (see scripts/export/README.md). */
const DENSE = "last_hidden_state";
const SPARSE = "sparse_weights";
const COLBERT = "colbert_vecs";

/**
 * FlagEmbedding's BGEM3FlagModel on ONNX Runtime: dense (cls), sparse lexical weights and ColBERT
 * vectors from one graph whose heads are extra outputs, plus the scoring functions.
 */
export class BGEM3FlagModel extends AbsEmbedder<M3Output, M3Single, M3EncodeOptions> {
  /** The dense vector is the cls token's. */
  readonly poolingMethod = "cls" as const;
  readonly returnDense: boolean;
  readonly returnSparse: boolean;
  readonly returnColbertVecs: boolean;
  /** cls, eos, pad and unk ids: never lexical weights. */
  private readonly unusedTokens: Set<number>;
  private dims = 0;
  private colbertDims = 0;

  protected constructor(nameOrPath: string, options: M3Options, model: LoadedModel) {
    super(nameOrPath, options, model);
    this.returnDense = options.returnDense ?? true;
    this.returnSparse = options.returnSparse ?? false;
    this.returnColbertVecs = options.returnColbertVecs ?? false;
    const outputs = model.sessions[0]?.outputNames ?? [];
    for (const name of [DENSE, SPARSE, COLBERT]) {
      if (!outputs.includes(name)) {
        throw new FlagserveError(
          "model_files",
          `${model.dir.path} is not a flagserve BGE-M3 export: its graph has no "${name}" output ` +
            "(convert the checkpoint with scripts/export/m3.py)",
        );
      }
    }
    this.unusedTokens = specialIds(model.tokenizer);
  }

  static async load(nameOrPath: string, options: M3Options = {}, hubRepo?: string): Promise<BGEM3FlagModel> {
    return loadAs(
      nameOrPath,
      options,
      hubRepo,
      (model) => new BGEM3FlagModel(nameOrPath, options, model),
      async (m3) => {
        const [probe] = await m3.runRaw([m3.tokenizer.encode("", 8)], 0, {
          dense: true,
          sparse: false,
          colbert: true,
        });
        m3.dims = probe?.dense?.length ?? 0;
        m3.colbertDims = probe?.colbert?.dims ?? 0;
      },
    );
  }

  /** Width of the dense vectors the model produces (before truncateDim). */
  get dimension(): number {
    return this.dims;
  }

  get colbertDimension(): number {
    return this.colbertDims;
  }

  /** Dense (cls) vectors of tokenized inputs, not truncated or normalised: the server's unit of work. */
  async denseBatch(encodings: TokenIds[], device = 0): Promise<Float32Matrix> {
    const rows = await this.runRaw(encodings, device, { dense: true, sparse: false, colbert: false });
    return Float32Matrix.fromRows(
      rows.map((r) => r.dense as Float32Array),
      this.dims,
    );
  }

  /**
   * One forward pass over tokenized inputs on one device, computing only the heads asked for.
   * Results are raw: no truncation, no normalisation, no token filtering.
   */
  async runRaw(
    encodings: TokenIds[],
    device: number,
    want: { dense: boolean; sparse: boolean; colbert: boolean },
  ): Promise<M3Raw[]> {
    const session = this.model.sessions[device] as OnnxSession;
    const tok = this.model.tokenizer;
    const batch = padBatch(encodings, tok.padTokenId, tok.paddingSide);
    const fetch = [
      ...(want.dense ? [DENSE] : []),
      ...(want.sparse ? [SPARSE] : []),
      ...(want.colbert ? [COLBERT] : []),
    ];
    const out = fetch.length ? await session.run(batchFeeds(session, batch), fetch) : {};
    const hidden = out[DENSE] ? tensorToFloat32(out[DENSE]) : undefined;
    const weights = out[SPARSE] ? tensorToFloat32(out[SPARSE]) : undefined;
    const colbert = out[COLBERT] ? tensorToFloat32(out[COLBERT]) : undefined;
    return encodings.map((_, r) => rowOutputs(batch, r, hidden, weights, colbert));
  }

  protected async encodeSingleDevice(
    sentences: string[],
    opts: ResolvedEncode & M3EncodeOptions,
    device: number,
  ): Promise<M3Output> {
    const want = {
      dense: opts.returnDense ?? this.returnDense,
      sparse: opts.returnSparse ?? this.returnSparse,
      colbert: opts.returnColbertVecs ?? this.returnColbertVecs,
    };
    const encodings = sentences.map((s) => this.model.tokenizer.encode(s, opts.maxLength));
    const raws = new Array<M3Raw>(encodings.length);
    const order = lengthSortedOrder(encodings.map((e) => e.ids.length));
    for (let start = 0; start < order.length; start += opts.batchSize) {
      const idx = order.slice(start, start + opts.batchSize);
      const rows = await this.runRaw(
        idx.map((i) => encodings[i] as Encoding),
        device,
        want,
      );
      idx.forEach((orig, r) => {
        raws[orig] = rows[r] as M3Raw;
      });
    }
    const dims = this.outputDimension;
    return {
      denseVecs: want.dense
        ? Float32Matrix.fromRows(
            raws.map((r) => this.finishDense(r.dense as Float32Array)),
            dims,
          )
        : null,
      lexicalWeights: want.sparse
        ? raws.map((r, i) =>
            this.lexicalWeights(r.tokenWeights as Float32Array, (encodings[i] as Encoding).ids),
          )
        : null,
      colbertVecs: want.colbert ? raws.map((r) => this.finishColbert(r.colbert as Float32Matrix)) : null,
    };
  }

  /** Width of encode()'s dense vectors. */
  get outputDimension(): number {
    const t = this.options.truncateDim;
    return t === null ? this.dims : Math.min(t, this.dims);
  }

  /** cls vector -> truncateDim -> L2 normalisation (when normalizeEmbeddings). */
  finishDense(raw: Float32Array): Float32Array {
    const t = this.options.truncateDim;
    const v = t === null ? raw.slice() : raw.slice(0, t);
    return this.options.normalizeEmbeddings ? l2NormalizeInPlace(v) : v;
  }

  /** ColBERT rows -> truncateDim -> per-row L2 normalisation (when normalizeEmbeddings). */
  finishColbert(raw: Float32Matrix): Float32Matrix {
    const t = this.options.truncateDim;
    const m = t === null ? Float32Matrix.fromRows([...raw], raw.dims) : raw.truncateColumns(t);
    return this.options.normalizeEmbeddings ? m.normalizeRows() : m;
  }

  /**
   * FlagEmbedding's _process_token_weights: special tokens (cls, eos, pad, unk) and weights <= 0
   * dropped; a token seen twice keeps its largest weight.
   */
  lexicalWeights(tokenWeights: Float32Array, ids: number[]): LexicalWeights {
    return lexicalWeightsOf(tokenWeights, ids, this.unusedTokens);
  }

  protected concat(parts: M3Output[]): M3Output {
    const first = parts[0] as M3Output;
    return {
      denseVecs: first.denseVecs
        ? Float32Matrix.concat(parts.map((p) => p.denseVecs as Float32Matrix))
        : null,
      lexicalWeights: first.lexicalWeights
        ? parts.flatMap((p) => p.lexicalWeights as LexicalWeights[])
        : null,
      colbertVecs: first.colbertVecs ? parts.flatMap((p) => p.colbertVecs as Float32Matrix[]) : null,
    };
  }

  protected first(out: M3Output): M3Single {
    return {
      denseVecs: out.denseVecs ? out.denseVecs.row(0).slice() : null,
      lexicalWeights: out.lexicalWeights ? (out.lexicalWeights[0] as LexicalWeights) : null,
      colbertVecs: out.colbertVecs ? (out.colbertVecs[0] as Float32Matrix) : null,
    };
  }

  /** Sum over shared tokens of w1 * w2; lists give a matrix (every first against every second). */
  computeLexicalMatchingScore(a: LexicalWeights, b: LexicalWeights): number;
  computeLexicalMatchingScore(a: LexicalWeights[], b: LexicalWeights[]): number[][];
  computeLexicalMatchingScore(
    a: LexicalWeights | LexicalWeights[],
    b: LexicalWeights | LexicalWeights[],
  ): number | number[][] {
    if (Array.isArray(a) && Array.isArray(b)) return a.map((x) => b.map((y) => lexicalMatch(x, y)));
    if (!Array.isArray(a) && !Array.isArray(b)) return lexicalMatch(a, b);
    throw new FlagserveError("invalid_input", "lexical weights must both be dicts or both be lists");
  }

  /** ColBERT late interaction: for every query row the best passage row, averaged over query rows. */
  colbertScore(q: Float32Matrix, p: Float32Matrix): number {
    return colbertScore(q, p, false);
  }

  /** Map lexical weights' token ids to their text (later tokens with the same text win). */
  convertIdToToken(weights: LexicalWeights): Record<string, number>;
  convertIdToToken(weights: LexicalWeights[]): Record<string, number>[];
  convertIdToToken(
    weights: LexicalWeights | LexicalWeights[],
  ): Record<string, number> | Record<string, number>[] {
    const one = (w: LexicalWeights) => {
      const out: Record<string, number> = {};
      for (const [id, v] of Object.entries(w)) out[this.model.tokenizer.decode([Number(id)], false)] = v;
      return out;
    };
    if (!Array.isArray(weights)) return one(weights);
    // FlagEmbedding hands back a bare dict when given a list of one.
    const all = weights.map(one);
    return all.length === 1 ? (all[0] as Record<string, number>) : all;
  }

  /**
   * FlagEmbedding's compute_score: dense, sparse and ColBERT scores of each pair and their weighted
   * combinations. Pairs are scored in chunks of batchSize in the given order (chunk composition
   * matters for ColBERT, see colbertScore's padding note); no instructions, no truncateDim.
   */
  async computeScore(pair: [string, string], opts?: M3ScoreOptions): Promise<M3PairScores>;
  async computeScore(pairs: [string, string][], opts?: M3ScoreOptions): Promise<M3Scores>;
  async computeScore(
    pairs: [string, string][] | [string, string],
    opts: M3ScoreOptions = {},
  ): Promise<M3Scores | M3PairScores> {
    const single = typeof pairs[0] === "string";
    const list = (single ? [pairs as [string, string]] : pairs) as [string, string][];
    const batchSize = positiveInt("batchSize", opts.batchSize, this.options.batchSize);
    const qMax = this.effectiveMaxLength(
      positiveInt("maxQueryLength", opts.maxQueryLength, this.options.queryMaxLength),
    );
    const pMax = this.effectiveMaxLength(
      positiveInt("maxPassageLength", opts.maxPassageLength, this.options.passageMaxLength),
    );
    const w = opts.weightsForDifferentModes ?? [1, 1, 1];
    if (w.length !== 3) throw new FlagserveError("invalid_input", "weightsForDifferentModes needs 3 weights");
    const scores: M3Scores = {
      colbert: [],
      sparse: [],
      dense: [],
      "sparse+dense": [],
      "colbert+sparse+dense": [],
    };
    const all = { dense: true, sparse: true, colbert: true };
    for (let start = 0; start < list.length; start += batchSize) {
      const chunk = list.slice(start, start + batchSize);
      const qEnc = chunk.map(([q]) => this.model.tokenizer.encode(q, qMax));
      const pEnc = chunk.map(([, p]) => this.model.tokenizer.encode(p, pMax));
      const [qRaw, pRaw] = await Promise.all([this.runRaw(qEnc, 0, all), this.runRaw(pEnc, 0, all)]);
      const longestPassage = Math.max(...pEnc.map((e) => e.ids.length));
      chunk.forEach((_, i) => {
        const q = qRaw[i] as M3Raw;
        const p = pRaw[i] as M3Raw;
        const d = dot(this.fullDense(q.dense as Float32Array), this.fullDense(p.dense as Float32Array));
        const s = lexicalMatch(
          this.lexicalWeights(q.tokenWeights as Float32Array, (qEnc[i] as Encoding).ids),
          this.lexicalWeights(p.tokenWeights as Float32Array, (pEnc[i] as Encoding).ids),
        );
        const c = colbertScore(
          this.fullColbert(q.colbert as Float32Matrix),
          this.fullColbert(p.colbert as Float32Matrix),
          (pEnc[i] as Encoding).ids.length < longestPassage,
        );
        scores.dense.push(d);
        scores.sparse.push(s);
        scores.colbert.push(c);
        scores["sparse+dense"].push((s * w[1] + d * w[0]) / (w[1] + w[0]));
        scores["colbert+sparse+dense"].push((c * w[2] + s * w[1] + d * w[0]) / (w[0] + w[1] + w[2]));
      });
    }
    if (!single) return scores;
    // A single flat pair gets plain numbers, as in FlagEmbedding.
    return Object.fromEntries(Object.entries(scores).map(([k, v]) => [k, v[0] as number])) as M3PairScores;
  }

  /** Dense vector at full width, normalised when normalizeEmbeddings (compute_score ignores truncateDim). */
  private fullDense(raw: Float32Array): Float32Array {
    const v = raw.slice();
    return this.options.normalizeEmbeddings ? l2NormalizeInPlace(v) : v;
  }

  private fullColbert(raw: Float32Matrix): Float32Matrix {
    const m = Float32Matrix.fromRows([...raw], raw.dims);
    return this.options.normalizeEmbeddings ? m.normalizeRows() : m;
  }
}

/** Split one padded batch row into the M3 heads' outputs, real tokens only. */
function rowOutputs(
  batch: PaddedBatch,
  r: number,
  hidden: Float32Array | undefined,
  weights: Float32Array | undefined,
  colbert: Float32Array | undefined,
): M3Raw {
  const { first, last } = realSpan(batch, r);
  const n = last - first + 1;
  const out: M3Raw = {};
  if (hidden) {
    const dims = hidden.length / (batch.size * batch.seqLen);
    const off = (r * batch.seqLen + first) * dims;
    out.dense = hidden.slice(off, off + dims);
  }
  if (weights) {
    const off = r * batch.seqLen + first;
    out.tokenWeights = weights.slice(off, off + n);
  }
  if (colbert) {
    const dims = colbert.length / (batch.size * batch.seqLen);
    const off = (r * batch.seqLen + first + 1) * dims;
    out.colbert = new Float32Matrix(colbert.slice(off, off + (n - 1) * dims), n - 1, dims);
  }
  return out;
}
