import { join } from "node:path";
import * as tokenizersJs from "@huggingface/tokenizers";
import { Tokenizer } from "@huggingface/tokenizers";
import { type AddedTokenSpec, AddedVocabulary } from "./added-vocabulary.js";
import { BpeModel } from "./bpe.js";
import { buildDecoder, type Decode } from "./decoders.js";
import { FlagserveError } from "./errors.js";
import { type JsonObject, readJsonFile, readJsonIfExists } from "./files.js";
import { PrecompiledCharsmap } from "./precompiled.js";
import { buildPreTokenizer, type PreTokenize } from "./pretokenizers.js";

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

/** The parts of @huggingface/tokenizers that its typings keep private but that the pipeline uses:
 *  normalizer, pre-tokenizer, model and decoder objects, the post-processor, special tokens. */
interface TokenizerInternals {
  normalizer: ((text: string) => string) | null;
  pre_tokenizer: unknown;
  decoder: unknown;
  post_processor: ((a: string[], b: string[] | null, addSpecial: boolean) => PostProcessed) | null;
  model: ((tokens: string[]) => string[]) & {
    unk_token_id?: number;
    tokens_to_ids: Map<string, number>;
    vocab: string[];
  };
  all_special_ids: number[];
  special_tokens: string[];
}

// Placeholders that no vocabulary contains, used to locate the sequences in a post-processed template.
const SLOT_A = "\u0000flagserve:A\u0000";
const SLOT_B = "\u0000flagserve:B\u0000";

// Exported at run time, but the package's typings lose these classes under NodeNext resolution.
type Ctor = abstract new (...args: never[]) => unknown;
const {
  PrecompiledNormalizer,
  SequenceNormalizer,
  BertNormalizer,
  LowercaseNormalizer,
  ReplaceNormalizer,
  StripNormalizer,
} = tokenizersJs as unknown as {
  PrecompiledNormalizer: Ctor;
  SequenceNormalizer: Ctor;
  BertNormalizer: Ctor;
  LowercaseNormalizer: Ctor;
  ReplaceNormalizer: Ctor;
  StripNormalizer: Ctor;
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
 * lowercasing, CJK spacing by code point, literal replacement text (JavaScript's replaceAll reads
 * `$&` and friends in it) and stripping of Unicode White_Space (JavaScript's trim differs).
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
  } else if (normalizer instanceof ReplaceNormalizer) {
    const n = normalizer as unknown as { pattern: RegExp | null; config: { content?: string } };
    const literal = (n.config.content ?? "").replaceAll("$", "$$$$");
    (normalizer as unknown as { normalize: (t: string) => string }).normalize = (t) =>
      n.pattern === null ? t : t.replaceAll(n.pattern, literal);
  } else if (normalizer instanceof StripNormalizer) {
    const c = (normalizer as unknown as { config: { strip_left?: boolean; strip_right?: boolean } }).config;
    (normalizer as unknown as { normalize: (t: string) => string }).normalize = (t) =>
      stripWhiteSpace(t, c.strip_left === true, c.strip_right === true);
  } else if (normalizer instanceof LowercaseNormalizer) {
    (normalizer as unknown as { normalize: (t: string) => string }).normalize = lowercasePerChar;
  } else if (normalizer instanceof SequenceNormalizer) {
    for (const inner of (normalizer as unknown as { normalizers: unknown[] }).normalizers)
      matchRustNormalizers(inner);
  }
}

const WHITE_SPACE = /^\p{White_Space}$/u;

