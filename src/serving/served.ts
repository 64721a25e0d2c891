import type { SchedulerOptions } from "../config.js";
import {
  type CompressSettings,
  type IclExample,
  iclPrefix,
  type LLMRerankInfo,
  pickCutoffLayers,
} from "../models/decoder-prompts.js";
import { formatInstruction } from "../models/instruction.js";
import { lexicalWeightsOf, type M3Raw, sigmoid, specialIds } from "../models/scoring.js";
import { Float32Matrix } from "../runtime/matrix.js";
import type { Encoding, Side, TextTokenizer } from "../runtime/tokenizer.js";
import type { EncodeSpec, Instruction } from "./encode-ops.js";
import { InputTooLongError, invalid } from "./errors.js";
import type { EmbedItem, Executor, InputType, ModelInfo, ScoreItem, TokenIds, Want } from "./executor.js";
import { type Admission, BatchScheduler, type SchedulerObserver } from "./scheduler.js";
import type { Encoded, TokenizerPool } from "./tokenizer-pool.js";

export interface EmbedCall {
  texts: string[];
  /** Which instruction to apply; ignored when `prompt` is given. */
  inputType: InputType;
  /** A literal prefix (a sentence-transformers prompt) instead of the input type's instruction. */
  prompt?: string;
  /** Cut over-long inputs (true) or refuse them (false). */
  truncate: boolean;
  /** Which end to cut. Default: the tokenizer's truncation side. */
  side?: Side;
  /** Cut each text to this many tokens before the instruction is applied. */
  maxTokens?: number;
  /** The task description queries get instead of the model's default one. */
  instruction?: string;
  /** ICL models: the in-context examples queries get instead of the default ones (null: none). */
  examples?: IclExample[] | null;
  /** Aborted at the request's deadline or when the client goes away. */
  signal?: AbortSignal;
}

/** When and how a request's inputs are computed. */
export interface RunOptions {
  /** Epoch milliseconds after which the request is abandoned. */
  deadline: number;
  signal?: AbortSignal;
  /** The room reserved for this request at admission. */
  admission?: Admission;
}

export interface ServedOptions {
  pool: TokenizerPool;
  scheduler?: Partial<SchedulerOptions>;
  /** Device workers the batches are spread over (for the pipelining bound). */
  devices?: number;
  observer?: SchedulerObserver;
}

/** What the HTTP side needs from a served model of either kind. */
abstract class ServedBase {
  readonly created = Math.floor(Date.now() / 1000);
  readonly info: ModelInfo;
  /** For light work on the event loop (vocabulary size, decoding a few ids); tokenizing is the pool's. */
  readonly tokenizer: TextTokenizer;
  protected readonly pool: TokenizerPool;
  /** Tokens per character of recent requests, to estimate a request's size before tokenizing it. */
  private tokensPerChar = 0.3;

  protected constructor(info: ModelInfo, tokenizer: TextTokenizer, pool: TokenizerPool) {
    this.info = info;
    this.tokenizer = tokenizer;
    this.pool = pool;
  }

  get id(): string {
    return this.info.id;
  }

  get source(): string {
    return this.info.source;
  }

  /** Longest input in tokens, special tokens included. */
  get maxInputTokens(): number {
    return this.info.maxLength;
  }

  /** About how many tokens these texts will be, each with `extraChars` more and capped at `cap`. */
  estimateTokens(texts: readonly string[], extraChars = 0, cap = this.maxInputTokens): number {
    const specials = this.tokenizer.numSpecialTokens(false);
    let n = 0;
    for (const t of texts)
      n += Math.min(cap, specials + Math.ceil((t.length + extraChars) * this.tokensPerChar));
    return n;
  }

  /** Tokenize in the pool, and learn the tokens-per-character rate from the result. */
  protected async encode(spec: EncodeSpec, texts: string[], signal?: AbortSignal): Promise<Encoded> {
    const out = await this.pool.encode(this.info.dir, spec, texts, signal);
    // Truncated inputs would bias the rate low; count only inputs under the window.
    let tokens = 0;
    let counted = 0;
    for (const e of out.encodings) {
      if (e.ids.length < this.maxInputTokens) {
        tokens += e.ids.length;
        counted++;
      }
    }
    if (counted > 0 && out.chars > 0) {
      const rate = tokens / out.chars;
      this.tokensPerChar = 0.9 * this.tokensPerChar + 0.1 * Math.min(2, Math.max(0.05, rate));
    }
    return out;
  }

