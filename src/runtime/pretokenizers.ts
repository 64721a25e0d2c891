import type { JsonObject } from "./files.js";

/**
 * Pre-tokenizers with the Rust `tokenizers` semantics, for the types decoder models use (Split,
 * ByteLevel, Metaspace, Sequence); other types run @huggingface/tokenizers' own pre-tokenizer.
 * Where the JS library differs: Split ignores `MergedWithPrevious` / `MergedWithNext` /
 * `Contiguous`, Metaspace never splits and ByteLevel's regex uses JavaScript's `\s` (which
 * adds U+FEFF and misses U+0085 compared with Oniguruma's).
 */
/**
 * Pre-tokenize one section of text: every piece goes to `emit`, which returns false to stop
 * (a truncated encoding needs only the head of the text); the result is false when stopped.
 */
export type PreTokenize = (text: string, atStart: boolean, emit: (piece: string) => boolean) => boolean;

interface LibraryPreTokenizer {
  pre_tokenize_text(text: string, options?: { section_index?: number }): string[];
  pattern?: RegExp | null;
  tokenizers?: (LibraryPreTokenizer | null)[];
}

/** Build the pre-tokenizer for a tokenizer.json `pre_tokenizer` config; `library` is the JS library's instance of it. */
export function buildPreTokenizer(config: unknown, library: unknown): PreTokenize | null {
  if (!config || typeof config !== "object") return null;
  const c = config as JsonObject;
  const lib = library as LibraryPreTokenizer | null;
  switch (c.type) {
    case "Split":
      return split(c, lib);
    case "ByteLevel":
      return byteLevel(c);
    case "Metaspace":
      return metaspace(c);
    case "Sequence": {
      const subs = (Array.isArray(c.pretokenizers) ? c.pretokenizers : [])
        .map((sub, i) => buildPreTokenizer(sub, lib?.tokenizers?.[i] ?? null))
        .filter((sub): sub is PreTokenize => sub !== null);
      // Each step's pieces go straight through the next steps; only a piece that starts the
      // section keeps `atStart`.
      const chain = (
        k: number,
        text: string,
        atStart: boolean,
        emit: (piece: string) => boolean,
      ): boolean => {
        const sub = subs[k];
        if (sub === undefined) return emit(text);
        let first = true;
        return sub(text, atStart, (piece) => {
          const ok = chain(k + 1, piece, atStart && first, emit);
          first = false;
          return ok;
        });
      };
      return (text, atStart, emit) => chain(0, text, atStart, emit);
    }
    default:
      if (!lib) return null;
      return (text, atStart, emit) => {
        for (const p of lib.pre_tokenize_text(text, { section_index: atStart ? 0 : 1 }))
          if (!emit(p)) return false;
        return true;
      };
  }
}

type Behavior = "removed" | "isolated" | "mergedwithprevious" | "mergedwithnext" | "contiguous";

function split(c: JsonObject, lib: LibraryPreTokenizer | null): PreTokenize {
  const pattern = (c.pattern ?? {}) as { String?: string; Regex?: string };
  let re: RegExp;
  if (typeof pattern.String === "string") {
    re = new RegExp(pattern.String.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "gu");
  } else if (lib?.pattern instanceof RegExp) {
    // The library's translation of the Oniguruma pattern to a JavaScript one.
    const flags = lib.pattern.flags.includes("g") ? lib.pattern.flags : `${lib.pattern.flags}g`;
    re = new RegExp(lib.pattern.source, flags);
  } else {
    throw new Error(`Split pre-tokenizer pattern ${JSON.stringify(pattern)} is not supported`);
  }
  const behavior = String(c.behavior ?? "Isolated").toLowerCase() as Behavior;
  const invert = c.invert === true;
  return (text, _atStart, emit) => splitOn(text, re, behavior, invert, emit);
}

/**
 * Rust's NormalizedString::split on the matches of a global regex, streamed: the matches and the
 * gaps between them are merged or dropped as `behavior` says, looking at most one span ahead.
 */
