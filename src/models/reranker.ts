import { FlagserveError } from "../runtime/errors.js";
import { batchFeeds, type OnnxSession, padBatch, tensorToFloat32 } from "../runtime/session.js";
import type { Encoding, TextTokenizer } from "../runtime/tokenizer.js";
import {
  AbsReranker,
  type RerankerOptions,
  type ResolvedScoreOptions,
  type SentencePair,
  sigmoid,
} from "./abs-reranker.js";
import { type LoadedModel, loadModel, releaseModel } from "./loader.js";
import { lengthSortedOrder } from "./pooling.js";

/**
 * FlagEmbedding's pair encoding for cross-encoders: the query without special tokens cut to
 * `queryMaxLength`, the passage to `maxLength`, then special tokens added with only the passage
 * truncated so the pair fits `maxLength` (transformers' prepare_for_model, truncation
 * 'only_second'). When even an empty passage would not fit, transformers leaves the pair as is;
 * here it is then cut to `hardLimit` (the model's position table) rather than failing in the graph.
 */
export function encodePair(
  tok: TextTokenizer,
  query: string,
  passage: string,
  queryMaxLength: number,
  maxLength: number,
  hardLimit = Number.POSITIVE_INFINITY,
): Encoding {
  const q = tok.encodeWithoutSpecials(query, queryMaxLength);
  let p = tok.encodeWithoutSpecials(passage, maxLength);
  const specials = tok.numSpecialTokens(true);
  const over = q.length + p.length + specials - maxLength;
  if (over > 0 && p.length > over) p = tok.truncate(p, p.length - over);
  let total = q.length + p.length + specials;
  if (total > hardLimit) {
    const cutP = Math.min(p.length, total - hardLimit);
    p = tok.truncate(p, p.length - cutP);
    total -= cutP;
    return tok.withSpecialTokens(total > hardLimit ? tok.truncate(q, q.length - (total - hardLimit)) : q, p);
  }
  return tok.withSpecialTokens(q, p);
}

/** FlagEmbedding's FlagReranker (encoder-only cross-encoder) on ONNX Runtime: one logit per pair. */
export class FlagReranker extends AbsReranker {
  protected readonly model: LoadedModel;
  private readonly outputName: string;

  protected constructor(nameOrPath: string, options: RerankerOptions, model: LoadedModel) {
    super(nameOrPath, options);
    this.model = model;
    const outputs = model.sessions[0]?.outputNames ?? [];
    this.outputName = outputs.includes("logits") ? "logits" : (outputs[0] as string);
  }

  /** Load a cross-encoder; one warm-up pair runs here so a broken graph fails at load time. */
  static async load(
    nameOrPath: string,
    options: RerankerOptions = {},
    hubRepo?: string,
  ): Promise<FlagReranker> {
    const model = await loadModel(nameOrPath, options, hubRepo ? { hubRepo } : {});
    const reranker = new FlagReranker(nameOrPath, options, model);
    const warm = await reranker.scoreEncodings([encodePair(model.tokenizer, "", "", 8, 16)], 0);
    if (warm.length !== 1) {
      throw new FlagserveError(
        "model_files",
        `${model.dir.path} is not a single-logit cross-encoder: ${reranker.outputName} has ${warm.length} values per pair`,
      );
    }
    return reranker;
  }

  get deviceCount(): number {
    return this.model.sessions.length;
  }

  get modelMaxLength(): number | undefined {
    return this.model.maxLength;
  }

  get tokenizer(): TextTokenizer {
    return this.model.tokenizer;
  }

  get loaded(): LoadedModel {
    return this.model;
  }

  close(): Promise<void> {
    return releaseModel(this.model);
  }

  /** FlagEmbedding's pair encoding with this model's tokenizer and limits. */
  encodePair(query: string, passage: string, opts: ResolvedScoreOptions): Encoding {
    return encodePair(
      this.model.tokenizer,
      query,
      passage,
      opts.queryMaxLength,
      opts.maxLength,
      this.model.maxLength,
    );
  }

  /** Raw logits of one batch of encoded pairs on one device (the server's unit of work). */
  async scoreEncodings(encodings: Encoding[], device = 0): Promise<Float32Array> {
    const session = this.model.sessions[device] as OnnxSession;
    const tok = this.model.tokenizer;
    const batch = padBatch(encodings, tok.padTokenId, tok.paddingSide);
    const out = await session.run(batchFeeds(session, batch), [this.outputName]);
    const tensor = out[this.outputName];
    if (!tensor) throw new FlagserveError("model_files", `${session.path} did not return ${this.outputName}`);
    const values = tensorToFloat32(tensor);
    if (values.length !== encodings.length) {
      throw new FlagserveError(
        "model_files",
        `${session.path} returns ${values.length / encodings.length} logits per pair; a reranker needs one`,
      );
    }
    return values;
  }

  protected async computeScoreSingleDevice(
    pairs: SentencePair[],
    opts: ResolvedScoreOptions,
    device: number,
  ): Promise<number[]> {
    const encodings = pairs.map(([q, p]) => this.encodePair(q, p, opts));
    const scores = new Array<number>(pairs.length);
    const order = lengthSortedOrder(encodings.map((e) => e.ids.length));
    for (let start = 0; start < order.length; start += opts.batchSize) {
      const idx = order.slice(start, start + opts.batchSize);
      const logits = await this.scoreEncodings(
        idx.map((i) => encodings[i] as Encoding),
        device,
      );
      idx.forEach((orig, r) => {
        scores[orig] = logits[r] as number;
      });
    }
    return opts.normalize ? scores.map(sigmoid) : scores;
  }
}
