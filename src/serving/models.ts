import { basename } from "node:path";
import type { AutoModelOptions } from "../models/auto.js";
import { formatInstruction } from "../models/instruction.js";
import { defaultInstructions, mappingKey } from "../models/mapping.js";
import { openEmbedder } from "../models/open.js";
import { Float32Matrix } from "../runtime/matrix.js";
import type { Encoding, Side, TextTokenizer } from "../runtime/tokenizer.js";
import { BatchScheduler, type BatchStats, type SchedulerOptions } from "./scheduler.js";

export type InputType = "query" | "passage";

/** One `--model` entry: where the model comes from, its public name, and per-model defaults. */
export interface ModelSpec {
  source: string;
  /** Public name clients use; defaults to the hub id, or the directory's name for local paths. */
  alias?: string;
  options: AutoModelOptions;
  /** Applied when a request gives no input_type. Default "passage" (no query instruction). */
  defaultInputType?: InputType;
}

/** Parse `ID_OR_DIR[=ALIAS]`. */
export function parseModelArg(arg: string): { source: string; alias?: string } {
  const eq = arg.lastIndexOf("=");
  if (eq > 0 && eq < arg.length - 1) return { source: arg.slice(0, eq), alias: arg.slice(eq + 1) };
  return { source: arg };
}

export function defaultAlias(source: string): string {
  const isPath = source.startsWith("/") || source.startsWith(".") || source.startsWith("~");
  return isPath ? basename(source.replace(/\/+$/, "")) : source;
}

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
}

/** Raised when an input is longer than the model accepts and truncation was refused. */
export class InputTooLongError extends Error {
  readonly index: number;
  readonly tokens: number;
  readonly limit: number;
  constructor(index: number, tokens: number, limit: number) {
    super(
      `input ${index} has ${tokens} tokens, more than the model's limit of ${limit}; send it shorter or allow truncation`,
    );
    this.index = index;
    this.tokens = tokens;
    this.limit = limit;
  }
}

/**
 * An embedding model as the server sees it: tokenizer and limits for the HTTP process, and a
 * batching scheduler in front of the model's devices.
 */
export class ServedEmbedder {
  readonly kind = "embedding" as const;
  readonly id: string;
  readonly source: string;
  readonly created = Math.floor(Date.now() / 1000);
  readonly defaultInputType: InputType;
  readonly queryInstruction: string | null;
  readonly passageInstruction: string | null;
  readonly queryFormat: string;
  readonly passageFormat: string;
  /** Named prompts of the model's config_sentence_transformers.json. */
  readonly prompts: Record<string, string>;
  private readonly scheduler: BatchScheduler<Float32Array>;

  private constructor(
    spec: ModelSpec,
    readonly model: Awaited<ReturnType<typeof openEmbedder>>,
    prompts: Record<string, string>,
    scheduler: Partial<SchedulerOptions>,
    onBatch?: (s: BatchStats) => void,
  ) {
    this.prompts = prompts;
    this.id = spec.alias ?? defaultAlias(spec.source);
    this.source = spec.source;
    this.defaultInputType = spec.defaultInputType ?? "passage";
    const o = model.options;
    this.queryInstruction = o.queryInstructionForRetrieval;
    this.passageInstruction = o.passageInstructionForRetrieval;
    this.queryFormat = o.queryInstructionFormat;
    this.passageFormat = o.passageInstructionFormat;
    this.scheduler = new BatchScheduler<Float32Array>(
      async (encodings, slot) => {
        const pooled = await model.denseBatch(encodings, slot);
        return Array.from({ length: pooled.rows }, (_, r) => pooled.row(r));
      },
      { concurrency: model.deviceCount, ...scheduler },
      onBatch,
    );
  }

  static async load(
    spec: ModelSpec,
    scheduler: Partial<SchedulerOptions> = {},
    onBatch?: (s: BatchStats) => void,
  ): Promise<ServedEmbedder> {
    const defaults = defaultInstructions(spec.source);
    const options: AutoModelOptions = {
      queryInstructionForRetrieval: defaults.query ?? null,
      passageInstructionForRetrieval: defaults.passage ?? null,
      ...spec.options,
    };
    const model = await openEmbedder(spec.source, options);
    const st = await model.loaded.dir.readJson("config_sentence_transformers.json");
    const prompts = Object.fromEntries(
      Object.entries((st?.prompts as Record<string, unknown> | undefined) ?? {}).filter(
        (e): e is [string, string] => typeof e[1] === "string",
      ),
    );
    return new ServedEmbedder(spec, model, prompts, scheduler, onBatch);
  }

