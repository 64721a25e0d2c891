// Prompt and token assembly of FlagEmbedding's decoder-only embedders and LLM rerankers, as pure
// functions of a tokenizer and plain data: no ONNX Runtime here, so the server's tokenizer threads
// run them (see scripts/export/README.md for the recipes they implement).
import type { Encoding, TextTokenizer } from "../runtime/tokenizer.js";
import { formatInstruction } from "./instruction.js";

/** One in-context example of FlagICLModel (bge-en-icl): `{instruct, query, response}`. */
export interface IclExample {
  instruct?: string | null;
  query?: string | null;
  response?: string | null;
}

/** FlagICLModel's defaults (FlagEmbedding 1.4.2, decoder_only/icl.py). */
export const ICL_DEFAULTS = {
  queryInstructionFormat: "<instruct>{}\n<query>{}",
  examplesInstructionFormat: "<instruct>{}\n<query>{}\n<response>{}",
  suffix: "\n<response>",
} as const;

/** Python's str() of an optional text, as str.format writes it (None -> "None"). */
function pyStr(v: string | null | undefined): string {
  return v === null || v === undefined ? "None" : v;
}

/**
 * The examples prefix of FlagICLModel.set_examples: each example formatted with
 * `examplesInstructionFormat` (its own `instruct`, else the query instruction), joined with blank
 * lines and followed by one. `null` gives no prefix; an empty list gives "\n\n", as in Python.
 */
export function iclPrefix(
  examples: readonly IclExample[] | null | undefined,
  format: string,
  instruction: string | null,
): string {
  if (examples === null || examples === undefined) return "";
  const parts = examples.map((e) =>
    formatInstruction(
      format,
      // dict.get(key, default): a missing key takes the default, a present null formats as None.
      pyStr("instruct" in e ? e.instruct : instruction),
      "query" in e ? pyStr(e.query) : "",
      "response" in e ? pyStr(e.response) : "",
    ),
  );
  return `${parts.join("\n\n")}\n\n`;
}

/**
 * FlagICLModel's query prompt for one prefix, suffix and max length: the (instructed) query is
 * tokenized without special tokens, cut to `maxLength - len("<s>") - len(suffix + "</s>")` tokens
 * and decoded back, then `prefix + query + suffix` is tokenized with special tokens and cut to
 * `(len(prefix) + len(suffix) + maxLength + 8) // 8 * 8 + 8` tokens (all lengths in tokens).
 */
export class IclPrompter {
  readonly prefix: string;
  readonly suffix: string;
  /** Tokens the query keeps. */
  readonly queryRoom: number;
  /** Tokens the whole prompt keeps. */
  readonly promptLimit: number;
  private readonly tok: TextTokenizer;

  constructor(tok: TextTokenizer, prefix: string, suffix: string, maxLength: number) {
    this.tok = tok;
    this.prefix = prefix;
    this.suffix = suffix;
    const n = (s: string) => tok.encodeWithoutSpecials(s).length;
    // The literal strings "<s>" and "</s>", whatever this tokenizer's own BOS / EOS are (icl.py).
    this.queryRoom = Math.max(0, maxLength - n("<s>") - n(`${suffix}</s>`));
    this.promptLimit = Math.floor((n(prefix) + n(suffix) + maxLength + 8) / 8) * 8 + 8;
  }

  /** Tokens the (instructed) query has without special tokens (to refuse instead of cutting). */
  queryTokens(text: string): number {
    return this.tok.encodeWithoutSpecials(text).length;
  }

  /** The prompt text and its token ids for one (instructed) query. */
  prompt(text: string): { text: string; encoding: Encoding } {
    const kept = this.tok.encodeWithoutSpecials(text, this.queryRoom);
    const prompt = this.prefix + this.tok.decode(kept, false) + this.suffix;
    return { text: prompt, encoding: this.tok.encode(prompt, this.promptLimit) };
  }
}

/** What an LLM reranker's serving side needs to build its rows and check request options. */
export interface LLMRerankInfo {
  modelClass: "decoder-only-base" | "decoder-only-layerwise" | "decoder-only-lightweight";
  /** The prompt appended to every pair (the model's configured one, else the class default). */
  prompt: string;
  separator: string;
  /** Put before the query (null: nothing). */
  bosTokenId: number | null;
  /** Query token limit; null: three quarters of maxLength. */
  queryMaxLength: number | null;
  /** Layers a score can come from; null for the base class. */
  cutoffLayers: {
    default: number[];
    /** Layers the exported graph computes. */
    available: number[];
    /** Layers FlagEmbedding accepts (start layer .. N); others are dropped. */
    accepted: number[];
    startLayer: number;
    /** Lightweight: result k uses head k; layerwise: the head of its layer. */
    headIsIndex: boolean;
  } | null;
  compressRatio: { default: number; available: number[]; anyInteger: boolean } | null;
  compressLayers: { default: number[]; available: number[] } | null;
}

/** Per-batch inputs of the lightweight graph. */
export interface CompressSettings {
  ratio: number;
  /** Layers compressed before (0 < i < num_hidden_layers). */
  layers: number[];
}