  /** TEI's /tokenize body for these texts, rendered in the pool. */
  teiTokenize(texts: string[], spec: EncodeSpec, signal?: AbortSignal): Promise<Uint8Array> {
    return this.pool.teiTokenize(this.info.dir, spec, texts, signal);
  }

  abstract get queued(): number;
  abstract close(): Promise<void>;
}

const DENSE_ONLY: Want = { dense: true, sparse: false, colbert: false };

function instruction(text: string | null, format: string): Instruction | null {
  return text === null ? null : { format, text };
}

/**
 * An embedding model as the server sees it: tokenizer, instructions and limits in the HTTP
 * process, and a batching scheduler in front of the executor that holds the weights.
 */
export class ServedEmbedder extends ServedBase {
  readonly kind = "embedding" as const;
  readonly defaultInputType: InputType;
  /** Named prompts of the model's config_sentence_transformers.json. */
  readonly prompts: Record<string, string>;
  private readonly scheduler: BatchScheduler<EmbedItem, M3Raw>;
  private unused: Set<number> | undefined;

  constructor(
    info: ModelInfo,
    tokenizer: TextTokenizer,
    executor: Executor,
    opts: ServedOptions & { defaultInputType?: InputType; prompts?: Record<string, string> },
  ) {
    super(info, tokenizer, opts.pool);
    this.defaultInputType = opts.defaultInputType ?? "passage";
    this.prompts = opts.prompts ?? {};
    this.scheduler = new BatchScheduler<EmbedItem, M3Raw>(
      (items, slot, signal) => executor.embed(info.id, items, slot, signal),
      { ...opts.scheduler, concurrency: executor.slots, devices: opts.devices ?? 1 },
      opts.observer,
    );
  }

  get dimension(): number {
    return this.info.dimension;
  }

  get pooling(): string {
    return this.info.pooling;
  }

  get queued(): number {
    return this.scheduler.queued;
  }

  /** The instruction an input type calls for, if the model has one. */
  instructionFor(inputType: InputType): Instruction | null {
    const i = this.info;
    if (inputType === "query") return instruction(i.queryInstruction, i.queryFormat);
    // Classification and clustering: the model's task instruction, written like a query's;
    // models without one (encoders) embed such texts as passages, as their cards say.
    const task = inputType === "passage" ? undefined : i.taskInstructions?.[inputType];
    if (task) return instruction(task, i.queryFormat);
    return instruction(i.passageInstruction, i.passageFormat);
  }

  /** The prefix a TEI `prompt_name` stands for: the model's sentence-transformers prompts, then query/passage. */
  promptFor(name: string): string | undefined {
    if (Object.hasOwn(this.prompts, name)) return this.prompts[name];
    const side =
      name === "query" ? "query" : name === "passage" || name === "document" ? "passage" : undefined;
    if (!side) return undefined;
    const ins = this.instructionFor(side);
    return ins ? formatInstruction(ins.format, ins.text, "") : "";
  }

  /**
   * Refuse at once (429 / 413) when the queue cannot take a request of about `tokens` tokens in
   * time, else reserve room for it until its inputs are submitted.
   */
  admit(inputs: number, tokens: number, deadline: number): Admission {
    return this.scheduler.admit(inputs, tokens, deadline);
  }

  /** Tokenize texts (instructions applied) in the pool, truncating or refusing over-long ones. */
  async tokenize(call: EmbedCall): Promise<TokenIds[]> {
    const icl = this.iclSpec(call);
    if (icl) return (await this.encode(icl, call.texts, call.signal)).encodings;
    const spec: EncodeSpec = {
      kind: "text",
      limit: this.maxInputTokens,
      truncate: call.truncate,
      offset: 0,
      ...(call.side ? { side: call.side } : {}),
      ...(call.maxTokens !== undefined ? { maxTokens: call.maxTokens } : {}),
      ...(call.prompt !== undefined
        ? { prefix: call.prompt }
        : {
            instruction:
              call.instruction !== undefined && call.inputType === "query"
                ? instruction(call.instruction, this.info.queryFormat)
                : this.instructionFor(call.inputType),
          }),
    };
    return (await this.encode(spec, call.texts, call.signal)).encodings;
  }

  /** Whether queries of this model carry in-context examples (FlagICLModel). */
  get icl(): boolean {
    return Boolean(this.info.decoder?.icl);
  }

