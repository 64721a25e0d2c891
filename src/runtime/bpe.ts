import type { JsonObject } from "./files.js";

/**
 * The BPE model of the Rust `tokenizers` library (what transformers' fast tokenizers run),
 * reproduced step for step: characters (with `continuing_subword_prefix` / `end_of_word_suffix`)
 * become symbols, unknown ones byte tokens (`byte_fallback`) or one `unk` per run (`fuse_unk`),
 * then the merge with the lowest rank, leftmost first, is applied until none is left, with the
 * Rust queue's rule for stale entries. `ignore_merges` returns a word found whole in the vocabulary.
 *
 * Unlike @huggingface/tokenizers' BPE it works on ids (no string keys per merge), falls back to
 * bytes before merging as Rust does, and only looks up the model's own vocabulary (added tokens
 * are matched before the model sees the text).
 *
 * Long words (SentencePiece-style BPE has no pre-tokenizer, so a whole text is one word) are cut
 * where no symbol can ever span the cut: between two characters that are adjacent in no vocabulary
 * token. Every symbol is a vocabulary token covering the characters it merged, so the two sides
 * merge independently and the pieces are exactly those of the whole word; each side is small and
 * cached, and a head of the word can be tokenized without the rest.
 */
export class BpeModel {
  /** The model's vocabulary (tokenizer.json's own object: building a Map of it costs a lot for large vocabularies). */
  private readonly vocab: Record<string, number>;
  /** Id to token, built on first use (decoding), as a large vocabulary takes a while to walk. */
  private vocabR: string[] | undefined;
  private sizeMemo: number | undefined;
  readonly unkId: number | undefined;
  private readonly prefix: string;
  private readonly suffix: string;
  private readonly fuseUnk: boolean;
  private readonly byteFallback: boolean;
  private readonly ignoreMerges: boolean;
  /** Ids of the tokens `<0x00>` ... `<0xFF>`, -1 where absent. */
  private readonly byteIds = new Int32Array(256).fill(-1);
  /** Merge rank by pair of ids. */
  private readonly ranks: PairTable;
  /** The token a merge produces, by rank. */
  private readonly mergeResult: Int32Array;
  /** Code point pairs (a * 0x110000 + b) adjacent inside some vocabulary token; null: never cut words. */
  private readonly joinable: Set<number> | null;
  /** Whether two unknown characters in a row could fuse into one unk symbol. */
  private readonly unkCanFuse: boolean;
  /** Whether an unknown character is dropped (no byte tokens for it, no unk token). */
  private readonly dropsUnknown: boolean;
  private readonly cache = new Map<string, number[]>();
  /** Id of each BMP character as a token (ABSENT: not in the vocabulary), filled as characters are met. */
  private readonly charIds = new Int32Array(0x10000).fill(UNSEEN);
  // Work arrays of mergeAll, grown as needed and reused.
  private next = new Int32Array(256);
  private prev = new Int32Array(256);
  private alive = new Uint8Array(256);
  private readonly heap = new MinHeap();

