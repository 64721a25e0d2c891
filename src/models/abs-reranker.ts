import { FlagserveError } from "../runtime/errors.js";
import { LoadedModelBase } from "./base.js";
import { splitAcrossDevices } from "./devices.js";
import { formatInstruction } from "./instruction.js";
import type { LoadedModel, RuntimeOptions } from "./loader.js";
import { positiveInt, RERANKER_DEFAULTS } from "./options.js";

export { sigmoid } from "./scoring.js";

/** A (query, passage) pair. */
export type SentencePair = [string, string];

/** Constructor options, with FlagEmbedding's names (camelCase) and defaults. */
export interface RerankerOptions extends RuntimeOptions {
  queryInstructionForRerank?: string | null;
  queryInstructionFormat?: string;
  passageInstructionForRerank?: string | null;
  passageInstructionFormat?: string;
  /** Pairs per forward pass. Default 128. */
  batchSize?: number;
  /** Token limit of the query part. Default: three quarters of maxLength. */
  queryMaxLength?: number | null;
  /** Token limit of the whole pair. Default 512. */
  maxLength?: number;
  /** Sigmoid the logits into (0, 1). Default false. */
  normalize?: boolean;
}

export interface ScoreOptions {
  batchSize?: number;
  queryMaxLength?: number | null;
  maxLength?: number;
  normalize?: boolean;
}

export interface ResolvedScoreOptions {
  batchSize: number;
  queryMaxLength: number;
  maxLength: number;
  normalize: boolean;
}

export interface ResolvedRerankerOptions {
  queryInstructionForRerank: string | null;
  queryInstructionFormat: string;
  passageInstructionForRerank: string | null;
  passageInstructionFormat: string;
  batchSize: number;
  queryMaxLength: number | null;
  maxLength: number;
  normalize: boolean;
}

/**
 * FlagEmbedding's AbsReranker: instructions on queries and passages, defaults, and
 * computeScore spread over several devices when more than one is configured. `TScores` is what
 * computeScore returns: one score per pair, or (layerwise LLM rerankers) one list per layer.
 */
export abstract class AbsReranker<TScores = number[]> extends LoadedModelBase {
  readonly options: ResolvedRerankerOptions;

  protected constructor(modelNameOrPath: string, options: RerankerOptions, model: LoadedModel) {
    super(modelNameOrPath, model);
    this.options = {
      queryInstructionForRerank: options.queryInstructionForRerank ?? null,
      queryInstructionFormat: options.queryInstructionFormat ?? "{}{}",
      passageInstructionForRerank: options.passageInstructionForRerank ?? null,
      passageInstructionFormat: options.passageInstructionFormat ?? "{}{}",
      batchSize: positiveInt("batchSize", options.batchSize, RERANKER_DEFAULTS.batchSize),
      queryMaxLength: positiveInt("queryMaxLength", options.queryMaxLength, null),
      maxLength: positiveInt("maxLength", options.maxLength, RERANKER_DEFAULTS.maxLength),
      normalize: options.normalize ?? false,
    };
  }

  protected abstract computeScoreSingleDevice(
    pairs: SentencePair[],
    opts: ResolvedScoreOptions,
    device: number,
  ): Promise<TScores>;

  /** Join the scores of consecutive chunks of pairs run on several devices. */
  protected joinScores(parts: TScores[]): TScores {
    return (parts as number[][]).flat() as TScores;
  }

  /** Apply the configured instructions to each pair (FlagEmbedding's get_detailed_inputs). */
  getDetailedInputs(pairs: SentencePair[]): SentencePair[] {
    const o = this.options;
    return pairs.map(([q, p]) => [
      o.queryInstructionForRerank === null
        ? q
        : formatInstruction(o.queryInstructionFormat, o.queryInstructionForRerank, q),
      o.passageInstructionForRerank === null
        ? p
        : formatInstruction(o.passageInstructionFormat, o.passageInstructionForRerank, p),
    ]);
  }

  /** Resolve per-call options against the constructor's, as compute_score_single_gpu does. */
  resolveScoreOptions(opts: ScoreOptions = {}): ResolvedScoreOptions {
    const requested = positiveInt("maxLength", opts.maxLength, this.options.maxLength);
    const limit = this.modelMaxLength;
    const maxLength = limit === undefined ? requested : Math.min(requested, limit);
    const q = positiveInt("queryMaxLength", opts.queryMaxLength, this.options.queryMaxLength);
    return {
      batchSize: positiveInt("batchSize", opts.batchSize, this.options.batchSize),
      // FlagEmbedding's default: three quarters of the max length
      queryMaxLength: q ?? Math.floor((maxLength * 3) / 4),
      maxLength,
      normalize: opts.normalize ?? this.options.normalize,
    };
  }

  /**
   * Scores of (query, passage) pairs, in input order. A single pair may be given flat, as in
   * FlagEmbedding; the result is always a list.
   */
  async computeScore(pairs: SentencePair[] | SentencePair, opts: ScoreOptions = {}): Promise<TScores> {
    const list = (typeof pairs[0] === "string" ? [pairs as SentencePair] : pairs) as SentencePair[];
    if (
      !Array.isArray(list) ||
      list.some((p) => !Array.isArray(p) || p.length !== 2 || p.some((s) => typeof s !== "string"))
    ) {
      throw new FlagserveError("invalid_input", "sentence pairs must be [query, passage] string pairs");
    }
    const resolved = this.resolveScoreOptions(opts);
    const detailed = this.getDetailedInputs(list);
    return splitAcrossDevices(
      detailed,
      this.deviceCount,
      (chunk, device) => this.computeScoreSingleDevice(chunk, resolved, device),
      (parts) => this.joinScores(parts),
    );
  }
}