  /**
   * An ICL model's queries: the examples (the request's, else the model's default ones) and the
   * instruction become FlagICLModel's prompt; other calls are plain texts.
   */
  private iclSpec(call: EmbedCall): EncodeSpec | undefined {
    const d = this.info.decoder;
    if (!d?.icl || call.inputType !== "query" || call.prompt !== undefined) return undefined;
    const text = call.instruction ?? this.info.queryInstruction;
    const examples = call.examples === undefined ? d.icl.examples : call.examples;
    return {
      kind: "icl",
      maxLength: d.queryMaxLength,
      hardLimit: d.hardLimit,
      truncate: call.truncate,
      instruction: instruction(text, this.info.queryFormat),
      prefix: iclPrefix(examples, d.icl.examplesFormat, text),
      suffix: d.icl.suffix,
      offset: 0,
    };
  }

  /** Characters a call adds to each text (instruction, examples), for the size estimate. */
  extraChars(call: Pick<EmbedCall, "inputType" | "instruction" | "examples" | "prompt">): number {
    if (call.prompt !== undefined) return call.prompt.length;
    const ins =
      call.inputType === "query"
        ? (call.instruction ?? this.info.queryInstruction)
        : this.info.passageInstruction;
    const spec = this.iclSpec({ texts: [], truncate: true, ...call });
    return (ins?.length ?? 0) + (spec?.kind === "icl" ? spec.prefix.length + spec.suffix.length : 0);
  }

  /** Tokens one input may become: ICL prompts carry their examples on top of the input's limit. */
  get maxPromptTokens(): number {
    return this.icl ? (this.info.decoder?.hardLimit ?? this.maxInputTokens) : this.maxInputTokens;
  }

  /** Token ids given by the client (model vocabulary): special tokens added, truncated to the limit. */
  fromTokenIds(ids: number[][], truncate: boolean): Encoding[] {
    const limit = this.maxInputTokens;
    const specials = this.tokenizer.numSpecialTokens(false);
    return ids.map((seq, i) => {
      if (seq.length + specials > limit && !truncate)
        throw new InputTooLongError(i, seq.length + specials, limit);
      return this.tokenizer.withSpecialTokens(this.tokenizer.truncate(seq, limit - specials), null);
    });
  }

  /** Pooled dense vectors (not normalised) for tokenized inputs, through the batching scheduler. */
  async embed(encodings: TokenIds[], opts: RunOptions): Promise<Float32Matrix> {
    const raws = await this.run(encodings, DENSE_ONLY, opts);
    return Float32Matrix.fromRows(
      raws.map((r) => r.dense as Float32Array),
      this.dimension,
    );
  }

  /** A BGE-M3 input's lexical weights as a sparse vector: token ids ascending, with their weights. */
  sparseVector(raw: M3Raw, encoding: TokenIds): { indices: number[]; values: number[] } {
    this.unused ??= specialIds(this.tokenizer);
    const weights = lexicalWeightsOf(raw.tokenWeights as Float32Array, encoding.ids, this.unused);
    const indices = Object.keys(weights)
      .map(Number)
      .sort((a, b) => a - b);
    return { indices, values: indices.map((i) => weights[String(i)] as number) };
  }

  /** A BGE-M3 input's ColBERT vectors with the model's truncateDim and normalisation. */
  colbertVectors(raw: M3Raw): Float32Matrix {
    const m = raw.colbert as Float32Matrix;
    const cut = this.info.truncateDim
      ? m.truncateColumns(this.info.truncateDim)
      : Float32Matrix.fromRows([...m], m.dims);
    return this.info.normalize ? cut.normalizeRows() : cut;
  }

  /** All heads a request asks for (BGE-M3), raw, in input order. */
  run(encodings: TokenIds[], want: Want, opts: RunOptions): Promise<M3Raw[]> {
    return this.scheduler.submit(
      encodings.map((e) => ({ ids: e.ids, typeIds: e.typeIds, want })),
      opts,
    );
  }

  async close(): Promise<void> {
    await this.scheduler.close();
  }
}

export interface PairCall {
  query: string;
  documents: string[];
  truncate: boolean;
  maxChunks: number;
  maxTokensPerDoc?: number;
  signal?: AbortSignal;
}

/** An LLM reranker request's extension options, as the request gave them. */
export interface LLMRerankOptions {
  cutoffLayers?: number[] | undefined;
  compressRatio?: number | undefined;
  compressLayers?: number[] | undefined;
}

/** What a rerank request asks of an LLM reranker: the (layer, head) score and the compression. */
export interface LLMRerankPlan {
  layer: number;
  head: number;
  compress: CompressSettings | undefined;
  /** Requests batch together only with the same key (the graph takes one compression per batch). */
  key: string;
}