  constructor(model: JsonObject) {
    this.vocab = (model.vocab ?? {}) as Record<string, number>;

    const unk = typeof model.unk_token === "string" ? model.unk_token : undefined;
    this.unkId = unk === undefined ? undefined : this.get(unk);
    this.prefix = typeof model.continuing_subword_prefix === "string" ? model.continuing_subword_prefix : "";
    this.suffix = typeof model.end_of_word_suffix === "string" ? model.end_of_word_suffix : "";
    this.fuseUnk = model.fuse_unk === true;
    this.byteFallback = model.byte_fallback === true;
    this.ignoreMerges = model.ignore_merges === true;
    for (let b = 0; b < 256; b++) {
      const id = this.get(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
      if (id !== undefined) this.byteIds[b] = id;
    }
    if (typeof model.dropout === "number" && model.dropout > 0) {
      throw new Error("BPE dropout is not supported (it is random; inference tokenizers do not use it)");
    }

    const merges = Array.isArray(model.merges) ? (model.merges as unknown[]) : [];
    this.mergeResult = new Int32Array(merges.length);
    this.ranks = new PairTable(merges.length);
    // Byte and unk symbols do not stand for their token's text: merges of them forbid cutting words.
    const byteOrUnk = new Set<number>(this.byteIds);
    if (this.unkId !== undefined) byteOrUnk.add(this.unkId);
    let mergesTouchSpecial = false;
    const prefixLen = this.prefix.length;
    let rank = 0;
    for (const merge of merges) {
      const pair = mergePair(merge);
      if (pair === null) continue;
      const [a, b] = pair;
      const aId = this.get(a);
      const bId = this.get(b);
      const newId = this.get(a + b.slice(prefixLen));
      if (aId === undefined || bId === undefined || newId === undefined) {
        throw new Error(`BPE merge "${a} ${b}" uses a token missing from the vocabulary`);
      }
      this.ranks.set(aId, bId, rank);
      this.mergeResult[rank] = newId;
      if (byteOrUnk.has(aId) || byteOrUnk.has(bId)) mergesTouchSpecial = true;
      rank++;
    }

    // Cutting words needs symbols whose text is the characters they cover: no prefix/suffix
    // decoration, and no merges of byte or unk symbols (whose text is not the character).
    const cuttable = !this.prefix && !this.suffix && !mergesTouchSpecial;
    this.joinable = cuttable ? adjacentPairs(Object.keys(this.vocab)) : null;
    const bytesComplete = this.byteFallback && !this.byteIds.includes(-1);
    this.unkCanFuse = this.fuseUnk && this.unkId !== undefined && !bytesComplete;
    this.dropsUnknown = this.unkId === undefined && !bytesComplete;
  }

  /** Id of a token of the model's own vocabulary. */
  get(token: string): number | undefined {
    // One lookup; inherited properties ("constructor", "__proto__") are not numbers.
    const id = this.vocab[token];
    return typeof id === "number" ? id : undefined;
  }

  /** Token of an id of the model's own vocabulary. */
  token(id: number): string | undefined {
    if (this.vocabR === undefined) {
      this.vocabR = [];
      for (const token in this.vocab) this.vocabR[this.vocab[token] as number] = token;
    }
    return this.vocabR[id];
  }

  /** Number of tokens in the vocabulary. */
  get size(): number {
    this.sizeMemo ??= Object.keys(this.vocab).length;
    return this.sizeMemo;
  }

  /**
   * Append the ids of one pre-tokenized word to `out`. A long word is cut where that is exact and
   * its pieces tokenized in order, stopping once `out` holds `limit` ids (it may then hold more:
   * the caller keeps the first `limit`).
   */
  tokenize(word: string, out: number[], limit = Number.POSITIVE_INFINITY): void {
    if (word.length === 0) return;
    if (this.ignoreMerges) {
      const id = this.get(word);
      if (id !== undefined) {
        out.push(id);
        return;
      }
    }
    if (this.joinable === null || word.length <= MIN_CUT_LENGTH) {
      this.tokenizeCached(word, out);
      return;
    }
    let start = 0;
    let prev = -1;
    for (let i = 0; i < word.length; ) {
      const cp = word.codePointAt(i) as number;
      // Cutting at every exact place keeps pieces short, so most come from the cache.
      if (prev >= 0 && this.canCut(prev, cp)) {
        this.tokenizeCached(word.slice(start, i), out);
        if (out.length >= limit) return;
        start = i;
      }
      prev = cp;
      i += cp > 0xffff ? 2 : 1;
    }
    this.tokenizeCached(word.slice(start), out);
  }

  private canCut(left: number, right: number): boolean {
    if ((this.joinable as Set<number>).has(left * 0x110000 + right)) return false;
    if (!this.unkCanFuse && !this.dropsUnknown) return true;
    const leftKnown = this.get(String.fromCodePoint(left)) !== undefined;
    const rightKnown = this.get(String.fromCodePoint(right)) !== undefined;
    // Two unknown characters would fuse into one unk symbol across the cut; a dropped unknown
    // character would make its neighbours adjacent.
    if (this.dropsUnknown) return leftKnown && rightKnown;
    return leftKnown || rightKnown;
  }

  private tokenizeCached(word: string, out: number[]): void {
    let ids = this.cache.get(word);
    if (ids === undefined) {
      ids = this.mergeWord(word);
      if (word.length < CACHE_WORD_LENGTH) {
        if (this.cache.size >= CACHE_CAPACITY) this.cache.clear();
        this.cache.set(word, ids);
      }
    }
    for (const id of ids) out.push(id);
  }

  /** Rust's `BPE::merge_word` + `Word::merge_all` (without dropout). */
  private mergeWord(word: string): number[] {
    const symbols: number[] = [];
    let unkPending = -1;
    let first = true;
    for (let i = 0; i < word.length; ) {
      const cp = word.codePointAt(i) as number;
      i += cp > 0xffff ? 2 : 1;
      let s: string;
      let id: number | undefined;
      if (!this.prefix && !this.suffix && cp < 0x10000) {
        // Characters are looked up often: keep their ids in a table.
        let known = this.charIds[cp] as number;
        if (known === UNSEEN) {
          known = this.get(String.fromCharCode(cp)) ?? ABSENT;
          this.charIds[cp] = known;
        }
        if (known !== ABSENT) id = known;
        s = id === undefined ? String.fromCharCode(cp) : "";
      } else {
        s = String.fromCodePoint(cp);
        if (!first && this.prefix) s = this.prefix + s;
        if (i >= word.length && this.suffix) s += this.suffix;
        id = this.get(s);
      }
      first = false;
      if (id !== undefined) {
        if (unkPending >= 0) {
          symbols.push(unkPending);
          unkPending = -1;
        }
        symbols.push(id);
        continue;
      }
      if (this.byteFallback) {
        const bytes = Buffer.from(s, "utf8");
        let all = true;
        for (const b of bytes) if ((this.byteIds[b] as number) < 0) all = false;
        if (all) {
          // As in Rust, a pending unk is not flushed before byte tokens.
          for (const b of bytes) symbols.push(this.byteIds[b] as number);
          continue;
        }
      }
      if (this.unkId !== undefined) {
        if (unkPending >= 0 && !this.fuseUnk) symbols.push(unkPending);
        unkPending = this.unkId;
      }
      // Without an unk token the character is dropped, as in Rust.
    }
    if (unkPending >= 0) symbols.push(unkPending);
    if (symbols.length < 2) return symbols;
    return this.mergeAll(symbols);
  }

  private mergeAll(ids: number[]): number[] {
    const n = ids.length;
    if (n >= POS_LIMIT) throw new Error(`a word of ${n} symbols is too long for BPE`);
    if (this.next.length < n) {
      const size = 2 ** Math.ceil(Math.log2(n));
      this.next = new Int32Array(size);
      this.prev = new Int32Array(size);
      this.alive = new Uint8Array(size);
    }
    const { next, prev, alive, heap } = this;
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
      alive[i] = 1;
    }
    heap.clear();
    for (let i = 0; i + 1 < n; i++) {
      const rank = this.ranks.get(ids[i] as number, ids[i + 1] as number);
      if (rank >= 0) heap.push(rank * POS_LIMIT + i);
    }
    while (heap.size > 0) {
      const top = heap.pop();
      const rank = Math.floor(top / POS_LIMIT);
      const pos = top - rank * POS_LIMIT;
      if (!alive[pos]) continue;
      const right = next[pos] as number;
      if (right < 0) continue;
      // A stale entry: Rust only checks that the pair still produces the same token.
      const current = this.ranks.get(ids[pos] as number, ids[right] as number);
      if (current < 0 || this.mergeResult[current] !== this.mergeResult[rank]) continue;
      ids[pos] = this.mergeResult[rank] as number;
      alive[right] = 0;
      const after = next[right] as number;
      next[pos] = after;
      if (after >= 0) prev[after] = pos;
      const before = prev[pos] as number;
      if (before >= 0) {
        const r = this.ranks.get(ids[before] as number, ids[pos] as number);
        if (r >= 0) heap.push(r * POS_LIMIT + before);
      }
      if (after >= 0) {
        const r = this.ranks.get(ids[pos] as number, ids[after] as number);
        if (r >= 0) heap.push(r * POS_LIMIT + pos);
      }
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i] as number) out.push(ids[i] as number);
    return out;
  }
}

