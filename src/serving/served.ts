import type { SchedulerOptions } from "../config.js";
import { formatInstruction } from "../models/instruction.js";
import { encodePair } from "../models/pair.js";
import { lexicalWeightsOf, type M3Raw, sigmoid, specialIds } from "../models/scoring.js";
import { Float32Matrix } from "../runtime/matrix.js";
import type { Encoding, Side, TextTokenizer } from "../runtime/tokenizer.js";
import { InputTooLongError } from "./errors.js";
import type { EmbedItem, Executor, InputType, ModelInfo, Want } from "./executor.js";
import { BatchScheduler, type SchedulerObserver } from "./scheduler.js";
import { mapYielding } from "./yielding.js";

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
  /** Epoch milliseconds after which the request is abandoned. */
  deadline?: number;
}

/** What the HTTP side needs from a served model of either kind. */
abstract class ServedBase {
  readonly created = Math.floor(Date.now() / 1000);
  readonly info: ModelInfo;
  readonly tokenizer: TextTokenizer;

  protected constructor(info: ModelInfo, tokenizer: TextTokenizer) {
    this.info = info;
    this.tokenizer = tokenizer;
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

  abstract get queued(): number;
  abstract close(): Promise<void>;
}

const DENSE_ONLY: Want = { dense: true, sparse: false, colbert: false };

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
    opts: {
      defaultInputType?: InputType;
      prompts?: Record<string, string>;
      scheduler?: Partial<SchedulerOptions>;
      observer?: SchedulerObserver;
    },
  ) {
    super(info, tokenizer);
    this.defaultInputType = opts.defaultInputType ?? "passage";
    this.prompts = opts.prompts ?? {};
    this.scheduler = new BatchScheduler<EmbedItem, M3Raw>(
      (items, slot) => executor.embed(info.id, items, slot),
      { concurrency: executor.slots, ...opts.scheduler },
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

  /** A text with the instruction its input type calls for. */
  withInstruction(text: string, inputType: InputType): string {
    const i = this.info;
    const instruction = inputType === "query" ? i.queryInstruction : i.passageInstruction;
    if (instruction === null) return text;
    return formatInstruction(inputType === "query" ? i.queryFormat : i.passageFormat, instruction, text);
  }

  /** The prefix a TEI `prompt_name` stands for: the model's sentence-transformers prompts, then query/passage. */
  promptFor(name: string): string | undefined {
    if (Object.hasOwn(this.prompts, name)) return this.prompts[name];
    if (name === "query") return this.withInstruction("", "query");
    if (name === "passage" || name === "document") return this.withInstruction("", "passage");
    return undefined;
  }

  /** Tokenize texts (instructions applied), truncating or refusing over-long ones. */
  tokenize(call: EmbedCall): Promise<Encoding[]> {
    const limit = this.maxInputTokens;
    this.scheduler.admit(call.texts.length);
    return mapYielding(
      call.texts,
      (t, i) => {
        const text = call.prompt !== undefined ? call.prompt + t : this.withInstruction(t, call.inputType);
        if (!call.truncate) {
          const n = this.tokenizer.countTokens(text);
          if (n > limit) throw new InputTooLongError(i, n, limit);
        }
        return this.tokenizer.encode(text, limit, true, call.side);
      },
      call.deadline,
    );
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
  async embed(encodings: Encoding[], deadline: number): Promise<Float32Matrix> {
    const raws = await this.run(encodings, DENSE_ONLY, deadline);
    return Float32Matrix.fromRows(
      raws.map((r) => r.dense as Float32Array),
      this.dimension,
    );
  }

  /** A BGE-M3 input's lexical weights as a sparse vector: token ids ascending, with their weights. */
  sparseVector(raw: M3Raw, encoding: Encoding): { indices: number[]; values: number[] } {
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
  run(encodings: Encoding[], want: Want, deadline: number): Promise<M3Raw[]> {
    return this.scheduler.submit(
      encodings.map((e) => ({ ...e, want })),
      deadline - Date.now(),
    );
  }

  async close(): Promise<void> {
    await this.scheduler.close();
  }
}

/** A cross-encoder as the server sees it: pair encoding in the HTTP process, scores through a scheduler. */
export class ServedReranker extends ServedBase {
  readonly kind = "rerank" as const;
  private readonly scheduler: BatchScheduler<Encoding, number>;

  constructor(
    info: ModelInfo,
    tokenizer: TextTokenizer,
    executor: Executor,
    opts: { scheduler?: Partial<SchedulerOptions>; observer?: SchedulerObserver },
  ) {
    super(info, tokenizer);
    this.scheduler = new BatchScheduler<Encoding, number>(
      async (items, slot) => Array.from(await executor.score(info.id, items, slot)),
      { concurrency: executor.slots, ...opts.scheduler },
      opts.observer,
    );
  }

  get queued(): number {
    return this.scheduler.queued;
  }

  withQueryInstruction(query: string): string {
    const i = this.info;
    return i.queryInstruction === null ? query : formatInstruction(i.queryFormat, i.queryInstruction, query);
  }

  withPassageInstruction(passage: string): string {
    const i = this.info;
    return i.passageInstruction === null
      ? passage
      : formatInstruction(i.passageFormat, i.passageInstruction, passage);
  }

  /** FlagEmbedding's pair encoding with the model's instructions and limits. */
  encodePair(query: string, passage: string): Encoding {
    const max = this.maxInputTokens;
    const q = this.withQueryInstruction(query);
    const p = this.withPassageInstruction(passage);
    return encodePair(this.tokenizer, q, p, Math.floor((max * 3) / 4), max, max);
  }

  /** Refuse at once (429) when the queue cannot take `count` more pairs. */
  admit(count: number): void {
    this.scheduler.admit(count);
  }

  /** Scores of encoded pairs: raw logits, or sigmoid-normalised. */
  async score(pairs: Encoding[], normalize: boolean, deadline: number): Promise<number[]> {
    const logits = await this.scheduler.submit(pairs, deadline - Date.now());
    return normalize ? logits.map(sigmoid) : logits;
  }

  async close(): Promise<void> {
    await this.scheduler.close();
  }
}

export type ServedModel = ServedEmbedder | ServedReranker;