/** Batching schedulers kept for compression settings other than the default one. */
const MAX_OPTION_SCHEDULERS = 8;

/**
 * A reranker as the server sees it: pair encoding in the tokenizer pool, scores through a
 * scheduler. LLM rerankers build FlagEmbedding's pair prompt, and each row says which (layer,
 * head) score it wants; the lightweight model's compression is one input per batch, so requests
 * with other compression settings are batched by a scheduler of their own.
 */
export class ServedReranker extends ServedBase {
  readonly kind = "rerank" as const;
  private readonly schedulers = new Map<string, BatchScheduler<ScoreItem, number>>();
  /** Schedulers dropped while busy: close() waits for them. */
  private readonly retiring = new Set<Promise<void>>();
  private readonly defaultPlan: LLMRerankPlan | undefined;
  private readonly makeScheduler: (
    compress: CompressSettings | undefined,
  ) => BatchScheduler<ScoreItem, number>;

  constructor(info: ModelInfo, tokenizer: TextTokenizer, executor: Executor, opts: ServedOptions) {
    super(info, tokenizer, opts.pool);
    this.makeScheduler = (compress) =>
      new BatchScheduler<ScoreItem, number>(
        async (items, slot, signal) =>
          Array.from(await executor.score(info.id, items, slot, signal, compress ? { compress } : undefined)),
        { ...opts.scheduler, concurrency: executor.slots, devices: opts.devices ?? 1 },
        opts.observer,
      );
    this.defaultPlan = info.llm ? this.llmPlan({}) : undefined;
    this.schedulers.set(this.defaultPlan?.key ?? "", this.makeScheduler(this.defaultPlan?.compress));
  }

  get queued(): number {
    let n = 0;
    for (const s of this.schedulers.values()) n += s.queued;
    return n;
  }

  /** The scheduler of a plan's compression settings (made on first use, the idle ones retired). */
  private schedulerFor(plan: LLMRerankPlan | undefined): BatchScheduler<ScoreItem, number> {
    const key = plan?.key ?? this.defaultPlan?.key ?? "";
    let s = this.schedulers.get(key);
    if (s) return s;
    if (this.schedulers.size > MAX_OPTION_SCHEDULERS) {
      const keep = this.defaultPlan?.key ?? "";
      for (const [k, old] of this.schedulers) {
        if (k === keep || old.queued > 0) continue;
        this.schedulers.delete(k);
        const closing = old.close();
        this.retiring.add(closing);
        void closing.finally(() => this.retiring.delete(closing));
      }
    }
    s = this.makeScheduler(plan?.compress);
    this.schedulers.set(key, s);
    return s;
  }

  /**
   * Check a request's cutoff_layers / compress_ratio / compress_layers against what this model
   * (and its exported graph) can serve, and resolve them; a 400 names what it supports.
   */
  llmPlan(req: LLMRerankOptions): LLMRerankPlan | undefined {
    const llm = this.info.llm;
    const cls = this.info.modelClass ?? "encoder-only-base";
    const needs = (param: string, what: string, classes: string) =>
      invalid(`${param} needs ${what} (${classes}); ${this.id} is ${cls}`, param);
    if (req.cutoffLayers !== undefined && !llm?.cutoffLayers)
      throw needs(
        "cutoff_layers",
        "a layerwise or lightweight LLM reranker",
        "decoder-only-layerwise, decoder-only-lightweight",
      );
    if (req.compressRatio !== undefined && !llm?.compressRatio)
      throw needs("compress_ratio", "a lightweight LLM reranker", "decoder-only-lightweight");
    if (req.compressLayers !== undefined && !llm?.compressLayers)
      throw needs("compress_layers", "a lightweight LLM reranker", "decoder-only-lightweight");
    if (!llm) return undefined;
    let layer = 0;
    let head = 0;
    const c = llm.cutoffLayers;
    if (c) {
      let picked = pickCutoffLayers(req.cutoffLayers ?? c.default, c);
      // An export cut at --max-layer cannot serve the class default (the last layer): its deepest one does.
      if ("error" in picked && req.cutoffLayers === undefined)
        picked = pickCutoffLayers(c.available.slice(-1), c);
      if ("error" in picked) {
        throw invalid(
          `${picked.error}; ${this.id} serves cutoff layers ${c.available.join(", ")}`,
          "cutoff_layers",
        );
      }
      if (req.cutoffLayers !== undefined && picked.picks.length !== 1) {
        throw invalid("cutoff_layers: a ranking scores with one layer; give one", "cutoff_layers");
      }
      // The model's own default may collect several layers: rank by the deepest.
      const pick = picked.picks[picked.picks.length - 1] as { layer: number; head: number };
      layer = pick.layer;
      head = pick.head;
    }
    const compress = this.compressFor(llm, req);
    return {
      layer,
      head,
      compress,
      key: compress ? `${compress.ratio}:${compress.layers.join(",")}` : "none",
    };
  }