/** Words longer than this (UTF-16 units) are cut where that is exact. */
const MIN_CUT_LENGTH = 48;
const CACHE_WORD_LENGTH = 256;
const CACHE_CAPACITY = 10_000;
/** Heap entries are rank * POS_LIMIT + position, exact in a double for ranks below 2^27. */
const POS_LIMIT = 2 ** 26;
const UNSEEN = -2;
const ABSENT = -1;

/** One tokenizer.json merge: a `["a", "b"]` pair, or a legacy `"a b"` string (exactly one space); null for a `#version` line. */
function mergePair(m: unknown): [string, string] | null {
  if (Array.isArray(m) && m.length === 2) return m as [string, string];
  if (typeof m === "string") {
    if (m.startsWith("#version")) return null;
    const parts = m.split(" ");
    if (parts.length === 2) return parts as [string, string];
  }
  throw new Error(`BPE merge ${JSON.stringify(m)} is not two tokens`);
}

function adjacentPairs(tokens: Iterable<string>): Set<number> {
  const pairs = new Set<number>();
  for (const token of tokens) {
    let prev = -1;
    for (const ch of token) {
      const cp = ch.codePointAt(0) as number;
      if (prev >= 0) pairs.add(prev * 0x110000 + cp);
      prev = cp;
    }
  }
  return pairs;
}

