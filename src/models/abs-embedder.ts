import { FlagserveError } from "../runtime/errors.js";
import { LoadedModelBase } from "./base.js";
import { splitAcrossDevices } from "./devices.js";
import { formatInstruction } from "./instruction.js";
import type { LoadedModel, RuntimeOptions } from "./loader.js";
import { EMBEDDER_DEFAULTS, positiveInt } from "./options.js";

/** Constructor options, with FlagEmbedding's names (camelCase) and defaults. */
export interface EmbedderOptions extends RuntimeOptions {
  /** L2-normalise outputs. Default true. */
  normalizeEmbeddings?: boolean;
  /** Prepended to queries by encodeQueries through queryInstructionFormat. Default none. */
  queryInstructionForRetrieval?: string | null;
  /** Python-style template, "{}{}" by default: instruction, then text. */
  queryInstructionFormat?: string;
  passageInstructionForRetrieval?: string | null;
  passageInstructionFormat?: string;
  /** Inputs per forward pass. Default 256. */
  batchSize?: number;
  /** Token limits for queries and passages. Default 512, capped at what the model accepts. */
  queryMaxLength?: number;
  passageMaxLength?: number;
  /** Keep only the first N dimensions (Matryoshka), before normalisation. */
  truncateDim?: number | null;
}

export interface EncodeOptions {
  batchSize?: number;
  maxLength?: number;
  /** Instruction applied to every input through instructionFormat (encode() applies none by default). */
  instruction?: string | null;
  instructionFormat?: string;
}

/** What a single-device encode receives once defaults and instructions are applied. */
export interface ResolvedEncode {
  batchSize: number;
  maxLength: number;
}

export interface ResolvedEmbedderOptions {
  normalizeEmbeddings: boolean;
  queryInstructionForRetrieval: string | null;
  queryInstructionFormat: string;
  passageInstructionForRetrieval: string | null;
  passageInstructionFormat: string;
  batchSize: number;
  queryMaxLength: number;
  passageMaxLength: number;
  truncateDim: number | null;
}

export function resolveEmbedderOptions(o: EmbedderOptions): ResolvedEmbedderOptions {
  return {
    normalizeEmbeddings: o.normalizeEmbeddings ?? true,
    queryInstructionForRetrieval: o.queryInstructionForRetrieval ?? null,
    queryInstructionFormat: o.queryInstructionFormat ?? "{}{}",
    passageInstructionForRetrieval: o.passageInstructionForRetrieval ?? null,
    passageInstructionFormat: o.passageInstructionFormat ?? "{}{}",
    batchSize: positiveInt("batchSize", o.batchSize, EMBEDDER_DEFAULTS.batchSize),
    queryMaxLength: positiveInt("queryMaxLength", o.queryMaxLength, EMBEDDER_DEFAULTS.maxLength),
    passageMaxLength: positiveInt("passageMaxLength", o.passageMaxLength, EMBEDDER_DEFAULTS.maxLength),
    truncateDim: positiveInt("truncateDim", o.truncateDim, null),
  };
}

/**
 * FlagEmbedding's AbsEmbedder: query / corpus / plain encoding with instructions, batch size and
 * max lengths, spread over several devices when more than one is configured.
 * `TOut` is what a list of inputs encodes to, `TOne` what a single string does.
 */
export abstract class AbsEmbedder<
  TOut,
  TOne,
  TOpts extends EncodeOptions = EncodeOptions,
> extends LoadedModelBase {
  readonly options: ResolvedEmbedderOptions;

  protected constructor(modelNameOrPath: string, options: EmbedderOptions, model: LoadedModel) {
    super(modelNameOrPath, model);
    this.options = resolveEmbedderOptions(options);
  }

  protected abstract encodeSingleDevice(
    sentences: string[],
    opts: ResolvedEncode & TOpts,
    device: number,
  ): Promise<TOut>;
  protected abstract concat(parts: TOut[]): TOut;
  protected abstract first(out: TOut): TOne;

  encodeQueries(queries: string, opts?: TOpts): Promise<TOne>;
  encodeQueries(queries: string[], opts?: TOpts): Promise<TOut>;
  encodeQueries(queries: string | string[], opts: TOpts = {} as TOpts): Promise<TOut | TOne> {
    return this.encodeAny(queries, {
      ...opts,
      maxLength: opts.maxLength ?? this.options.queryMaxLength,
      instruction: this.options.queryInstructionForRetrieval,
      instructionFormat: this.options.queryInstructionFormat,
    });
  }

  encodeCorpus(corpus: string, opts?: TOpts): Promise<TOne>;
  encodeCorpus(corpus: string[], opts?: TOpts): Promise<TOut>;
  encodeCorpus(corpus: string | string[], opts: TOpts = {} as TOpts): Promise<TOut | TOne> {
    return this.encodeAny(corpus, {
      ...opts,
      maxLength: opts.maxLength ?? this.options.passageMaxLength,
      instruction: this.options.passageInstructionForRetrieval,
      instructionFormat: this.options.passageInstructionFormat,
    });
  }

  encode(sentences: string, opts?: TOpts): Promise<TOne>;
  encode(sentences: string[], opts?: TOpts): Promise<TOut>;
  encode(sentences: string | string[], opts: TOpts = {} as TOpts): Promise<TOut | TOne> {
    return this.encodeAny(sentences, opts);
  }

  /** Apply an instruction template to one text. */
  static getDetailedInstruct(instructionFormat: string, instruction: string, sentence: string): string {
    return formatInstruction(instructionFormat, instruction, sentence);
  }

  /** Token limit actually used: the requested one, never beyond what the model accepts. */
  effectiveMaxLength(requested: number): number {
    const limit = this.modelMaxLength;
    return limit === undefined ? requested : Math.min(requested, limit);
  }

  private async encodeAny(input: string | string[], opts: TOpts): Promise<TOut | TOne> {
    const single = typeof input === "string";
    let sentences = single ? [input] : input;
    if (!Array.isArray(sentences) || sentences.some((s) => typeof s !== "string")) {
      throw new FlagserveError("invalid_input", "inputs must be a string or an array of strings");
    }
    if (opts.instruction !== undefined && opts.instruction !== null) {
      const { instruction } = opts;
      const format = opts.instructionFormat ?? "{}{}";
      sentences = sentences.map((s) => formatInstruction(format, instruction, s));
    }
    const resolved = {
      ...opts,
      batchSize: positiveInt("batchSize", opts.batchSize, this.options.batchSize),
      maxLength: this.effectiveMaxLength(
        positiveInt("maxLength", opts.maxLength, this.options.passageMaxLength),
      ),
    } as ResolvedEncode & TOpts;
    // A single string always runs on the first device, as FlagEmbedding does.
    const out = await splitAcrossDevices(
      sentences,
      single ? 1 : this.deviceCount,
      (chunk, device) => this.encodeSingleDevice(chunk, resolved, device),
      (parts) => this.concat(parts),
    );
    return single ? this.first(out) : out;
  }
}
