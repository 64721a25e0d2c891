// scripts/export/quantize.py end to end on the fixture models: the int8 graph is written, flagserve
// loads it with dtype "int8", the quality report lands next to it, and its numbers hold the bounds
// documented for the fixtures (scripts/export/README.md). The engine is Python (onnx, onnxruntime):
// .ci/run builds its pinned venv and sets QUANTIZE_PYTHON; without it this file is skipped.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { FlagAutoModel } from "../src/models/auto.js";
import { FlagAutoReranker } from "../src/models/auto-reranker.js";
import { BGEM3FlagModel } from "../src/models/m3.js";
import { dot, type Float32Matrix } from "../src/runtime/matrix.js";
import { modelPath, ROOT, tempDir } from "./helpers.js";

const PYTHON = process.env.QUANTIZE_PYTHON;
const SCRIPT = join(ROOT, "scripts", "export", "quantize.py");
const TEXTS = [
  "what is a panda?",
  "The giant panda is a bear species endemic to China.",
  "",
  "def add(a, b): return a + b",
  "Zürich liegt am Zürichsee. 東京は日本の首都です。",
  "long ".repeat(300),
];

interface Report {
  variant: string;
  kind: string;
  method: { quantized_matmuls: number };
  quality: Record<string, Record<string, unknown>>;
  checks: Record<string, boolean>;
  passed: boolean;
}

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  return dot(a, b) / Math.sqrt(dot(a, a) * dot(b, b));
}

/** A number in the report (e.g. "dense.worst_cosine"), or a failed assertion. */
function figure(report: Report, path: string): number {
  const [group, key] = path.split(".") as [string, string];
  const v = report.quality[group]?.[key];
  assert.equal(typeof v, "number", `report quality.${path}`);
  return v as number;
}

function rows(m: Float32Matrix): Float32Array[] {
  return Array.from({ length: m.rows }, (_, i) => m.row(i));
}