/** An open-addressing hash table from a pair of ids to a non-negative number (-1: absent). */
class PairTable {
  private readonly left: Int32Array;
  private readonly right: Int32Array;
  private readonly values: Int32Array;
  private readonly mask: number;

  constructor(expected: number) {
    let size = 16;
    while (size < expected * 2) size *= 2;
    this.left = new Int32Array(size).fill(-1);
    this.right = new Int32Array(size);
    this.values = new Int32Array(size);
    this.mask = size - 1;
  }

  private slot(a: number, b: number): number {
    return (Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca77)) & this.mask;
  }

  /** Set (or overwrite: Rust keeps the last of duplicate merges) the value of a pair. */
  set(a: number, b: number, value: number): void {
    let i = this.slot(a, b);
    for (;;) {
      const l = this.left[i] as number;
      if (l === -1 || (l === a && this.right[i] === b)) break;
      i = (i + 1) & this.mask;
    }
    this.left[i] = a;
    this.right[i] = b;
    this.values[i] = value;
  }

  get(a: number, b: number): number {
    let i = this.slot(a, b);
    for (;;) {
      const l = this.left[i] as number;
      if (l === -1) return -1;
      if (l === a && this.right[i] === b) return this.values[i] as number;
      i = (i + 1) & this.mask;
    }
  }
}

/** A binary min-heap of numbers. */
class MinHeap {
  private readonly items: number[] = [];

  get size(): number {
    return this.items.length;
  }

  clear(): void {
    this.items.length = 0;
  }

  push(value: number): void {
    const a = this.items;
    let i = a.length;
    a.push(value);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = a[parent] as number;
      if (p <= value) break;
      a[i] = p;
      i = parent;
    }
    a[i] = value;
  }

  pop(): number {
    const a = this.items;
    const top = a[0] as number;
    const last = a.pop() as number;
    const n = a.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && (a[r] as number) < (a[l] as number) ? r : l;
        if ((a[c] as number) >= last) break;
        a[i] = a[c] as number;
        i = c;
      }
      a[i] = last;
    }
    return top;
  }
}