  private compressFor(llm: LLMRerankInfo, req: LLMRerankOptions): CompressSettings | undefined {
    const r = llm.compressRatio;
    const l = llm.compressLayers;
    if (!r || !l) return undefined;
    const ratio = req.compressRatio ?? r.default;
    if (!r.anyInteger && !r.available.includes(ratio)) {
      throw invalid(
        `compress_ratio must be one of ${r.available.join(", ")} for ${this.id}`,
        "compress_ratio",
      );
    }
    const asked = req.compressLayers ?? l.default;
    const bad = req.compressLayers?.filter((i) => !l.available.includes(i)) ?? [];
    if (bad.length > 0) {
      throw invalid(
        `compress_layers ${bad.join(", ")} cannot be compressed; ${this.id} compresses before layers ${l.available.join(", ")}`,
        "compress_layers",
      );
    }
    const layers = [...new Set(asked.filter((i) => l.available.includes(i)))].sort((a, b) => a - b);
    // Ratio 1 or no layer: the rows go through uncompressed, whatever the request said.
    return ratio === 1 || layers.length === 0 ? undefined : { ratio, layers };
  }

  /** See ServedEmbedder.admit; a pair is about its query and its document. */
  admit(inputs: number, tokens: number, deadline: number, plan?: LLMRerankPlan): Admission {
    return this.schedulerFor(plan).admit(inputs, tokens, deadline);
  }

  /** FlagEmbedding's pair encoding with the model's instructions and limits (or windows of long documents). */
  async encodePairs(call: PairCall): Promise<Encoded> {
    const i = this.info;
    if (i.llm) {
      return this.encode(
        {
          kind: "llm-pair",
          query: call.query,
          queryInstruction: instruction(i.queryInstruction, i.queryFormat),
          passageInstruction: instruction(i.passageInstruction, i.passageFormat),
          separator: i.llm.separator,
          prompt: i.llm.prompt,
          bosTokenId: i.llm.bosTokenId,
          maxLength: i.maxLength,
          queryMaxLength: i.llm.queryMaxLength ?? Math.floor((i.maxLength * 3) / 4),
          truncate: call.truncate,
          maxChunks: call.maxChunks,
          ...(call.maxTokensPerDoc !== undefined ? { maxTokensPerDoc: call.maxTokensPerDoc } : {}),
          offset: 0,
        },
        call.documents,
        call.signal,
      );
    }
    return this.encode(
      {
        kind: "pair",
        limit: this.maxInputTokens,
        truncate: call.truncate,
        query: call.query,
        queryInstruction: instruction(i.queryInstruction, i.queryFormat),
        passageInstruction: instruction(i.passageInstruction, i.passageFormat),
        maxChunks: call.maxChunks,
        ...(call.maxTokensPerDoc !== undefined ? { maxTokensPerDoc: call.maxTokensPerDoc } : {}),
        offset: 0,
      },
      call.documents,
      call.signal,
    );
  }

  /**
   * Scores of encoded pairs: raw logits, or sigmoid-normalised. LLM reranker rows need the plan
   * and the part lengths encodePairs gave (`extras`, two per row).
   */
  async score(
    pairs: TokenIds[],
    normalize: boolean,
    opts: RunOptions,
    llm?: { plan: LLMRerankPlan; extras: number[] | undefined },
  ): Promise<number[]> {
    const plan = llm?.plan;
    const extras = llm?.extras;
    const items: ScoreItem[] =
      plan && extras
        ? pairs.map((p, k) => ({
            ids: p.ids,
            typeIds: p.typeIds,
            llm: {
              queryLength: extras[2 * k] as number,
              promptLength: extras[2 * k + 1] as number,
              layer: plan.layer,
              head: plan.head,
            },
          }))
        : pairs;
    const logits = await this.schedulerFor(plan).submit(items, opts);
    return normalize ? logits.map(sigmoid) : logits;
  }

  async close(): Promise<void> {
    await Promise.all([...this.schedulers.values()].map((s) => s.close()));
    await Promise.all([...this.retiring]);
  }
}

export type ServedModel = ServedEmbedder | ServedReranker;