  get tokenizer(): TextTokenizer {
    return this.model.tokenizer;
  }

  get dimension(): number {
    return this.model.dimension;
  }

  /** Longest input in tokens, special tokens included. */
  get maxInputTokens(): number {
    return this.model.effectiveMaxLength(this.model.options.passageMaxLength);
  }

  get pooling(): string {
    return this.model.poolingMethod;
  }

  get queued(): number {
    return this.scheduler.queued;
  }

  /** A text with the instruction its input type calls for. */
  withInstruction(text: string, inputType: InputType): string {
    const instruction = inputType === "query" ? this.queryInstruction : this.passageInstruction;
    if (instruction === null) return text;
    return formatInstruction(
      inputType === "query" ? this.queryFormat : this.passageFormat,
      instruction,
      text,
    );
  }

  /** Tokenize texts (instructions applied), truncating or refusing over-long ones. */
  tokenize(call: EmbedCall): Encoding[] {
    const limit = this.maxInputTokens;
    return call.texts.map((t, i) => {
      const text = call.prompt !== undefined ? call.prompt + t : this.withInstruction(t, call.inputType);
      if (!call.truncate) {
        const n = this.tokenizer.countTokens(text);
        if (n > limit) throw new InputTooLongError(i, n, limit);
      }
      return this.tokenizer.encode(text, limit, true, call.side);
    });
  }

  /** The prefix a TEI `prompt_name` stands for: the model's sentence-transformers prompts, then query/passage. */
  promptFor(name: string): string | undefined {
    if (Object.hasOwn(this.prompts, name)) return this.prompts[name];
    if (name === "query") return this.withInstruction("", "query");
    if (name === "passage" || name === "document") return this.withInstruction("", "passage");
    return undefined;
  }

  /** Token ids given by the client (model vocabulary): special tokens added, truncated to the limit. */
  fromTokenIds(ids: number[][], truncate: boolean): Encoding[] {
    const limit = this.maxInputTokens;
    const room = limit - this.tokenizer.numSpecialTokens(false);
    return ids.map((seq, i) => {
      if (seq.length > room && !truncate) throw new InputTooLongError(i, seq.length + limit - room, limit);
      return this.tokenizer.withSpecialTokens(this.tokenizer.truncate(seq, room), null);
    });
  }

  /** Pooled vectors (not normalised) for tokenized inputs, through the batching scheduler. */
  async embed(encodings: Encoding[], timeoutMs: number): Promise<Float32Matrix> {
    const rows = await this.scheduler.submit(encodings, timeoutMs);
    return Float32Matrix.fromRows(rows, this.dimension);
  }

  async close(): Promise<void> {
    await this.scheduler.close();
    await this.model.close();
  }
}

export type ServedModel = ServedEmbedder;

/** Served models by public name, with the lookup rules of the OpenAI-compatible routes. */
export class ModelRegistry {
  readonly models: ServedModel[] = [];

  add(model: ServedModel): void {
    if (this.models.some((m) => m.id === model.id)) {
      throw new Error(`two models are served as "${model.id}"; give one an alias (--model ID=ALIAS)`);
    }
    this.models.push(model);
  }

  embedders(): ServedEmbedder[] {
    return this.models.filter((m): m is ServedEmbedder => m.kind === "embedding");
  }

  /**
   * The embedding model a request names. With exactly one embedding model served, other names
   * (e.g. "text-embedding-3-small") are served by it unless strict; undefined means 404.
   */
  embedder(name: string | undefined, strict: boolean): ServedEmbedder | undefined {
    const all = this.embedders();
    const exact = all.find(
      (m) => m.id === name || m.source === name || (name && mappingKey(m.source) === name),
    );
    if (exact) return exact;
    if (!strict && all.length === 1) return all[0];
    if (name === undefined && all.length > 0) return all[0];
    return undefined;
  }

  async close(): Promise<void> {
    await Promise.all(this.models.map((m) => m.close()));
  }
}
