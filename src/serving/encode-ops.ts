// The tokenizing work of the server, as plain functions of a tokenizer and plain data: they run in
// the tokenizer threads (tokenizer-thread.ts), or inline when the pool has no threads.
import {
  IclPrompter,
  type LLMPairRow,
  llmPairRow,
  llmPairSettings,
  llmPassageRoom,
  llmQueryPart,
} from "../models/decoder-prompts.js";
import { formatInstruction } from "../models/instruction.js";
import { encodePair } from "../models/pair.js";
import type { Encoding, Side, TextTokenizer } from "../runtime/tokenizer.js";
import { InputTooLongError, invalid } from "./errors.js";

/** An instruction template and its text (Python-style "{}{}" formats). */
export interface Instruction {
  format: string;
  text: string;
}

/** How a served embedder turns texts into ids. */
export interface TextSpec {
  kind: "text";
  /** Longest input in tokens, special tokens included. */
  limit: number;
  /** Cut over-long inputs (true) or refuse them (false). */
  truncate: boolean;
  side?: Side;
  /** A literal prefix (a sentence-transformers prompt); wins over `instruction`. */
  prefix?: string;
  instruction?: Instruction | null;
  /** Cut each text to this many tokens before the instruction is applied (Cohere v2's max_tokens_per_doc). */
  maxTokens?: number;
  /** Index of the first text in the whole request (for error messages). */
  offset: number;
}

/** How a served cross-encoder turns (query, document) pairs into ids. */
export interface PairSpec {
  kind: "pair";
  /** Longest pair in tokens, special tokens included. */
  limit: number;
  truncate: boolean;
  query: string;
  queryInstruction: Instruction | null;
  passageInstruction: Instruction | null;
  /** Split long documents into up to this many overlapping windows (1: truncate). */
  maxChunks: number;
  /** Cut documents to this many tokens first (Cohere v2's max_tokens_per_doc). */
  maxTokensPerDoc?: number;
  offset: number;
}

/**
 * Queries of a decoder ICL model (FlagICLModel): each (instructed) query is cut to what the prompt
 * leaves it and put between the examples prefix and the suffix (decoder-prompts.ts IclPrompter).
 */
export interface IclSpec {
  kind: "icl";
  /** The model's query max length (the prompt itself may be longer: the examples come on top). */
  maxLength: number;
  /** Longest prompt the network takes; a longer one is a 400 on `examples`. */
  hardLimit: number;
  /** Cut over-long queries (true) or refuse them (false). */
  truncate: boolean;
  instruction: Instruction | null;
  /** The examples, formatted (iclPrefix); "" for none. */
  prefix: string;
  suffix: string;
  offset: number;
}

/** How a served LLM reranker turns (query, document) pairs into rows (decoder-prompts.ts). */
export interface LLMPairSpec {
  kind: "llm-pair";
  query: string;
  queryInstruction: Instruction | null;
  passageInstruction: Instruction | null;
  separator: string;
  prompt: string;
  bosTokenId: number | null;
  maxLength: number;
  queryMaxLength: number;
  truncate: boolean;
  /** Split long documents into up to this many overlapping windows of the prompt's passage room. */
  maxChunks: number;
  maxTokensPerDoc?: number;
  offset: number;
}

/** TEI's /tokenize: token ids and pieces, rendered as the JSON body. */
export interface TeiTokenizeSpec {
  kind: "tei-tokenize";
  prefix: string;
  addSpecialTokens: boolean;
}

export type EncodeSpec = TextSpec | PairSpec | TeiTokenizeSpec | IclSpec | LLMPairSpec;

/** Encodings of many inputs in three flat arrays (transferable between threads without copying). */
export interface PackedEncodings {
  ids: Int32Array;
  typeIds: Uint8Array;
  lengths: Int32Array;
  /** Pairs: the document each encoding belongs to (windows of one document share it). */
  owners?: Int32Array;
  /** LLM reranker rows: query part and prompt part lengths, two per encoding. */
  extras?: Int32Array;
  /** Characters tokenized, for the per-model tokens-per-character estimate. */
  chars: number;
}

export type EncodeResult =
  | { kind: "encodings"; packed: PackedEncodings }
  | { kind: "json"; bytes: Uint8Array };

