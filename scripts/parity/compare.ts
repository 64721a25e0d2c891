/**
 * Parity of flagserve's FlagModel (ONNX, fp32, mean pooling) with FlagEmbedding and
 * sentence-transformers on real all-MiniLM-L6-v2 weights. Reads the references reference.py wrote,
 * encodes the same texts at the same max length, and prints per reference: worst / mean cosine,
 * max abs diff, the worst text, and token-id agreement. Exits 1 if any fp32 worst cosine is below
 * the threshold. The int8 variant (onnx/model_quantized.onnx) is reported for information only.
 *
 *   node --import tsx scripts/parity/compare.ts [--model DIR] [--reference FILE] [--threshold 0.99999]
 *     [--batch-size 32] [--no-quantized] [--json OUT]
 *
 * Besides the gate (all texts), it prints the worst cosine over the texts whose token ids agree
 * with the reference, which separates tokenizer differences from numerical ones.
 */
import { readFile, writeFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { FlagAutoModel } from "../../src/models/auto.js";
import { FlagModel } from "../../src/models/encoder-only.js";
import type { Float32Matrix } from "../../src/runtime/matrix.js";
import { TextTokenizer } from "../../src/runtime/tokenizer.js";

interface Reference {
  max_length: number;
  call: string;
  ids: number[][];
  embeddings: number[][];
}

interface ReferenceFile {
  model: string;
  versions: Record<string, string>;
  texts: string[];
  references: Record<string, Reference>;
}

interface Figures {
  worstCosine: number;
  meanCosine: number;
  maxAbsDiff: number;
  worstIndex: number;
}

const ROOT = resolve(import.meta.dirname, "../..");
const { values: args } = parseArgs({
  options: {
    model: { type: "string", default: resolve(ROOT, ".cache/models/all-MiniLM-L6-v2") },
    reference: { type: "string", default: resolve(ROOT, ".cache/parity/reference.json") },
    threshold: { type: "string", default: "0.99999" },
    // reference.py's batch size; only the padding differs with another one.
    "batch-size": { type: "string", default: "32" },
    "no-quantized": { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const threshold = Number(args.threshold);
const batchSize = Number(args["batch-size"]);

function compareRows(got: Float32Matrix, want: number[][], skip: ReadonlySet<number> = new Set()): Figures {
  if (got.rows !== want.length) throw new Error(`got ${got.rows} rows, reference has ${want.length}`);
  let worstCosine = Number.POSITIVE_INFINITY;
  let worstIndex = -1;
  let sum = 0;
  let maxAbsDiff = 0;
  for (let i = 0; i < got.rows; i++) {
    if (skip.has(i)) continue;
    const a = got.row(i);
    const b = want[i] as number[];
    if (a.length !== b.length) throw new Error(`row ${i}: ${a.length} dims vs ${b.length}`);
    let dot = 0;
    let na = 0;
    let nb = 0;
    for (let k = 0; k < a.length; k++) {
      const x = a[k] as number;
      const y = b[k] as number;
      dot += x * y;
      na += x * x;
      nb += y * y;
      maxAbsDiff = Math.max(maxAbsDiff, Math.abs(x - y));
    }
    const cos = dot / (Math.sqrt(na) * Math.sqrt(nb));
    sum += cos;
    if (!(cos >= worstCosine)) {
      worstCosine = cos;
      worstIndex = i;
    }
  }
  return { worstCosine, meanCosine: sum / (got.rows - skip.size), maxAbsDiff, worstIndex };
}

function show(text: string, max = 100): string {
  const s = JSON.stringify(text);
  return s.length > max ? `${s.slice(0, max)}…" (${text.length} chars)` : s;
}

/** A cosine with its distance from 1, which toFixed alone rounds away near parity. */
function cos(c: number): string {
  return `${c.toFixed(9)} (1-cos ${(1 - c).toExponential(1)})`;
}

function sameIds(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function firstDifference(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

async function main(): Promise<number> {
  const ref = JSON.parse(await readFile(args.reference, "utf8")) as ReferenceFile;
  const { texts } = ref;
  console.log(`model     ${args.model}`);
  console.log(
    `reference ${ref.model}; ${Object.entries(ref.versions)
      .map(([k, v]) => `${k} ${v}`)
      .join(", ")}`,
  );
  console.log(`texts     ${texts.length}; threshold: worst cosine >= ${threshold} (fp32)\n`);

  const tokenizer = await TextTokenizer.fromDir(args.model);
  const model = await FlagModel.load(args.model, { poolingMethod: "mean", devices: "cpu" });
  const quantized = args["no-quantized"]
    ? undefined
    : await FlagModel.load(args.model, { poolingMethod: "mean", devices: "cpu", dtype: "q8" });
  const summary: Record<string, unknown> = {};
  let failed = false;
  try {
    for (const [name, r] of Object.entries(ref.references)) {
      const ids = texts.map((t) => tokenizer.encode(t, r.max_length).ids);
      const mismatched = ids.flatMap((got, i) => (sameIds(got, r.ids[i] as number[]) ? [] : [i]));
      const t0 = performance.now();
      const got = await model.encode(texts, { maxLength: r.max_length, batchSize });
      const ms = performance.now() - t0;
      const fig = compareRows(got, r.embeddings);
      const worstText = texts[fig.worstIndex] as string;
      const ok = fig.worstCosine >= threshold;
      failed ||= !ok;
      console.log(`== flagserve fp32 vs ${name} (max_length ${r.max_length}) ${ok ? "PASS" : "FAIL"}`);
      console.log(`   reference call  ${r.call}`);
      console.log(`   worst cosine    ${cos(fig.worstCosine)}  (#${fig.worstIndex} ${show(worstText)})`);
      console.log(`   mean cosine     ${cos(fig.meanCosine)}`);
      console.log(`   max abs diff    ${fig.maxAbsDiff.toExponential(3)}`);
      console.log(`   token ids       ${texts.length - mismatched.length}/${texts.length} texts identical`);
      const sameIdsFig = mismatched.length ? compareRows(got, r.embeddings, new Set(mismatched)) : fig;
      if (mismatched.length) {
        console.log(
          `   over the ${texts.length - mismatched.length} texts with identical ids: worst cosine ` +
            `${cos(sameIdsFig.worstCosine)} (#${sameIdsFig.worstIndex}), mean ${cos(sameIdsFig.meanCosine)}, ` +
            `max abs diff ${sameIdsFig.maxAbsDiff.toExponential(3)}`,
        );
        console.log("   texts whose ids differ (first 20):");
      }
      for (const i of mismatched.slice(0, 20)) {
        const a = ids[i] as number[];
        const b = r.ids[i] as number[];
        const at = firstDifference(a, b);
        console.log(
          `     #${i} ${show(texts[i] as string, 60)}: flagserve ${a.length} ids, reference ${b.length}; ` +
            `first difference at ${at}: [${a.slice(at, at + 5).join(",")}] vs [${b.slice(at, at + 5).join(",")}]`,
        );
      }
      console.log(`   encode time     ${ms.toFixed(0)} ms`);
      const entry: Record<string, unknown> = {
        maxLength: r.max_length,
        ...fig,
        worstText,
        tokenIdMismatches: mismatched,
        identicalIds: sameIdsFig,
        pass: ok,
      };
      if (quantized) {
        const qGot = await quantized.encode(texts, { maxLength: r.max_length, batchSize });
        const q = compareRows(qGot, r.embeddings);
        const qSame = compareRows(qGot, r.embeddings, new Set(mismatched));
        console.log(
          `   int8 (model_quantized.onnx, information only): worst cosine ${q.worstCosine.toFixed(6)} ` +
            `(#${q.worstIndex}), mean ${q.meanCosine.toFixed(6)}, max abs diff ${q.maxAbsDiff.toExponential(3)}; ` +
            `identical ids only: worst ${qSame.worstCosine.toFixed(6)} (#${qSame.worstIndex}), ` +
            `mean ${qSame.meanCosine.toFixed(6)}`,
        );
        entry.quantized = { all: q, identicalIds: qSame };
      }
      summary[name] = entry;
      console.log();
    }
    // FlagAutoModel with an explicit class must build the very same embedder.
    const auto = await FlagAutoModel.fromFinetuned(args.model, {
      modelClass: "encoder-only-base",
      poolingMethod: "mean",
      devices: "cpu",
    });
    try {
      const flagRef = ref.references.flagembedding;
      if (flagRef) {
        const a = compareRows((await auto.encode(texts, { batchSize })) as Float32Matrix, flagRef.embeddings);
        console.log(
          `FlagAutoModel.fromFinetuned(modelClass "encoder-only-base", mean) vs flagembedding: ` +
            `worst cosine ${cos(a.worstCosine)}, max abs diff ${a.maxAbsDiff.toExponential(3)}`,
        );
        summary.flagAutoModel = a;
        failed ||= a.worstCosine < threshold;
      }
    } finally {
      await auto.close();
    }
  } finally {
    await model.close();
    await quantized?.close();
  }
  if (args.json) await writeFile(args.json, `${JSON.stringify(summary, null, 2)}\n`);
  console.log(failed ? "\nFAIL: worst cosine below threshold" : "\nPASS");
  return failed ? 1 : 0;
}

process.exitCode = await main();
