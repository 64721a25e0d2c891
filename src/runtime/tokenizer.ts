import { join } from "node:path";
import * as tokenizersJs from "@huggingface/tokenizers";
import { Tokenizer } from "@huggingface/tokenizers";
import { FlagserveError } from "./errors.js";
import { type JsonObject, readJsonFile, readJsonIfExists } from "./files.js";
import { PrecompiledCharsmap } from "./precompiled.js";

/** One tokenized input: ids with special tokens, and segment ids for models that take them. */
export interface Encoding {
  ids: number[];
  typeIds: number[];
}

export type Side = "left" | "right";

interface PostProcessed {
  tokens: string[];
  token_type_ids?: number[];
  tokens_pair?: string[] | null;
}

/** The parts of @huggingface/tokenizers that its typings keep private but that truncation needs:
 *  the pre-special-token pieces and the post-processor that adds special tokens. */
interface TokenizerInternals {
  encode_text(text: string): string[] | null;
  post_processor: ((a: string[], b: string[] | null, addSpecial: boolean) => PostProcessed) | null;
  model: { unk_token_id?: number; tokens_to_ids: Map<string, number>; vocab: string[] };
  all_special_ids: number[];
}

// Placeholders that no vocabulary contains, used to locate the sequences in a post-processed template.
const SLOT_A = "\u0000flagserve:A\u0000";
const SLOT_B = "\u0000flagserve:B\u0000";

// Exported at run time, but the package's typings lose these classes under NodeNext resolution.
type Ctor = abstract new (...args: never[]) => unknown;
const { PrecompiledNormalizer, SequenceNormalizer, BertNormalizer, LowercaseNormalizer } =
  tokenizersJs as unknown as {
    PrecompiledNormalizer: Ctor;
    SequenceNormalizer: Ctor;
    BertNormalizer: Ctor;
    LowercaseNormalizer: Ctor;
  };

/** Lowercase character by character, as Rust does: JavaScript's context rule turns a word-final Σ into ς. */
function lowercasePerChar(text: string): string {
  return text.replaceAll("\u03a3", "\u03c3").toLowerCase();
}

/** The CJK ideograph blocks BERT puts whitespace around (including the supplementary planes). */
function isCjk(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/** Space out CJK ideographs by code point (the library compares UTF-16 units and misses astral ones). */
function spaceCjk(text: string): string {
  let out = "";
  for (const ch of text) out += isCjk(ch.codePointAt(0) as number) ? ` ${ch} ` : ch;
  return out;
}

interface BertNormalizerInternals {
  config: {
    clean_text?: boolean;
    handle_chinese_chars?: boolean;
    lowercase?: boolean;
    strip_accents?: boolean | null;
  };
  clean_text(t: string): string;
  strip_accents(t: string): string;
  normalize: (t: string) => string;
}

/**
 * Where @huggingface/tokenizers' normalizers differ from the Rust tokenizer that produced the
 * reference ids, replace their behaviour: SentencePiece's charsmap run exactly, per-character
 * lowercasing, and CJK spacing by code point.
 */
function matchRustNormalizers(normalizer: unknown): void {
  if (normalizer instanceof PrecompiledNormalizer) {
    const charsmap = (normalizer as unknown as { charsmap: string | null }).charsmap;
    if (charsmap) {
      const exact = new PrecompiledCharsmap(charsmap);
      (normalizer as unknown as { normalize: (t: string) => string }).normalize = (t) => exact.normalize(t);
    }
  } else if (normalizer instanceof BertNormalizer) {
    const n = normalizer as unknown as BertNormalizerInternals;
    const c = n.config;
    n.normalize = (input) => {
      let text = input;
      if (c.clean_text) text = n.clean_text(text);
      if (c.handle_chinese_chars) text = spaceCjk(text);
      if (c.lowercase) {
        text = lowercasePerChar(text);
        if (c.strip_accents !== false) text = n.strip_accents(text);
      } else if (c.strip_accents) {
        text = n.strip_accents(text);
      }
      return text;
    };
  } else if (normalizer instanceof LowercaseNormalizer) {
    (normalizer as unknown as { normalize: (t: string) => string }).normalize = lowercasePerChar;
  } else if (normalizer instanceof SequenceNormalizer) {
    for (const inner of (normalizer as unknown as { normalizers: unknown[] }).normalizers)
      matchRustNormalizers(inner);
  }
}

/** Whether a pre-tokenizer config splits every word at whitespace (BERT, Whitespace, Metaspace, ByteLevel). */
function splitsOnWhitespace(config: unknown): boolean {
  if (!config || typeof config !== "object") return false;
  const c = config as JsonObject;
  switch (c.type) {
    case "BertPreTokenizer":
    case "Whitespace":
    case "WhitespaceSplit":
      return true;
    case "Metaspace":
      return c.split !== false;
    case "ByteLevel":
      return c.use_regex !== false;
    case "Sequence":
      return Array.isArray(c.pretokenizers) && c.pretokenizers.some(splitsOnWhitespace);
    default:
      return false;
  }
}

/** Hugging Face stores "no limit" as 1e30; treat anything that large as absent. */
const NO_LIMIT = 1e15;

function tokenContent(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as JsonObject).content === "string") {
    return (value as JsonObject).content as string;
  }
  return undefined;
}

