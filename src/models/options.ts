import { FlagserveError } from "../runtime/errors.js";

/** FlagEmbedding's constructor defaults, shared by the classes and the CLI's help. */
export const EMBEDDER_DEFAULTS = { batchSize: 256, maxLength: 512 } as const;
export const RERANKER_DEFAULTS = { batchSize: 128, maxLength: 512 } as const;

/** A positive integer option, or the fallback when it is unset. */
export function positiveInt(name: string, value: number | null | undefined, fallback: number): number;
export function positiveInt(
  name: string,
  value: number | null | undefined,
  fallback: number | null,
): number | null;
export function positiveInt(
  name: string,
  value: number | null | undefined,
  fallback: number | null,
): number | null {
  if (value === undefined || value === null) return fallback;
  if (!Number.isInteger(value) || value < 1) {
    throw new FlagserveError("invalid_input", `${name} must be a positive integer, got ${value}`);
  }
  return value;
}