export function packEncodings(
  encodings: Encoding[],
  chars: number,
  owners?: number[],
  extras?: number[],
): PackedEncodings {
  const total = encodings.reduce((n, e) => n + e.ids.length, 0);
  const ids = new Int32Array(total);
  const typeIds = new Uint8Array(total);
  const lengths = new Int32Array(encodings.length);
  let o = 0;
  encodings.forEach((e, i) => {
    ids.set(e.ids, o);
    typeIds.set(e.typeIds, o);
    o += e.ids.length;
    lengths[i] = e.ids.length;
  });
  return {
    ids,
    typeIds,
    lengths,
    chars,
    ...(owners ? { owners: Int32Array.from(owners) } : {}),
    ...(extras ? { extras: Int32Array.from(extras) } : {}),
  };
}

/** An encoding whose ids are views into a packed buffer (no copies on the event loop). */
export interface EncodingView {
  ids: Int32Array;
  typeIds: Uint8Array;
}

export function unpackEncodings(p: PackedEncodings): EncodingView[] {
  const out: EncodingView[] = [];
  let o = 0;
  for (let i = 0; i < p.lengths.length; i++) {
    const n = p.lengths[i] as number;
    out.push({ ids: p.ids.subarray(o, o + n), typeIds: p.typeIds.subarray(o, o + n) });
    o += n;
  }
  return out;
}

function withInstruction(text: string, instruction: Instruction | null | undefined): string {
  return instruction ? formatInstruction(instruction.format, instruction.text, text) : text;
}

function encodeTexts(tok: TextTokenizer, spec: TextSpec, texts: string[]): EncodeResult {
  let chars = 0;
  const encodings = texts.map((raw, i) => {
    const t = spec.maxTokens === undefined ? raw : capTokens(tok, raw, spec.maxTokens);
    const text = spec.prefix !== undefined ? spec.prefix + t : withInstruction(t, spec.instruction);
    chars += text.length;
    if (!spec.truncate) {
      const n = tok.countTokens(text);
      if (n > spec.limit) throw new InputTooLongError(spec.offset + i, n, spec.limit);
    }
    return tok.encode(text, spec.limit, true, spec.side);
  });
  return { kind: "encodings", packed: packEncodings(encodings, chars) };
}

/** Windows of `size` ids stepping by three quarters of a window, at most `max` of them. */
function windows(ids: number[], size: number, max: number): number[][] {
  if (ids.length <= size || max <= 1) return [ids];
  const stride = Math.max(1, Math.floor((size * 3) / 4));
  const out: number[][] = [];
  for (let start = 0; out.length < max; start += stride) {
    out.push(ids.slice(start, start + size));
    if (start + size >= ids.length) break;
  }
  return out;
}

function capTokens(tok: TextTokenizer, text: string, max: number): string {
  const ids = tok.encodeWithoutSpecials(text, max);
  return ids.length < max ? text : tok.decode(ids, false);
}

function encodePairs(tok: TextTokenizer, spec: PairSpec, docs: string[]): EncodeResult {
  const max = spec.limit;
  const query = withInstruction(spec.query, spec.queryInstruction);
  // Every window gets the query budget FlagEmbedding gives it; the passage fills the rest.
  const q = spec.maxChunks > 1 ? tok.encodeWithoutSpecials(query, Math.floor((max * 3) / 4)) : [];
  const room = Math.max(1, max - q.length - tok.numSpecialTokens(true));
  const encodings: Encoding[] = [];
  const owners: number[] = [];
  let chars = query.length;
  docs.forEach((raw, i) => {
    const doc = spec.maxTokensPerDoc === undefined ? raw : capTokens(tok, raw, spec.maxTokensPerDoc);
    const passage = withInstruction(doc, spec.passageInstruction);
    chars += passage.length;
    if (spec.maxChunks > 1) {
      const p = tok.encodeWithoutSpecials(passage, room * spec.maxChunks);
      for (const w of windows(p, room, spec.maxChunks)) {
        encodings.push(tok.withSpecialTokens(q, w));
        owners.push(spec.offset + i);
      }
      return;
    }
    if (!spec.truncate) {
      const n = tok.countTokens(spec.query) + tok.countTokens(doc) - 1;
      if (n > max) {
        throw invalid(
          `documents[${spec.offset + i}] with the query has ${n} tokens, more than the model's limit of ${max}; send it shorter or allow truncation`,
          "documents",
          "context_length_exceeded",
        );
      }
    }
    encodings.push(encodePair(tok, query, passage, Math.floor((max * 3) / 4), max, max));
    owners.push(spec.offset + i);
  });
  return { kind: "encodings", packed: packEncodings(encodings, chars, owners) };
}