/** What a decoder-only embedder's serving side needs (queries' and passages' limits, ICL). */
export interface DecoderServeInfo {
  queryMaxLength: number;
  passageMaxLength: number;
  /** The longest row the network takes (its position table, or the tokenizer's limit). */
  hardLimit: number;
  /** FlagICLModel: how queries get their examples. */
  icl: { examplesFormat: string; suffix: string; examples: IclExample[] | null } | null;
  /** FlagPseudoMoEModel: the domains with a graph (the default one serves). */
  domains: string[] | null;
}

/** What an LLM reranker's pair prompt is made of (flagserve.json and the call's options). */
export interface LLMPairSettings {
  /** Ids of the separator ("\n"), without special tokens. */
  sepIds: number[];
  /** Ids of the prompt, without special tokens. */
  promptIds: number[];
  /** Prepended to the query part (null: nothing). */
  bosTokenId: number | null;
  maxLength: number;
  queryMaxLength: number;
}

/** The pieces of an LLM reranker's pair prompt for one call. */
export function llmPairSettings(
  tok: TextTokenizer,
  o: {
    separator: string;
    prompt: string;
    bosTokenId: number | null;
    maxLength: number;
    queryMaxLength: number;
  },
): LLMPairSettings {
  return {
    sepIds: tok.encodeWithoutSpecials(o.separator),
    promptIds: tok.encodeWithoutSpecials(o.prompt),
    bosTokenId: o.bosTokenId,
    maxLength: o.maxLength,
    queryMaxLength: o.queryMaxLength,
  };
}

/** One row of an LLM reranker: ids, and the query / prompt part lengths the lightweight graph needs. */
export interface LLMPairRow {
  ids: number[];
  /** BOS + query + separator tokens (the separator counted whole, as FlagEmbedding does). */
  queryLength: number;
  /** Separator + prompt tokens. */
  promptLength: number;
}

/** The query part of every row of one query: BOS (if any) + the query ids cut to queryMaxLength. */
export function llmQueryPart(tok: TextTokenizer, s: LLMPairSettings, query: string): number[] {
  const q = tok.encodeWithoutSpecials(query, s.queryMaxLength);
  return s.bosTokenId === null ? q : [s.bosTokenId, ...q];
}

/**
 * A row from the query part and the passage ids (already cut to maxLength): transformers'
 * prepare_for_model with truncation 'only_second' on (first, separator + passage) against a budget
 * of maxLength + separator + prompt, then separator + prompt appended. When truncation cannot
 * remove enough (a long query), the passage is left whole, as transformers leaves it.
 */
export function llmPairRow(s: LLMPairSettings, first: number[], passage: number[]): LLMPairRow {
  let second = [...s.sepIds, ...passage];
  const remove = first.length + second.length - (s.maxLength + s.sepIds.length + s.promptIds.length);
  if (remove > 0 && remove < second.length) second = second.slice(0, second.length - remove);
  return {
    ids: [...first, ...second, ...s.sepIds, ...s.promptIds],
    queryLength: first.length + s.sepIds.length,
    promptLength: s.sepIds.length + s.promptIds.length,
  };
}

/**
 * Passage tokens one row holds without truncation: maxLength, less what the query part takes
 * beyond the prompt's share of the budget. Zero or less: the query fills the budget (rows are then
 * built as FlagEmbedding builds them, passage whole).
 */
export function llmPassageRoom(s: LLMPairSettings, first: number[]): number {
  return Math.min(s.maxLength, s.maxLength + s.promptIds.length - first.length);
}

/** FlagEmbedding's row for (query, passage) texts (instructions already applied). */
export function llmPairEncoding(
  tok: TextTokenizer,
  s: LLMPairSettings,
  query: string,
  passage: string,
): LLMPairRow {
  return llmPairRow(s, llmQueryPart(tok, s, query), tok.encodeWithoutSpecials(passage, s.maxLength));
}

/**
 * Resolve `cutoff_layers` as FlagEmbedding's layerwise and lightweight classes do: `kept` = the
 * requested layers FlagEmbedding accepts (caller's order, duplicates kept); results are the sorted
 * distinct kept layers, result k paired with head `kept[k] - startLayer` (layerwise) or `k`
 * (lightweight). Returns, per result, the row of the graph's `scores[b, layer, head]` output.
 */
export function pickCutoffLayers(
  requested: readonly number[],
  c: { accepted: readonly number[]; available: readonly number[]; startLayer: number; headIsIndex: boolean },
): { layers: number[]; picks: { layer: number; head: number }[] } | { error: string } {
  const kept = requested.filter((l) => c.accepted.includes(l));
  if (kept.length === 0) {
    const lo = Math.min(...c.accepted);
    const hi = Math.max(...c.accepted);
    return { error: `cutoff layers must be in [${lo}, ${hi}]; got ${JSON.stringify(requested)}` };
  }
  const collected = [...new Set(kept)].sort((a, b) => a - b);
  const missing = collected.filter((l) => !c.available.includes(l));
  if (missing.length > 0) {
    return {
      error: `this export computes cutoff layers ${c.available.join(", ")} only (layers ${missing.join(", ")} were left out at export)`,
    };
  }
  return {
    layers: collected,
    picks: collected.map((layer, k) => ({
      layer: c.available.indexOf(layer),
      head: c.headIsIndex ? k : (kept[k] as number) - c.startLayer,
    })),
  };
}
