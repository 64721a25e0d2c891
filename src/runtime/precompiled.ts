/**
 * SentencePiece's precompiled normalisation (the `Precompiled` normalizer of XLM-R, bge-m3,
 * multilingual-e5, T5 ...), run from the charsmap itself. @huggingface/tokenizers approximates it
 * with NFKC plus a few replacements, which differs from the Rust tokenizer on characters such as
 * the zero-width joiner; embedding parity needs the exact rules.
 *
 * Charsmap layout: u32 LE trie size in bytes, a darts-clone double-array trie of u32 LE units,
 * then a pool of NUL-terminated replacement strings the trie's values point into.
 */
export class PrecompiledCharsmap {
  private readonly units: Uint32Array;
  private readonly pool: Buffer;
  private readonly cache = new Map<string, string | null>();
  private readonly segmenter = new Intl.Segmenter(undefined, { granularity: "grapheme" });

  constructor(charsmapBase64: string) {
    const bytes = Buffer.from(charsmapBase64, "base64");
    if (bytes.length < 4) throw new Error("precompiled charsmap is too short");
    const trieBytes = bytes.readUInt32LE(0);
    if (trieBytes % 4 !== 0 || 4 + trieBytes > bytes.length || trieBytes === 0) {
      throw new Error("precompiled charsmap has a malformed trie");
    }
    this.units = new Uint32Array(trieBytes / 4);
    for (let i = 0; i < this.units.length; i++) this.units[i] = bytes.readUInt32LE(4 + i * 4);
    this.pool = bytes.subarray(4 + trieBytes);
  }

  /** Normalise a string grapheme by grapheme, with the Rust tokenizer's rules for long clusters. */
  normalize(text: string): string {
    // ASCII characters are graphemes of their own (CR LF aside, which is looked up as a pair), so
    // runs of them skip the grapheme segmenter; the last one joins the next run in case a
    // combining mark follows it.
    let out = "";
    let i = 0;
    while (i < text.length) {
      let j = i;
      while (j < text.length && text.charCodeAt(j) < 0x80) j++;
      let asciiEnd = j < text.length ? Math.max(i, j - 1) : j;
      // keep a CR LF pair together on the grapheme side
      if (
        asciiEnd > i &&
        asciiEnd < text.length &&
        text.charCodeAt(asciiEnd) === 10 &&
        text.charCodeAt(asciiEnd - 1) === 13
      ) {
        asciiEnd--;
      }
      for (let k = i; k < asciiEnd; k++) {
        if (text.charCodeAt(k) === 13 && text.charCodeAt(k + 1) === 10 && k + 1 < asciiEnd) {
          out += this.transform("\r\n") ?? `${this.transform("\r") ?? "\r"}${this.transform("\n") ?? "\n"}`;
          k++;
          continue;
        }
        const ch = text[k] as string;
        out += this.transform(ch) ?? ch;
      }
      if (asciiEnd >= text.length) break;
      // The rest of this non-ASCII run (plus the ASCII character before it) goes through graphemes.
      let end = asciiEnd + 1;
      while (end < text.length && text.charCodeAt(end) >= 0x80) end++;
      out += this.normalizeGraphemes(text.slice(asciiEnd, end));
      i = end;
    }
    return out;
  }

  private normalizeGraphemes(text: string): string {
    let out = "";
    for (const { segment } of this.segmenter.segment(text)) {
      // Graphemes shorter than 6 UTF-8 bytes are looked up whole; others (and misses) char by char.
      if (Buffer.byteLength(segment, "utf8") < 6) {
        const whole = this.transform(segment);
        if (whole !== null) {
          out += whole;
          continue;
        }
      }
      for (const ch of segment) out += this.transform(ch) ?? ch;
    }
    return out;
  }

  private transform(chunk: string): string | null {
    const cached = this.cache.get(chunk);
    if (cached !== undefined) return cached;
    const offset = this.firstPrefixValue(Buffer.from(chunk, "utf8"));
    let result: string | null = null;
    if (offset !== undefined) {
      let end = offset;
      while (end < this.pool.length && this.pool[end] !== 0) end++;
      result = this.pool.subarray(offset, end).toString("utf8");
    }
    if (this.cache.size < 50_000) this.cache.set(chunk, result);
    return result;
  }

  /** Value of the shortest key in the trie that is a prefix of `key`, as the Rust tokenizer takes. */
  private firstPrefixValue(key: Buffer): number | undefined {
    const u = this.units;
    const offset = (unit: number) => (unit >>> 10) << ((unit & (1 << 9)) >>> 6);
    let pos = offset(u[0] as number);
    for (const c of key) {
      if (c === 0) return undefined;
      pos ^= c;
      const unit = u[pos];
      if (unit === undefined) return undefined;
      // label: the low byte plus the leaf flag bit 31; a match needs bit 31 clear and byte == c
      if ((unit & 0x800000ff) >>> 0 !== c) return undefined;
      pos ^= offset(unit);
      if ((unit >>> 8) & 1) {
        const leaf = u[pos];
        return leaf === undefined ? undefined : leaf & 0x7fffffff;
      }
    }
    return undefined;
  }
}
