import { Tiktoken } from "js-tiktoken/lite";
import cl100k from "js-tiktoken/ranks/cl100k_base";
import type { Float32Matrix } from "../runtime/matrix.js";
import { invalid, type RequestError } from "./errors.js";

/** Inputs as a client sent them: texts, or token ids (one array per input). */
export type RawInputs = { texts: string[] } | { ids: number[][] };

/**
 * Normalise OpenAI / TEI style inputs (string | string[] | number[] | number[][]) and check the
 * per-request count. Empty strings are valid inputs; an empty list is not.
 */
export function readInputs(input: unknown, param: string, maxInputs: number): RawInputs {
  if (typeof input === "string") return { texts: [input] };
  if (!Array.isArray(input)) throw invalid(`${param} must be a string or an array`, param);
  if (input.length === 0) throw invalid(`${param} must not be empty`, param, "empty");
  // A flat array of token ids is one input, however long.
  if (input.every((x) => Number.isInteger(x))) return { ids: [input as number[]] };
  if (input.length > maxInputs) {
    throw invalid(`${param} has ${input.length} items; at most ${maxInputs} are accepted per request`, param);
  }
  if (input.every((x) => typeof x === "string")) return { texts: input as string[] };
  if (input.every((x) => Array.isArray(x) && x.every((y) => Number.isInteger(y)))) {
    return { ids: input as number[][] };
  }
  throw invalid(`${param} mixes types: use all strings, or all token ids`, param);
}

let tiktoken: Tiktoken | undefined;

/** cl100k_base: ranks 0..100255, then special tokens at these ids only (the ids between are unused). */
const CL100K_RANKS = 100256;
const CL100K_SPECIAL = new Set([100257, 100258, 100259, 100260, 100276]);

/** Decode cl100k_base token ids to text (LangChain's Python OpenAIEmbeddings sends these). */
export function decodeCl100k(ids: number[][], param: string): string[] {
  tiktoken ??= new Tiktoken(cl100k);
  const enc = tiktoken;
  return ids.map((seq, i) => {
    for (const id of seq) {
      if (!(Number.isInteger(id) && ((id >= 0 && id < CL100K_RANKS) || CL100K_SPECIAL.has(id)))) {
        throw invalid(`${param}[${i}] has token id ${id}, outside the cl100k_base vocabulary`, param);
      }
    }
    try {
      return enc.decode(seq);
    } catch (err) {
      throw invalid(
        `${param}[${i}] cannot be decoded as cl100k_base tokens: ${(err as Error).message}`,
        param,
      );
    }
  });
}

/** Check model-vocabulary ids against the tokenizer's size. */
export function checkVocabIds(ids: number[][], vocabSize: number, param: string): void {
  ids.forEach((seq, i) => {
    for (const id of seq) {
      if (id < 0 || id >= vocabSize) {
        throw invalid(
          `${param}[${i}] has token id ${id}, outside the model's vocabulary of ${vocabSize}`,
          param,
        );
      }
    }
  });
}

/** Matryoshka `dimensions`: keep the first N, then re-normalise; otherwise the model's own output. */
export function finalizeEmbeddings(
  raw: Float32Matrix,
  opts: { dimensions?: number | null; normalize: boolean; truncateDim: number | null },
): Float32Matrix {
  if (opts.dimensions) return raw.truncateColumns(opts.dimensions).normalizeRows();
  const cut = opts.truncateDim ? raw.truncateColumns(opts.truncateDim) : raw;
  return opts.normalize ? cut.normalizeRows() : cut;
}

export function checkDimensions(
  dimensions: number | null | undefined,
  modelDims: number,
  param = "dimensions",
): void {
  if (dimensions === undefined || dimensions === null) return;
  if (!Number.isInteger(dimensions) || dimensions < 1 || dimensions > modelDims) {
    throw invalid(`${param} must be between 1 and ${modelDims} for this model, got ${dimensions}`, param);
  }
}

export function tooManyTokens(total: number, limit: number, param = "input"): RequestError {
  return invalid(`the request has ${total} tokens; at most ${limit} are accepted per request`, param);
}