/**
 * Tokenizer with the behaviour `transformers` gives a fast tokenizer's __call__: truncation to a
 * max length that counts special tokens, text pairs, padding, and token counts.
 * Truncation is done on the pieces before special tokens are added, exactly as the Rust
 * tokenizer does, then the model's own post-processor adds them.
 */
export class TextTokenizer {
  readonly modelMaxLength: number | undefined;
  readonly padTokenId: number;
  readonly paddingSide: Side;
  readonly truncationSide: Side;
  readonly specialIds: ReadonlySet<number>;
  readonly vocabSize: number;
  readonly config: JsonObject;
  private readonly tok: Tokenizer;
  private readonly internals: TokenizerInternals;
  private readonly unkId: number;
  private readonly specialsSingle: number;
  private readonly specialsPair: number;
  /** Pieces never span whitespace, so a prefix cut at whitespace tokenizes like the start of the text. */
  private readonly wordLocal: boolean;

  private constructor(tok: Tokenizer, config: JsonObject, tokenizerJson: JsonObject) {
    this.tok = tok;
    this.config = config;
    this.internals = tok as unknown as TokenizerInternals;
    matchRustNormalizers(tok.normalizer);
    const maxLen = config.model_max_length;
    this.modelMaxLength = typeof maxLen === "number" && maxLen < NO_LIMIT ? maxLen : undefined;
    this.paddingSide = config.padding_side === "left" ? "left" : "right";
    this.truncationSide = config.truncation_side === "left" ? "left" : "right";
    const unkToken = tokenContent(config.unk_token);
    this.unkId =
      (unkToken !== undefined ? tok.token_to_id(unkToken) : undefined) ??
      this.internals.model.unk_token_id ??
      0;
    this.padTokenId = this.resolvePadId(config, tokenizerJson);
    this.specialIds = new Set(this.internals.all_special_ids);
    this.vocabSize = tok.get_vocab(true).size;
    this.wordLocal = splitsOnWhitespace(tokenizerJson.pre_tokenizer);
    this.specialsSingle = this.withSpecialTokens([], null).ids.length;
    this.specialsPair = this.withSpecialTokens([], []).ids.length;
  }

