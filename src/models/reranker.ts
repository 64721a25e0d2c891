import { FlagserveError } from "../runtime/errors.js";
import {
  batchFeeds,
  type OnnxSession,
  padBatch,
  type TokenIds,
  tensorToFloat32,
} from "../runtime/session.js";
import type { Encoding } from "../runtime/tokenizer.js";
import {
  AbsReranker,
  type RerankerOptions,
  type ResolvedScoreOptions,
  type SentencePair,
} from "./abs-reranker.js";
import { loadAs } from "./base.js";
import type { LoadedModel } from "./loader.js";
import { encodePair } from "./pair.js";
import { lengthSortedOrder } from "./pooling.js";
import { sigmoid } from "./scoring.js";

export { encodePair };

/** FlagEmbedding's FlagReranker (encoder-only cross-encoder) on ONNX Runtime: one logit per pair. */
export class FlagReranker extends AbsReranker {
  private readonly outputName: string;

  protected constructor(nameOrPath: string, options: RerankerOptions, model: LoadedModel) {
    super(nameOrPath, options, model);
    const outputs = model.sessions[0]?.outputNames ?? [];
    this.outputName = outputs.includes("logits") ? "logits" : (outputs[0] as string);
  }

  /** Load a cross-encoder; one warm-up pair runs here so a broken graph fails at load time. */
  static async load(
    nameOrPath: string,
    options: RerankerOptions = {},
    hubRepo?: string,
  ): Promise<FlagReranker> {
    return loadAs(
      nameOrPath,
      options,
      hubRepo,
      (model) => new FlagReranker(nameOrPath, options, model),
      async (reranker) => {
        // scoreEncodings refuses a graph with more than one logit per pair.
        await reranker.scoreEncodings([encodePair(reranker.tokenizer, "", "", 8, 16)], 0);
      },
    );
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
  async scoreEncodings(encodings: TokenIds[], device = 0): Promise<Float32Array> {
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
