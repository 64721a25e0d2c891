import type { JsonObject } from "./files.js";
import { BYTE_CHARS } from "./pretokenizers.js";

/**
 * Decoders with the Rust `tokenizers` semantics for the types decoder models use; other types run
 * @huggingface/tokenizers' own decoder. Where the JS library differs: ByteFallback turns an
 * invalid byte sequence into one U+FFFD per byte (the library decodes it leniently), ByteLevel
 * decodes added tokens through the byte table too and the whole output as one byte string,
 * Metaspace drops every replacement character of the first token and Strip counts characters.
 */
export type Decode = (tokens: string[]) => string[];

interface LibraryDecoder {
  decode_chain(tokens: string[]): string[];
  decoders?: (LibraryDecoder | null)[];
}

const CHAR_BYTES = new Map<string, number>(BYTE_CHARS.map((c, b) => [c, b]));
const UTF8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const UTF8_STRICT = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export function buildDecoder(config: unknown, library: unknown): Decode | null {
  if (!config || typeof config !== "object") return null;
  const c = config as JsonObject;
  const lib = library as LibraryDecoder | null;
  switch (c.type) {
    case "ByteLevel":
      return byteLevel;
    case "ByteFallback":
      return byteFallback;
    case "Fuse":
      return (tokens) => [tokens.join("")];
    case "Strip":
      return strip(
        typeof c.content === "string" ? c.content : " ",
        Number(c.start ?? 0),
        Number(c.stop ?? 0),
      );
    case "Replace": {
      const pattern = c.pattern as { String?: string } | undefined;
      if (typeof pattern?.String === "string") {
        const from = pattern.String;
        const to = typeof c.content === "string" ? c.content : "";
        return (tokens) => tokens.map((t) => (from.length > 0 ? t.split(from).join(to) : t));
      }
      break;
    }
    case "Metaspace": {
      const replacement = typeof c.replacement === "string" ? c.replacement : "\u2581";
      let scheme = typeof c.prepend_scheme === "string" ? c.prepend_scheme : "always";
      if (c.add_prefix_space === false) scheme = "never";
      return (tokens) =>
        tokens.map((t, i) => t.split(replacement).join(i === 0 && scheme !== "never" ? "" : " "));
    }
    case "Sequence": {
      const subs = (Array.isArray(c.decoders) ? c.decoders : []).map((sub, i) =>
        buildDecoder(sub, lib?.decoders?.[i] ?? null),
      );
      return (tokens) => subs.reduce((acc, sub) => (sub ? sub(acc) : acc), tokens);
    }
  }
  return lib ? (tokens) => lib.decode_chain(tokens) : null;
}

/** Every character through GPT-2's byte table (a token with an unmapped character: its UTF-8), then UTF-8 leniently. */
function byteLevel(tokens: string[]): string[] {
  const bytes: number[] = [];
  for (const t of tokens) {
    const start = bytes.length;
    let mapped = true;
    for (const ch of t) {
      const b = CHAR_BYTES.get(ch);
      if (b === undefined) {
        mapped = false;
        break;
      }
      bytes.push(b);
    }
    if (!mapped) {
      bytes.length = start;
      for (const b of Buffer.from(t, "utf8")) bytes.push(b);
    }
  }
  return [UTF8.decode(Uint8Array.from(bytes))];
}

/** `<0xXX>` runs become their UTF-8 text, or one U+FFFD per byte when they are not valid UTF-8. */
function byteFallback(tokens: string[]): string[] {
  const out: string[] = [];
  let pending: number[] = [];
  const flush = () => {
    if (pending.length === 0) return;
    try {
      out.push(UTF8_STRICT.decode(Uint8Array.from(pending)));
    } catch {
      for (let i = 0; i < pending.length; i++) out.push("\ufffd");
    }
    pending = [];
  };
  for (const t of tokens) {
    const byte = t.length === 6 && t.startsWith("<0x") && t.endsWith(">") ? parseHexByte(t.slice(3, 5)) : -1;
    if (byte >= 0) {
      pending.push(byte);
    } else {
      flush();
      out.push(t);
    }
  }
  flush();
  return out;
}

function parseHexByte(hex: string): number {
  return /^[0-9a-fA-F]{2}$/.test(hex) ? Number.parseInt(hex, 16) : -1;
}

function strip(content: string, start: number, stop: number): Decode {
  return (tokens) =>
    tokens.map((token) => {
      const chars = Array.from(token);
      let startCut = 0;
      for (let i = 0; i < Math.min(start, chars.length); i++) {
        if (chars[i] !== content) break;
        startCut = i + 1;
      }
      let stopCut = chars.length;
      for (let i = 0; i < stop && i < chars.length; i++) {
        const index = chars.length - i - 1;
        if (chars[index] !== content) break;
        stopCut = index;
      }
      return chars.slice(startCut, Math.max(startCut, stopCut)).join("");
    });
}