export function splitOn(
  text: string,
  re: RegExp,
  behavior: Behavior,
  invert: boolean,
  emit: (piece: string) => boolean,
): boolean {
  if (text.length === 0) return true;
  // The piece being built, and whether its last span is a match.
  let pendingStart = -1;
  let pendingEnd = -1;
  let pendingMatch = false;
  const flush = (): boolean => {
    if (pendingStart < 0) return true;
    const ok = pendingEnd > pendingStart ? emit(text.slice(pendingStart, pendingEnd)) : true;
    pendingStart = -1;
    return ok;
  };
  const span = (start: number, end: number, isMatch: boolean): boolean => {
    switch (behavior) {
      case "removed":
        return isMatch || end === start || emit(text.slice(start, end));
      case "contiguous":
        if (pendingStart >= 0 && isMatch === pendingMatch) {
          pendingEnd = end;
          return true;
        }
        break;
      case "mergedwithprevious":
        if (pendingStart >= 0 && isMatch && !pendingMatch) {
          pendingEnd = end;
          pendingMatch = true;
          return true;
        }
        break;
      case "mergedwithnext":
        // A match joins the gap that follows it.
        if (pendingStart >= 0 && pendingMatch && !isMatch) {
          pendingEnd = end;
          pendingMatch = false;
          return flush();
        }
        break;
      default:
        return end === start || emit(text.slice(start, end));
    }
    if (!flush()) return false;
    pendingStart = start;
    pendingEnd = end;
    pendingMatch = isMatch;
    // Only a match can still grow (into the next gap) under mergedwithnext.
    return behavior !== "mergedwithnext" || isMatch ? true : flush();
  };
  let prev = 0;
  re.lastIndex = 0;
  for (;;) {
    const m = re.exec(text);
    if (m === null) break;
    const start = m.index;
    const end = start + m[0].length;
    if (prev !== start && !span(prev, start, invert)) return false;
    if (!span(start, end, !invert)) return false;
    prev = end;
    if (end === start) {
      if (start >= text.length) break;
      re.lastIndex = start + ((text.codePointAt(start) as number) > 0xffff ? 2 : 1);
    }
  }
  if (prev !== text.length && !span(prev, text.length, invert)) return false;
  return flush();
}

/** GPT-2's split (Rust's ByteLevel `use_regex`), with Oniguruma's `\s` (the White_Space property). */
const GPT2_SPLIT =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;

/** GPT-2's byte-to-character table: printable bytes stand for themselves, the others from U+0100 on. */
export const BYTE_CHARS: readonly string[] = (() => {
  const chars = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCharCode(printable ? b : 256 + n++);
  }
  return chars;
})();

/** The byte characters of each BMP character's UTF-8, filled as characters are met. */
const BMP_BYTE_CHARS: (string | undefined)[] = new Array(0x10000);

/** A text's UTF-8 bytes as GPT-2's byte characters. */
export function bytesToChars(text: string): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) {
      out += BYTE_CHARS[c];
    } else if (c < 0xd800 || c > 0xdfff) {
      let chars = BMP_BYTE_CHARS[c];
      if (chars === undefined) {
        chars = "";
        for (const b of Buffer.from(String.fromCharCode(c), "utf8")) chars += BYTE_CHARS[b];
        BMP_BYTE_CHARS[c] = chars;
      }
      out += chars;
    } else {
      // A surrogate pair (or a lone surrogate, which UTF-8 writes as U+FFFD as Rust would never see it).
      const cp = text.codePointAt(i) as number;
      const ch = String.fromCodePoint(cp);
      for (const b of Buffer.from(cp > 0xffff ? ch : String.fromCharCode(c), "utf8")) out += BYTE_CHARS[b];
      if (cp > 0xffff) i++;
    }
  }
  return out;
}

function byteLevel(c: JsonObject): PreTokenize {
  const addPrefixSpace = c.add_prefix_space !== false;
  const useRegex = c.use_regex !== false;
  const re = new RegExp(GPT2_SPLIT.source, GPT2_SPLIT.flags);
  return (input, _atStart, emit) => {
    const text = addPrefixSpace && !input.startsWith(" ") ? ` ${input}` : input;
    if (!useRegex) return text.length === 0 || emit(bytesToChars(text));
    return splitOn(text, re, "isolated", false, (piece) => emit(bytesToChars(piece)));
  };
}

function metaspace(c: JsonObject): PreTokenize {
  const replacement = typeof c.replacement === "string" ? c.replacement : "\u2581";
  let scheme = typeof c.prepend_scheme === "string" ? c.prepend_scheme : "always";
  if (c.add_prefix_space === false) scheme = "never";
  const doSplit = c.split !== false;
  return (input, atStart, emit) => {
    let text = input.replaceAll(" ", replacement);
    if ((scheme === "always" || (scheme === "first" && atStart)) && !text.startsWith(replacement)) {
      text = replacement + text;
    }
    if (!doSplit) return text.length === 0 || emit(text);
    // MergedWithNext on the replacement character: every occurrence starts a new piece.
    let start = 0;
    let at = text.indexOf(replacement, 1);
    while (at >= 0) {
      if (!emit(text.slice(start, at))) return false;
      start = at;
      at = text.indexOf(replacement, at + replacement.length);
    }
    return start >= text.length || emit(text.slice(start));
  };
}