describe("quantize.py --int8 on the fixtures", { skip: PYTHON ? false : "QUANTIZE_PYTHON not set" }, () => {
  const cleanups: (() => Promise<void>)[] = [];
  after(async () => {
    for (const c of cleanups) await c();
  });

  /** Quantizes a fixture into a fresh copy with the fixture bounds, --strict: exit 0 means they held. */
  async function quantize(fixture: string, bounds: string[]): Promise<{ dir: string; report: Report }> {
    const tmp = await tempDir("flagserve-quantize-");
    cleanups.push(tmp.cleanup);
    const dir = join(tmp.path, fixture);
    const run = spawnSync(
      PYTHON as string,
      [SCRIPT, modelPath(fixture), "--out", dir, "--strict", ...bounds],
      { encoding: "utf8", timeout: 600_000 },
    );
    assert.equal(run.status, 0, `quantize.py failed (${run.status}):\n${run.stderr}`);
    const graph = join(dir, "onnx", "model_int8.onnx");
    assert.ok(existsSync(graph), "onnx/model_int8.onnx written");
    // The graph really holds integer MatMuls (op types are plain strings in the protobuf).
    assert.ok(readFileSync(graph).includes("MatMulInteger"), "the variant uses MatMulInteger");
    const report = JSON.parse(readFileSync(join(dir, "onnx", "model_int8.quality.json"), "utf8")) as Report;
    assert.equal(report.variant, "onnx/model_int8.onnx");
    assert.equal(report.passed, true);
    assert.ok(report.method.quantized_matmuls > 0);
    // The fp32 graph stays beside it, untouched, for --dtype fp32.
    assert.ok(existsSync(join(dir, "onnx", "model.onnx")));
    return { dir, report };
  }

  test("FlagModel (tiny-bge): int8 embeddings within the report's cosine of fp32", async () => {
    const { dir, report } = await quantize("tiny-bge", ["--min-cosine", "0.9999", "--min-top10", "0.85"]);
    assert.equal(report.kind, "embedder");
    const worst = figure(report, "dense.worst_cosine");
    assert.ok(worst >= 0.9999 && figure(report, "dense.mean_cosine") >= worst);
    const top10 = figure(report, "dense.top10_overlap");
    assert.ok(top10 >= 0.85 && top10 <= 1);
    const opts = { modelClass: "encoder-only-base", poolingMethod: "cls", devices: "cpu" } as const;
    const fp32 = await FlagAutoModel.fromFinetuned(dir, { ...opts, dtype: "fp32" });
    const int8 = await FlagAutoModel.fromFinetuned(dir, { ...opts, dtype: "int8" });
    try {
      const a = rows((await fp32.encode(TEXTS)) as Float32Matrix);
      const b = rows((await int8.encode(TEXTS)) as Float32Matrix);
      let differs = false;
      a.forEach((v, i) => {
        const c = cosine(v, b[i] as Float32Array);
        assert.ok(c >= 0.9999, `text ${i}: cosine ${c}`);
        if (c < 1 - 1e-9 || v.some((x, j) => x !== (b[i] as Float32Array)[j])) differs = true;
      });
      assert.ok(differs, "the int8 graph is not the fp32 one under another name");
    } finally {
      await fp32.close();
      await int8.close();
    }
  });

  test("BGE-M3 (tiny-m3): dense, sparse and ColBERT measured, int8 served", async () => {
    const { dir, report } = await quantize("tiny-m3", ["--min-cosine", "0.9999", "--min-top10", "0.85"]);
    assert.equal(report.kind, "m3");
    assert.ok(figure(report, "sparse.score_pearson") >= 0.999);
    assert.ok(figure(report, "colbert.token_worst_cosine") >= 0.999);
    assert.ok(report.checks.sparse_top10_overlap && report.checks.colbert_top10_overlap);
    const m = await BGEM3FlagModel.load(dir, { devices: "cpu", dtype: "int8" });
    const ref = await BGEM3FlagModel.load(dir, { devices: "cpu", dtype: "fp32" });
    try {
      const o = await m.encode(TEXTS.slice(0, 2), { returnSparse: true, returnColbertVecs: true });
      const r = await ref.encode(TEXTS.slice(0, 2), { returnSparse: true, returnColbertVecs: true });
      const d = o.denseVecs as Float32Matrix;
      const rd = r.denseVecs as Float32Matrix;
      for (let i = 0; i < 2; i++) assert.ok(cosine(d.row(i), rd.row(i)) >= 0.9999);
      assert.ok(Array.isArray(o.lexicalWeights) && Object.keys(o.lexicalWeights[0] ?? {}).length > 0);
    } finally {
      await m.close();
      await ref.close();
    }
  });

  test("cross-encoder (tiny-reranker-bert): score correlation reported, int8 scores track fp32", async () => {
    const { dir, report } = await quantize("tiny-reranker-bert", ["--min-correlation", "0.98"]);
    assert.equal(report.kind, "reranker");
    assert.ok(figure(report, "scores.pearson") >= 0.98);
    assert.ok(figure(report, "scores.spearman") >= 0.98);
    const pairs: [string, string][] = TEXTS.slice(1).map((p) => [TEXTS[0] as string, p]);
    const opts = { modelClass: "encoder-only-base", devices: "cpu" } as const;
    const fp32 = await FlagAutoReranker.fromFinetuned(dir, { ...opts, dtype: "fp32" });
    const int8 = await FlagAutoReranker.fromFinetuned(dir, { ...opts, dtype: "int8" });
    try {
      const a = (await fp32.computeScore(pairs)) as number[];
      const b = (await int8.computeScore(pairs)) as number[];
      // The fixture's random logits span ~0.04 (see the report's logit_range): a tight absolute bound.
      a.forEach((x, i) => {
        assert.ok(Math.abs(x - (b[i] as number)) <= 0.003, `pair ${i}: ${x} vs ${b[i]}`);
      });
      assert.ok(
        a.some((x, i) => x !== b[i]),
        "the int8 graph is not the fp32 one",
      );
    } finally {
      await fp32.close();
      await int8.close();
    }
  });
});
