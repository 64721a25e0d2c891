import { FlagserveError } from "../runtime/errors.js";
import { Float32Matrix } from "../runtime/matrix.js";
import {
  batchFeeds,
  type OnnxSession,
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
import { lengthSortedOrder, type Pooling, poolHidden, realSpan } from "./pooling.js";

export interface FlagModelOptions extends EmbedderOptions {
  /** "cls" (BGE) or "mean" (E5, GTE); ignored when the graph already outputs sentence_embedding. */
  poolingMethod?: Pooling;
}

/** Output names an encoder graph may give its per-token states. */
const HIDDEN_OUTPUTS = ["last_hidden_state", "token_embeddings", "hidden_states"];

/**
 * FlagEmbedding's FlagModel (encoder-only BaseEmbedder) on ONNX Runtime: tokenize with
 * truncation, sort by length, batch, pool (cls or mean), truncate dimensions, normalise.
 */
export class FlagModel extends AbsEmbedder<Float32Matrix, Float32Array> {
  static readonly DEFAULT_POOLING_METHOD: Pooling = "cls";

  readonly poolingMethod: Pooling;
  private readonly outputName: string;
  private readonly prePooled: boolean;
  /** The per-token output, if the graph has one (for token embeddings). */
  private readonly hiddenName: string | undefined;
  protected nativeDimension = 0;

  protected constructor(nameOrPath: string, options: FlagModelOptions, model: LoadedModel) {
    super(nameOrPath, options, model);
    this.poolingMethod = options.poolingMethod ?? FlagModel.DEFAULT_POOLING_METHOD;
    const outputs = model.sessions[0]?.outputNames ?? [];
    this.prePooled = outputs.includes("sentence_embedding");
    this.hiddenName = HIDDEN_OUTPUTS.find((n) => outputs.includes(n));
    this.outputName = this.prePooled ? "sentence_embedding" : (this.hiddenName ?? (outputs[0] as string));
  }

  /** Load a model directory or hub id; the first encode runs here, so a broken graph fails now. */
  static async load(
    nameOrPath: string,
    options: FlagModelOptions = {},
    hubRepo?: string,
  ): Promise<FlagModel> {
    return loadAs(
      nameOrPath,
      options,
      hubRepo,
      (model) => new FlagModel(nameOrPath, options, model),
      (m) => m.probeDimension(),
    );
  }

  /** Size of the model's own output vectors (before truncateDim). */
  get dimension(): number {
    return this.nativeDimension;
  }

  /** Width of the vectors encode() returns. */
  get outputDimension(): number {
    const t = this.options.truncateDim;
    return t === null ? this.dimension : Math.min(t, this.dimension);
  }

  /** One forward pass at load time: learns the output width and warms the session up. */
  protected async probeDimension(): Promise<void> {
    const session = this.model.sessions[0] as OnnxSession;
    const pooled = await this.forward(session, [this.model.tokenizer.encode("", 8)]);
    if (pooled.dims < 1) throw new FlagserveError("model_files", `${session.path} produced empty embeddings`);
    this.nativeDimension = pooled.dims;
  }

  /**
   * One forward pass over already tokenized inputs on one device: pooled vectors, not truncated
   * or normalised (the server applies per-request dimensions and normalisation itself).
   */
  async denseBatch(encodings: TokenIds[], device = 0): Promise<Float32Matrix> {
    const session = this.model.sessions[device];
    if (!session) throw new FlagserveError("invalid_input", `device index ${device} out of range`);
    return this.forward(session, encodings);
  }

  /**
   * Every real token's output vector (special tokens included) of tokenized inputs: TEI's
   * embed_all. Raw, like the pooled vectors.
   */
  async tokenStates(encodings: TokenIds[], device = 0): Promise<Float32Matrix[]> {
    const session = this.model.sessions[device];
    if (!session) throw new FlagserveError("invalid_input", `device index ${device} out of range`);
    const name = this.hiddenName;
    if (!name) throw new FlagserveError("not_supported", `${session.path} has no per-token output`);
    const tok = this.model.tokenizer;
    const batch = padBatch(encodings, tok.padTokenId, tok.paddingSide);
    const out = await session.run(batchFeeds(session, batch), [name]);
    const hidden = tensorToFloat32(out[name] as NonNullable<(typeof out)[string]>);
    const dims = hidden.length / (batch.size * batch.seqLen);
    return encodings.map((_, r) => {
      const { first, last } = realSpan(batch, r);
      const off = (r * batch.seqLen + first) * dims;
      return new Float32Matrix(hidden.slice(off, off + (last - first + 1) * dims), last - first + 1, dims);
    });
  }

  /** Run one padded batch through the graph and pool it (no truncation or normalisation). */
  protected async forward(session: OnnxSession, encodings: TokenIds[]): Promise<Float32Matrix> {
    const tok = this.model.tokenizer;
    const batch = padBatch(encodings, tok.padTokenId, tok.paddingSide);
    const out = await session.run(batchFeeds(session, batch), [this.outputName]);
    const tensor = out[this.outputName];
    if (!tensor) throw new FlagserveError("model_files", `${session.path} did not return ${this.outputName}`);
    const values = tensorToFloat32(tensor);
    if (this.prePooled) {
      return new Float32Matrix(values, batch.size, values.length / batch.size);
    }
    return poolHidden(values, batch, this.poolingMethod);
  }

  protected async encodeSingleDevice(
    sentences: string[],
    opts: ResolvedEncode & EncodeOptions,
    device: number,
  ): Promise<Float32Matrix> {
    const session = this.model.sessions[device] as OnnxSession;
    const encodings = sentences.map((s) => this.model.tokenizer.encode(s, opts.maxLength));
    return this.encodeEncodings(session, encodings, opts.batchSize);
  }

  /** Embed already tokenized inputs (length-sorted batches, results in input order). */
  async encodeEncodings(
    session: OnnxSession,
    encodings: Encoding[],
    batchSize: number,
  ): Promise<Float32Matrix> {
    const dims = this.outputDimension;
    const out = Float32Matrix.zeros(encodings.length, dims);
    const order = lengthSortedOrder(encodings.map((e) => e.ids.length));
    for (let start = 0; start < order.length; start += batchSize) {
      const idx = order.slice(start, start + batchSize);
      const pooled = this.postprocess(
        await this.forward(
          session,
          idx.map((i) => encodings[i] as Encoding),
        ),
      );
      idx.forEach((orig, r) => {
        out.data.set(pooled.row(r), orig * dims);
      });
    }
    return out;
  }

  /** Truncate to truncateDim, then normalise: the order FlagEmbedding applies them in. */
  protected postprocess(pooled: Float32Matrix): Float32Matrix {
    const truncated =
      this.options.truncateDim === null ? pooled : pooled.truncateColumns(this.options.truncateDim);
    return this.options.normalizeEmbeddings ? truncated.normalizeRows() : truncated;
  }

  protected concat(parts: Float32Matrix[]): Float32Matrix {
    return Float32Matrix.concat(parts, this.outputDimension);
  }

  protected first(out: Float32Matrix): Float32Array {
    return out.row(0).slice();
  }
}
