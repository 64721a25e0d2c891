/** An added token as tokenizer.json lists it. */
export interface AddedTokenSpec {
  id: number;
  content: string;
  single_word?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
  special?: boolean;
}

/** A piece of the input: an added token (its id), or normalized text for the pre-tokenizer. */
export interface Section {
  text: string;
  id?: number;
  /** The text starts the input (Metaspace's `prepend_scheme: "first"` looks at this). */
  atStart: boolean;
}

// Rust's `regex` crate classes, which the Rust AddedVocabulary uses for single_word / lstrip / rstrip.
const WORD_CHAR = /[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]/u;
const SPACE = /\p{White_Space}/u;

interface Node {
  children: Map<number, Node>;
  /** Index into the token list of a pattern ending here. */
  token: number;
}

/** Leftmost-longest matching of a set of strings (aho-corasick's MatchKind::LeftmostLongest). */
class Matcher {
  private readonly root: Node = { children: new Map(), token: -1 };
  /** The characters a pattern can start with: the scan jumps between them natively. */
  private readonly starts: RegExp;
  readonly empty: boolean;

  constructor(patterns: { text: string; token: number }[]) {
    for (const { text, token } of patterns) {
      if (text.length === 0) continue;
      let node = this.root;
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        let child = node.children.get(c);
        if (!child) {
          child = { children: new Map(), token: -1 };
          node.children.set(c, child);
        }
        node = child;
      }
      // The first pattern listed wins over an identical later one.
      if (node.token < 0) node.token = token;
    }
    this.empty = this.root.children.size === 0;
    const units = [...this.root.children.keys()].map((u) => `\\u${u.toString(16).padStart(4, "0")}`);
    this.starts = new RegExp(`[${units.join("")}]`, "g");
  }

  /** Non-overlapping leftmost-longest matches, as [start, end, token] triples. */
  *matches(text: string): Generator<[number, number, number]> {
    const n = text.length;
    let i = 0;
    while (i < n) {
      this.starts.lastIndex = i;
      if (this.starts.exec(text) === null) return;
      i = this.starts.lastIndex - 1;
      let node = this.root.children.get(text.charCodeAt(i)) as Node;
      let end = -1;
      let token = -1;
      let j = i + 1;
      for (;;) {
        if (node.token >= 0) {
          end = j;
          token = node.token;
        }
        if (j >= n) break;
        const child: Node | undefined = node.children.get(text.charCodeAt(j));
        if (!child) break;
        node = child;
        j++;
      }
      if (end < 0) {
        i++;
        continue;
      }
      yield [i, end, token];
      i = end;
    }
  }
}

/**
 * The Rust tokenizer's AddedVocabulary: added tokens are found in the raw text first (those with
 * `normalized: false`), the rest of the text is normalized, then tokens with `normalized: true`
 * are found in it by their normalized form. `single_word` tokens only match between non-word
 * characters; `lstrip` / `rstrip` tokens swallow the whitespace beside them.
 */
export class AddedVocabulary {
  private readonly tokens: Required<AddedTokenSpec>[];
  private readonly raw: Matcher;
  private readonly normalizedMatcher: Matcher;
  private readonly normalize: ((text: string) => string) | null;

  constructor(specs: AddedTokenSpec[], normalize: ((text: string) => string) | null) {
    this.normalize = normalize;
    this.tokens = specs.map((s) => ({
      id: s.id,
      content: s.content,
      single_word: s.single_word ?? false,
      lstrip: s.lstrip ?? false,
      rstrip: s.rstrip ?? false,
      special: s.special ?? false,
      normalized: s.normalized ?? !(s.special ?? false),
    }));
    // Rust lists special tokens before the others when it builds its matchers.
    const order = [...this.tokens.keys()].sort(
      (a, b) =>
        Number((this.tokens[b] as AddedTokenSpec).special) -
        Number((this.tokens[a] as AddedTokenSpec).special),
    );
    const raw: { text: string; token: number }[] = [];
    const norm: { text: string; token: number }[] = [];
    for (const i of order) {
      const t = this.tokens[i] as Required<AddedTokenSpec>;
      if (t.normalized) norm.push({ text: normalize ? normalize(t.content) : t.content, token: i });
      else raw.push({ text: t.content, token: i });
    }
    this.raw = new Matcher(raw);
    this.normalizedMatcher = new Matcher(norm);
  }

  /** Split a text into added tokens and normalized text sections (Rust's extract_and_normalize). */
  split(text: string): Section[] {
    const out: Section[] = [];
    for (const part of this.find(text, this.raw)) {
      if (part.id !== undefined) {
        out.push({ text: part.text, id: part.id, atStart: part.start === 0 });
        continue;
      }
      const normalized = this.normalize ? this.normalize(part.text) : part.text;
      for (const sub of this.find(normalized, this.normalizedMatcher)) {
        out.push({
          text: sub.text,
          ...(sub.id !== undefined ? { id: sub.id } : {}),
          atStart: part.start === 0 && sub.start === 0,
        });
      }
    }
    return out;
  }

  /** Rust's AddedVocabulary::find_matches: the matches, and the text between them, in order. */
  private find(sentence: string, matcher: Matcher): { text: string; start: number; id?: number }[] {
    if (sentence.length === 0) return [];
    if (matcher.empty) return [{ text: sentence, start: 0 }];
    const out: { text: string; start: number; id?: number }[] = [];
    let startOffset = 0;
    for (const [matchStart, matchStop, index] of matcher.matches(sentence)) {
      const token = this.tokens[index] as Required<AddedTokenSpec>;
      let start = matchStart;
      let stop = matchStop;
      if (token.single_word) {
        const startSpace = start === 0 || !endsWithWord(sentence, start);
        const stopSpace = stop === sentence.length || !startsWithWord(sentence, stop);
        if (!startSpace || !stopSpace) continue;
      }
      if (token.lstrip) {
        let s = start;
        while (s > 0) {
          const cp = codePointBefore(sentence, s);
          if (!SPACE.test(String.fromCodePoint(cp))) break;
          s -= cp > 0xffff ? 2 : 1;
        }
        // Whitespace an earlier token already swallowed stays with it.
        start = Math.max(s, startOffset);
      }
      if (token.rstrip) {
        while (stop < sentence.length) {
          const cp = sentence.codePointAt(stop) as number;
          if (!SPACE.test(String.fromCodePoint(cp))) break;
          stop += cp > 0xffff ? 2 : 1;
        }
      }
      if (startOffset < start) out.push({ text: sentence.slice(startOffset, start), start: startOffset });
      out.push({ text: sentence.slice(start, stop), start, id: token.id });
      startOffset = stop;
    }
    if (startOffset < sentence.length) out.push({ text: sentence.slice(startOffset), start: startOffset });
    return out;
  }
}

function codePointBefore(text: string, index: number): number {
  const low = text.charCodeAt(index - 1);
  if (low >= 0xdc00 && low <= 0xdfff && index >= 2) {
    const high = text.charCodeAt(index - 2);
    if (high >= 0xd800 && high <= 0xdbff) return (high - 0xd800) * 0x400 + (low - 0xdc00) + 0x10000;
  }
  return low;
}

function endsWithWord(text: string, end: number): boolean {
  return WORD_CHAR.test(String.fromCodePoint(codePointBefore(text, end)));
}

function startsWithWord(text: string, start: number): boolean {
  return WORD_CHAR.test(String.fromCodePoint(text.codePointAt(start) as number));
}