  /** Load `tokenizer.json` + `tokenizer_config.json` (+ `special_tokens_map.json`) from a model directory. */
  static async fromDir(dir: string): Promise<TextTokenizer> {
    const tokenizerJson = await readJsonFile(join(dir, "tokenizer.json"));
    const config = (await readJsonIfExists(join(dir, "tokenizer_config.json"))) ?? {};
    const specialMap = (await readJsonIfExists(join(dir, "special_tokens_map.json"))) ?? {};
    // tokenizer_config wins over special_tokens_map, as in transformers.
    const merged: JsonObject = { ...specialMap, ...config };
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(tokenizerJson as object, merged);
    } catch (err) {
      throw new FlagserveError(
        "model_files",
        `${join(dir, "tokenizer.json")} cannot be loaded: ${(err as Error).message}`,
      );
    }
    return new TextTokenizer(tok, merged, tokenizerJson as JsonObject);
  }

  private resolvePadId(config: JsonObject, tokenizerJson: JsonObject): number {
    const padToken = tokenContent(config.pad_token);
    const fromConfig = padToken !== undefined ? this.tok.token_to_id(padToken) : undefined;
    if (fromConfig !== undefined) return fromConfig;
    const padding = tokenizerJson.padding as JsonObject | null | undefined;
    if (padding && typeof padding.pad_id === "number") return padding.pad_id;
    return 0;
  }

  /** Number of special tokens the post-processor adds to a single text or to a pair. */
  numSpecialTokens(pair = false): number {
    return pair ? this.specialsPair : this.specialsSingle;
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /** Sub-word pieces of a text before special tokens (the Rust tokenizer's "encode without specials"). */
  pieces(text: string): string[] {
    return this.internals.encode_text(text) ?? [];
  }

  /** Ids of a text without special tokens, optionally truncated to `maxLength` ids. */
  encodeWithoutSpecials(text: string, maxLength?: number, side: Side = this.truncationSide): number[] {
    if (maxLength !== undefined && side === "right" && this.wordLocal && text.length > maxLength * 3 + 256) {
      const head = this.headPieces(text, maxLength);
      if (head) return this.toIds(head);
    }
    return this.truncate(this.toIds(this.pieces(text)), maxLength, side);
  }

  /**
   * The first `count` pieces of a long text without tokenizing all of it. With a pre-tokenizer
   * that splits on whitespace, the pieces of a prefix that ends at a whitespace are exactly the
   * first pieces of the whole text; the prefix grows until it yields enough of them.
   */
  private headPieces(text: string, count: number): string[] | undefined {
    let cut = count * 3;
    while (cut < text.length) {
      const ws = text.slice(cut).search(/\s/);
      if (ws < 0) return undefined;
      const pieces = this.pieces(text.slice(0, cut + ws));
      if (pieces.length >= count) return pieces.slice(0, count);
      cut = (cut + ws) * 2;
    }
    return undefined;
  }

  /**
   * Encode one text with special tokens, truncated so the whole sequence fits in `maxLength`
   * (the `truncation=True, max_length=...` behaviour).
   */
  encode(
    text: string,
    maxLength?: number,
    addSpecialTokens = true,
    side: Side = this.truncationSide,
  ): Encoding {
    const budget =
      maxLength === undefined
        ? undefined
        : Math.max(0, maxLength - (addSpecialTokens ? this.specialsSingle : 0));
    return this.withSpecialTokens(this.encodeWithoutSpecials(text, budget, side), null, addSpecialTokens);
  }

  /**
   * Add the model's special tokens around one or two id sequences, with segment ids
   * (prepare_for_model without truncation). The post-processor works on token strings, so it is
   * run on placeholders and the ids are put back in their places.
   */
  withSpecialTokens(a: number[], b: number[] | null, addSpecialTokens = true): Encoding {
    const pp = this.internals.post_processor;
    if (!pp) {
      return {
        ids: b === null ? [...a] : [...a, ...b],
        typeIds: [...a.map(() => 0), ...(b ?? []).map(() => 1)],
      };
    }
    const out = pp(
      a.map(() => SLOT_A),
      b === null ? null : b.map(() => SLOT_B),
      addSpecialTokens,
    );
    let tokens = out.tokens;
    let types = out.token_type_ids ?? tokens.map(() => 0);
    // Some post-processors (ByteLevel) hand the pair back unmerged.
    if (b !== null && out.tokens_pair && tokens.length === a.length) {
      tokens = [...tokens, ...out.tokens_pair];
      types = [...types, ...out.tokens_pair.map(() => 1)];
    }
    const ids = new Array<number>(tokens.length);
    let ia = 0;
    let ib = 0;
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i] as string;
      if (t === SLOT_A) ids[i] = a[ia++] as number;
      else if (t === SLOT_B) ids[i] = (b as number[])[ib++] as number;
      else ids[i] = this.tok.token_to_id(t) ?? this.unkId;
    }
    return { ids, typeIds: types };
  }

  /** Number of tokens a text becomes with special tokens and no truncation. */
  countTokens(text: string): number {
    return this.pieces(text).length + this.specialsSingle;
  }

  decode(ids: number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return "";
    return this.tok.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  /** Cut ids to `maxLength`, by default from the tokenizer's truncation side. */
  truncate(ids: number[], maxLength?: number, side: Side = this.truncationSide): number[] {
    if (maxLength === undefined || ids.length <= maxLength) return ids;
    return side === "left" ? ids.slice(ids.length - maxLength) : ids.slice(0, maxLength);
  }

  private toIds(pieces: string[]): number[] {
    const out = new Array<number>(pieces.length);
    for (let i = 0; i < pieces.length; i++) out[i] = this.tok.token_to_id(pieces[i] as string) ?? this.unkId;
    return out;
  }
}