function teiTokenize(tok: TextTokenizer, spec: TeiTokenizeSpec, texts: string[]): EncodeResult {
  // Rendered here, off the event loop: a long text has millions of tokens. One piece of work per
  // request (never split), so the bytes are the whole body.
  const parts: string[] = [];
  for (const t of texts) {
    const ids = spec.addSpecialTokens
      ? tok.encode(spec.prefix + t, undefined).ids
      : tok.encodeWithoutSpecials(spec.prefix + t);
    const tokens = ids.map(
      (id) =>
        `{"id":${id},"text":${JSON.stringify(tok.idToToken(id) ?? "")},"special":${tok.specialIds.has(id)},"start":null,"stop":null}`,
    );
    parts.push(`[${tokens.join(",")}]`);
  }
  return { kind: "json", bytes: new TextEncoder().encode(`[${parts.join(",")}]`) };
}

function encodeIcl(tok: TextTokenizer, spec: IclSpec, texts: string[]): EncodeResult {
  const prompter = new IclPrompter(tok, spec.prefix, spec.suffix, spec.maxLength);
  let chars = 0;
  const encodings = texts.map((raw, i) => {
    const text = withInstruction(raw, spec.instruction);
    chars += spec.prefix.length + text.length + spec.suffix.length;
    if (!spec.truncate) {
      const n = prompter.queryTokens(text);
      // The query's share of max_length: what the prompt's markers leave it.
      if (n > prompter.queryRoom) {
        throw new InputTooLongError(spec.offset + i, n + spec.maxLength - prompter.queryRoom, spec.maxLength);
      }
    }
    const { encoding } = prompter.prompt(text);
    if (encoding.ids.length > spec.hardLimit) {
      throw invalid(
        `the examples and input ${spec.offset + i} make a prompt of ${encoding.ids.length} tokens, more than the model takes (${spec.hardLimit}); send fewer or shorter examples`,
        "examples",
        "context_length_exceeded",
      );
    }
    return encoding;
  });
  return { kind: "encodings", packed: packEncodings(encodings, chars) };
}

function encodeLlmPairs(tok: TextTokenizer, spec: LLMPairSpec, docs: string[]): EncodeResult {
  const s = llmPairSettings(tok, spec);
  const query = withInstruction(spec.query, spec.queryInstruction);
  if (!spec.truncate) {
    const n = tok.encodeWithoutSpecials(query).length;
    if (n > s.queryMaxLength) {
      throw invalid(
        `the query has ${n} tokens, more than the model's query limit of ${s.queryMaxLength}; send it shorter or allow truncation`,
        "query",
        "context_length_exceeded",
      );
    }
  }
  const first = llmQueryPart(tok, s, query);
  // Passage tokens a row holds: the windows of long documents are that size, so none is cut.
  const room = llmPassageRoom(s, first);
  const rows: LLMPairRow[] = [];
  const owners: number[] = [];
  let chars = query.length;
  docs.forEach((raw, i) => {
    const doc = spec.maxTokensPerDoc === undefined ? raw : capTokens(tok, raw, spec.maxTokensPerDoc);
    const passage = withInstruction(doc, spec.passageInstruction);
    chars += passage.length;
    if (spec.maxChunks > 1 && room >= 1) {
      for (const w of windows(
        tok.encodeWithoutSpecials(passage, room * spec.maxChunks),
        room,
        spec.maxChunks,
      )) {
        rows.push(llmPairRow(s, first, w));
        owners.push(spec.offset + i);
      }
      return;
    }
    if (!spec.truncate) {
      const n = tok.encodeWithoutSpecials(passage).length;
      if (n > Math.max(room, 0)) {
        throw invalid(
          `documents[${spec.offset + i}] has ${n} tokens; with this query the model takes at most ${Math.max(room, 0)}; send it shorter or allow truncation`,
          "documents",
          "context_length_exceeded",
        );
      }
    }
    rows.push(llmPairRow(s, first, tok.encodeWithoutSpecials(passage, s.maxLength)));
    owners.push(spec.offset + i);
  });
  const encodings = rows.map((r) => ({ ids: r.ids, typeIds: r.ids.map(() => 0) }));
  const extras = rows.flatMap((r) => [r.queryLength, r.promptLength]);
  return { kind: "encodings", packed: packEncodings(encodings, chars, owners, extras) };
}

/** Run one piece of tokenizing work. */
export function runEncode(tok: TextTokenizer, spec: EncodeSpec, texts: string[]): EncodeResult {
  switch (spec.kind) {
    case "text":
      return encodeTexts(tok, spec, texts);
    case "pair":
      return encodePairs(tok, spec, texts);
    case "tei-tokenize":
      return teiTokenize(tok, spec, texts);
    case "icl":
      return encodeIcl(tok, spec, texts);
    case "llm-pair":
      return encodeLlmPairs(tok, spec, texts);
  }
}