/** Trim Unicode White_Space (Rust's char::is_whitespace) from either end. */
function stripWhiteSpace(text: string, left: boolean, right: boolean): string {
  let start = 0;
  let end = text.length;
  // White_Space characters are all in the BMP, so UTF-16 units suffice.
  if (left) while (start < end && WHITE_SPACE.test(text[start] as string)) start++;
  if (right) while (end > start && WHITE_SPACE.test(text[end - 1] as string)) end--;
  return text.slice(start, end);
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

/** One item of a TemplateProcessing template: a sequence slot or a special token (possibly several ids). */
interface TemplatePiece {
  sequence?: "A" | "B";
  ids?: number[];
  typeId: number;
}

interface Template {
  single: TemplatePiece[];
  pair: TemplatePiece[];
}

/** A tokenizer.json TemplateProcessing config, with its special tokens resolved to ids as Rust does. */
function parseTemplate(config: JsonObject): Template {
  const specials = (config.special_tokens ?? {}) as Record<string, { ids?: number[] }>;
  const parse = (items: unknown): TemplatePiece[] =>
    (Array.isArray(items) ? items : []).map((item: JsonObject) => {
      if (item.Sequence) {
        const s = item.Sequence as { id: "A" | "B"; type_id?: number };
        return { sequence: s.id, typeId: s.type_id ?? 0 };
      }
      const t = item.SpecialToken as { id: string; type_id?: number };
      const ids = specials[t.id]?.ids;
      if (!Array.isArray(ids)) throw new Error(`template special token ${t.id} has no ids`);
      return { ids, typeId: t.type_id ?? 0 };
    });
  return { single: parse(config.single), pair: parse(config.pair) };
}

/**
 * How special tokens are added: a template (TemplateProcessing, also inside a Sequence whose other
 * steps are ByteLevel, which changes no ids), nothing (no post-processor, or ByteLevel alone), or
 * the JS library's post-processor (BertProcessing, RobertaProcessing ...).
 */
function templateOf(config: unknown): Template | "none" | "library" {
  if (!config || typeof config !== "object") return "none";
  const c = config as JsonObject;
  if (c.type === "TemplateProcessing") return parseTemplate(c);
  if (c.type === "ByteLevel") return "none";
  if (c.type === "Sequence" && Array.isArray(c.processors)) {
    const rest = (c.processors as JsonObject[]).filter((p) => p?.type !== "ByteLevel");
    if (rest.length === 0) return "none";
    if (rest.length === 1 && rest[0]?.type === "TemplateProcessing") return parseTemplate(rest[0]);
  }
  return "library";
}

/**
 * transformers' fast tokenizers of these classes rebuild their post-processor from
 * `add_bos_token` / `add_eos_token` (defaults below) whatever tokenizer.json says.
 */
const BOS_EOS_CLASSES: Record<string, [boolean, boolean]> = {
  LlamaTokenizer: [true, false],
  CodeLlamaTokenizer: [true, false],
  GemmaTokenizer: [true, false],
  CohereTokenizer: [true, false],
  GPTNeoXTokenizer: [false, false],
};

/** transformers' clean_up_tokenization (applied after decoding when the config asks for it). */
function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(" .", ".")
    .replaceAll(" ?", "?")
    .replaceAll(" !", "!")
    .replaceAll(" ,", ",")
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/**
 * Tokenizer with the behaviour `transformers` gives a fast tokenizer's __call__: truncation to a
 * max length that counts special tokens, text pairs, padding, and token counts.
 *
 * Encoding follows the Rust `tokenizers` pipeline step by step: added tokens are split off
 * (`AddedVocabulary`), the rest normalized (@huggingface/tokenizers' normalizers, corrected where
 * they differ), pre-tokenized (`buildPreTokenizer`), and each pre-token run through the model (the
 * Rust-exact `BpeModel` for BPE, the JS library's WordPiece / Unigram otherwise), then special
 * tokens are added by the template (transformers' own for Llama / Gemma classes). Truncation is
 * done on the ids before special tokens are added, as the Rust tokenizer does. Keeping the head
 * stops the pipeline once it has enough ids, which is exact since each pre-token is tokenized on
 * its own (and BPE words are only cut where that changes nothing); WordPiece / Unigram models
 * that split at whitespace first try a prefix of a long text (`headIds`).
 */
export class TextTokenizer {
  readonly modelMaxLength: number | undefined;
  readonly padTokenId: number;
  readonly paddingSide: Side;
  readonly truncationSide: Side;
  readonly specialIds: ReadonlySet<number>;
  readonly config: JsonObject;
  /** Id of `bos_token` (tokenizer_config / special_tokens_map), undefined when the model has none. */
  readonly bosTokenId: number | undefined;
  /** Id of `eos_token`, undefined when the model has none. */
  readonly eosTokenId: number | undefined;
  /** Whether `encode` with special tokens starts a text with the bos token (Llama, Gemma: yes; Qwen: no). */
  readonly addsBos: boolean;
  /** Whether `encode` with special tokens ends a text with the eos token. */
  readonly addsEos: boolean;
  private readonly tok: Tokenizer;
  private readonly internals: TokenizerInternals;
  private readonly unkId: number;
  private readonly added: AddedVocabulary;
  private readonly preTokenize: PreTokenize | null;
  private readonly bpe: BpeModel | null;
  private readonly decodeChain: Decode | null;
  private readonly template: Template | "none" | "library";
  private readonly addedById = new Map<number, string>();
  private readonly addedSpecs: AddedTokenSpec[];
  private vocabSizeMemo: number | undefined;
  private readonly decodeSkips: ReadonlySet<string>;
  private readonly cleanUp: boolean;
  private readonly specialsSingle: number;
  private readonly specialsPair: number;
  /**
   * WordPiece / Unigram models whose pre-tokenizer splits at whitespace: a prefix of the text cut
   * before a whitespace gives the first ids of the whole text (see headIds). BPE needs no such
   * assumption: its head is computed exactly by stopping the pipeline early.
   */
  private readonly wordLocal: boolean;

  private constructor(tok: Tokenizer, config: JsonObject, tokenizerJson: JsonObject, bpe: BpeModel | null) {
    this.tok = tok;
    this.config = config;
    this.internals = tok as unknown as TokenizerInternals;
    this.bpe = bpe;
    matchRustNormalizers(tok.normalizer);
    const maxLen = config.model_max_length;
    this.modelMaxLength = typeof maxLen === "number" && maxLen < NO_LIMIT ? maxLen : undefined;
    this.paddingSide = config.padding_side === "left" ? "left" : "right";
    this.truncationSide = config.truncation_side === "left" ? "left" : "right";
    const addedSpecs = (
      Array.isArray(tokenizerJson.added_tokens) ? tokenizerJson.added_tokens : []
    ) as AddedTokenSpec[];
    for (const t of addedSpecs) this.addedById.set(t.id, t.content);
    const unkToken = tokenContent(config.unk_token);
    this.unkId =
      (unkToken !== undefined ? this.tokenToId(unkToken) : undefined) ??
      (bpe ? bpe.unkId : this.internals.model.unk_token_id) ??
      0;
    this.padTokenId = this.resolvePadId(config, tokenizerJson);
    this.specialIds = new Set(this.internals.all_special_ids);
    this.addedSpecs = addedSpecs;

    const normalizer = this.internals.normalizer;
    this.added = new AddedVocabulary(addedSpecs, normalizer ? (t) => normalizer(t) : null);
    this.preTokenize = buildPreTokenizer(tokenizerJson.pre_tokenizer, this.internals.pre_tokenizer);
    this.wordLocal = bpe === null && splitsOnWhitespace(tokenizerJson.pre_tokenizer);
    this.decodeChain = buildDecoder(tokenizerJson.decoder, this.internals.decoder);
    this.decodeSkips = new Set(this.internals.special_tokens);
    this.cleanUp = config.clean_up_tokenization_spaces === true;

    const bos = tokenContent(config.bos_token);
    const eos = tokenContent(config.eos_token);
    this.bosTokenId = bos === undefined ? undefined : this.tokenToId(bos);
    this.eosTokenId = eos === undefined ? undefined : this.tokenToId(eos);
    this.template = this.transformersTemplate() ?? templateOf(tokenizerJson.post_processor);

    this.specialsSingle = this.withSpecialTokens([], null).ids.length;
    this.specialsPair = this.withSpecialTokens([], []).ids.length;
    // -1 is no token id: where it lands shows what the template puts around a text.
    const probe = this.withSpecialTokens([-1], null).ids;
    const at = probe.indexOf(-1);
    this.addsBos = this.bosTokenId !== undefined && at > 0 && probe[0] === this.bosTokenId;
    this.addsEos = this.eosTokenId !== undefined && at < probe.length - 1 && probe.at(-1) === this.eosTokenId;
  }

  /** Load `tokenizer.json` + `tokenizer_config.json` (+ `special_tokens_map.json`) from a model directory. */
  static async fromDir(dir: string): Promise<TextTokenizer> {
    const tokenizerJson = await readJsonFile(join(dir, "tokenizer.json"));
    const config = (await readJsonIfExists(join(dir, "tokenizer_config.json"))) ?? {};
    const specialMap = (await readJsonIfExists(join(dir, "special_tokens_map.json"))) ?? {};
    // tokenizer_config wins over special_tokens_map, as in transformers.
    const merged: JsonObject = { ...specialMap, ...config };
    const model = (tokenizerJson.model ?? {}) as JsonObject;
    const isBpe = model.type === "BPE";
    let tok: Tokenizer;
    let bpe: BpeModel | null = null;
    try {
      // The library's BPE is never run, nor its vocabulary read (BpeModel has them): indexing
      // them would double the load time of large vocabularies.
      const forLibrary = isBpe
        ? { ...tokenizerJson, model: { ...model, vocab: {}, merges: [] } }
        : tokenizerJson;
      tok = new Tokenizer(forLibrary as object, merged);
      if (isBpe) bpe = new BpeModel(model);
    } catch (err) {
      throw new FlagserveError(
        "model_files",
        `${join(dir, "tokenizer.json")} cannot be loaded: ${(err as Error).message}`,
      );
    }
    return new TextTokenizer(tok, merged, tokenizerJson as JsonObject, bpe);
  }

  private resolvePadId(config: JsonObject, tokenizerJson: JsonObject): number {
    const padToken = tokenContent(config.pad_token);
    const fromConfig = padToken !== undefined ? this.tokenToId(padToken) : undefined;
    if (fromConfig !== undefined) return fromConfig;
    const padding = tokenizerJson.padding as JsonObject | null | undefined;
    if (padding && typeof padding.pad_id === "number") return padding.pad_id;
    return 0;
  }

  /** The template transformers builds for Llama / Gemma / ... fast tokenizers, if this is one. */
  private transformersTemplate(): Template | undefined {
    const cls = typeof this.config.tokenizer_class === "string" ? this.config.tokenizer_class : "";
    const defaults = BOS_EOS_CLASSES[cls.replace(/Fast$/, "")];
    if (!defaults) return undefined;
    const addBos = typeof this.config.add_bos_token === "boolean" ? this.config.add_bos_token : defaults[0];
    const addEos = typeof this.config.add_eos_token === "boolean" ? this.config.add_eos_token : defaults[1];
    // transformers refuses these; keep tokenizer.json's template.
    if ((addBos && this.bosTokenId === undefined) || (addEos && this.eosTokenId === undefined))
      return undefined;
    const single: TemplatePiece[] = [];
    if (addBos) single.push({ ids: [this.bosTokenId as number], typeId: 0 });
    single.push({ sequence: "A", typeId: 0 });
    if (addEos) single.push({ ids: [this.eosTokenId as number], typeId: 0 });
    const pair = [...single];
    if (addBos) pair.push({ ids: [this.bosTokenId as number], typeId: 1 });
    pair.push({ sequence: "B", typeId: 1 });
    if (addEos) pair.push({ ids: [this.eosTokenId as number], typeId: 1 });
    return { single, pair };
  }

  /** Number of distinct tokens, the model's and the added ones (computed on first use). */
  get vocabSize(): number {
    if (this.vocabSizeMemo !== undefined) return this.vocabSizeMemo;
    const bpe = this.bpe;
    const n: number = bpe
      ? bpe.size + this.addedSpecs.filter((t) => bpe.get(t.content) === undefined).length
      : this.tok.get_vocab(true).size;
    this.vocabSizeMemo = n;
    return n;
  }

  /** Number of special tokens the post-processor adds to a single text or to a pair. */
  numSpecialTokens(pair = false): number {
    return pair ? this.specialsPair : this.specialsSingle;
  }

  /** Id of a token: an added token first, then the model's vocabulary (as Rust looks them up). */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token) ?? this.bpe?.get(token);
  }

  idToToken(id: number): string | undefined {
    return this.addedById.get(id) ?? (this.bpe ? this.bpe.token(id) : this.tok.id_to_token(id));
  }

  /** Sub-word pieces of a text before special tokens (the Rust tokenizer's "encode without specials"). */
  pieces(text: string): string[] {
    return this.encodeIds(text).map((id) => this.idToToken(id) ?? "");
  }

  /** Ids of a text without special tokens, optionally truncated to `maxLength` ids. */
  encodeWithoutSpecials(text: string, maxLength?: number, side: Side = this.truncationSide): number[] {
    if (maxLength !== undefined && side === "right") {
      // Normalizing a whole long text costs more than tokenizing its head with these models.
      if (this.wordLocal && text.length > maxLength * 3 + 256) {
        const head = this.headIds(text, maxLength);
        if (head) return head;
      }
      // Keeping the head: stop tokenizing once there are enough ids.
      return this.encodeIds(text, maxLength);
    }
    return this.truncate(this.encodeIds(text), maxLength, side);
  }

  /**
   * The first `count` ids of a long text without normalizing all of it. With a pre-tokenizer
   * that splits on whitespace, the ids of a prefix that ends at a whitespace are exactly the
   * first ids of the whole text; the prefix grows until it yields enough of them.
   */
  private headIds(text: string, count: number): number[] | undefined {
    let cut = count * 3;
    while (cut < text.length) {
      const ws = text.slice(cut).search(/\s/);
      if (ws < 0) return undefined;
      const ids = this.encodeIds(text.slice(0, cut + ws), count);
      if (ids.length >= count) return ids;
      cut = (cut + ws) * 2;
    }
    return undefined;
  }

  /**
   * Ids of a text without special tokens; with `limit`, only the first `limit` ids, computed
   * without tokenizing the rest of the text.
   */
  private encodeIds(text: string, limit = Number.POSITIVE_INFINITY): number[] {
    const ids: number[] = [];
    if (limit <= 0) return ids;
    const emit = (piece: string): boolean => {
      this.runModel(piece, ids, limit);
      return ids.length < limit;
    };
    for (const section of this.added.split(text)) {
      if (section.id !== undefined) ids.push(section.id);
      else if (this.preTokenize) this.preTokenize(section.text, section.atStart, emit);
      else emit(section.text);
      if (ids.length >= limit) return ids.length > limit ? ids.slice(0, limit) : ids;
    }
    return ids;
  }

  /** Tokenize one pre-token (each one on its own, as Rust does) and append its ids. */
  private runModel(piece: string, ids: number[], limit: number): void {
    if (this.bpe) {
      this.bpe.tokenize(piece, ids, limit);
      return;
    }
    const model = this.internals.model;
    for (const t of model([piece])) ids.push(model.tokens_to_ids.get(t) ?? this.unkId);
  }

  /**
   * Encode one text with special tokens, truncated so the whole sequence fits in `maxLength`
   * (the `truncation=True, max_length=...` behaviour). A `maxLength` below the number of special
   * tokens leaves only them (the Rust tokenizer's length arithmetic wraps around there and it
   * does not truncate at all).
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
   * (prepare_for_model without truncation).
   */
  withSpecialTokens(a: number[], b: number[] | null, addSpecialTokens = true): Encoding {
    const template = this.template;
    if (template === "none") {
      return {
        ids: b === null ? [...a] : [...a, ...b],
        typeIds: [...a.map(() => 0), ...(b ?? []).map(() => 1)],
      };
    }
    if (template === "library") return this.libraryPostProcess(a, b, addSpecialTokens);
    const ids: number[] = [];
    const typeIds: number[] = [];
    for (const piece of b === null ? template.single : template.pair) {
      const part =
        piece.sequence === undefined
          ? addSpecialTokens
            ? (piece.ids as number[])
            : []
          : piece.sequence === "A"
            ? a
            : (b ?? []);
      for (const id of part) {
        ids.push(id);
        typeIds.push(piece.typeId);
      }
    }
    return { ids, typeIds };
  }

  /**
   * The JS library's post-processor works on token strings, so it is run on placeholders and the
   * ids are put back in their places.
   */
  private libraryPostProcess(a: number[], b: number[] | null, addSpecialTokens: boolean): Encoding {
    const pp = this.internals.post_processor as NonNullable<TokenizerInternals["post_processor"]>;
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
      else ids[i] = this.tokenToId(t) ?? this.unkId;
    }
    return { ids, typeIds: types };
  }

  /** Number of tokens a text becomes with special tokens and no truncation. */
  countTokens(text: string): number {
    return this.encodeIds(text).length + this.specialsSingle;
  }

  /**
   * Text of token ids, as transformers' `decode` gives it: the Rust decoder chain over the ids'
   * tokens (unknown ids dropped, special tokens too when skipped), then transformers' clean-up
   * when `clean_up_tokenization_spaces` is set.
   */
  decode(ids: number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return "";
    const tokens: string[] = [];
    for (const id of ids) {
      const token = this.idToToken(id);
      if (token === undefined) continue;
      if (skipSpecialTokens && this.decodeSkips.has(token)) continue;
      tokens.push(token);
    }
    const text = this.decodeChain ? this.decodeChain(tokens).join("") : tokens.join(" ");
    return this.cleanUp ? cleanUpTokenization(text) : text;
  }

  /** Cut ids to `maxLength`, by default from the tokenizer's truncation side. */
  truncate(ids: number[], maxLength?: number, side: Side = this.truncationSide): number[] {
    if (maxLength === undefined || ids.length <= maxLength) return ids;
    return side === "left" ? ids.slice(ids.length - maxLength) : ids.slice(0, maxLength);
  }
}
