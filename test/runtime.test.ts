import assert from "node:assert/strict";
import { cp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { FlagAutoModel } from "../src/models/auto.js";
import { FlagModel } from "../src/models/encoder-only.js";
import { formatInstruction } from "../src/models/instruction.js";
import { supportModelList, supportNativeBgeModelList } from "../src/models/mapping.js";
import { isFlagserveError } from "../src/runtime/errors.js";
import { Float32Matrix } from "../src/runtime/matrix.js";
import { chooseOnnxFile, parseDtype } from "../src/runtime/model-dir.js";
import { halfBitsToFloat32, parseDevice } from "../src/runtime/session.js";
import { assertClose, loadGolden, maxAbsDiff, modelPath, tempDir } from "./helpers.js";

const bge = loadGolden("tiny-bge");
const e5 = loadGolden("tiny-e5");
const corpusCase = (g: typeof bge) => g.cases.find((c: { name: string }) => c.name === "corpus_normalized");

describe("ONNX variants and layouts", () => {
  const open: FlagModel[] = [];
  after(() => Promise.all(open.map((m) => m.close())));

  test("dtype picks model_fp16.onnx / model_quantized.onnx and stays close to fp32", async () => {
    const want = corpusCase(bge);
    for (const [dtype, file, tol] of [
      ["fp16", "onnx/model_fp16.onnx", 5e-3],
      ["q8", "onnx/model_quantized.onnx", 0.15],
    ] as const) {
      const m = await FlagModel.load(modelPath("tiny-bge"), { dtype, poolingMethod: "cls" });
      open.push(m);
      assert.equal(m.loaded.onnx.file, file);
      const out = await m.encodeCorpus(want.inputs as string[]);
      const diff = maxAbsDiff(out.toArrays(), want.output);
      assert.ok(diff <= tol, `${dtype}: ${diff}`);
      assert.ok(diff > 0, `${dtype} must really run a different graph`);
    }
  });

  test("flat layout with external weights (model.onnx + model.onnx_data)", async () => {
    const m = await FlagModel.load(modelPath("tiny-e5"), { poolingMethod: "mean" });
    open.push(m);
    assert.equal(m.loaded.onnx.file, "model.onnx");
    assert.deepEqual(m.loaded.onnx.externalData, ["model.onnx_data"]);
  });

  test("a graph that already outputs sentence_embedding is used as is", async () => {
    const want = corpusCase(e5);
    // cls is requested on purpose: the pre-pooled output (mean) must win over it
    const m = await FlagModel.load(modelPath("tiny-e5-pooled"), { poolingMethod: "cls" });
    open.push(m);
    assertClose((await m.encodeCorpus(want.inputs as string[])).toArrays(), want.output, 1e-5, "pre-pooled");
  });

  test("several devices split the work and give the same result in input order", async () => {
    const want = corpusCase(bge);
    const m = await FlagModel.load(modelPath("tiny-bge"), {
      devices: ["cpu", "cpu", "cpu"],
      poolingMethod: "cls",
    });
    open.push(m);
    assert.equal(m.deviceCount, 3);
    assertClose(
      (await m.encodeCorpus(want.inputs as string[])).toArrays(),
      want.output,
      1e-5,
      "multi-device",
    );
  });

  test("empty input list gives a 0-row matrix of the model's width", async () => {
    const m = await FlagModel.load(modelPath("tiny-bge"), { truncateDim: 8 });
    open.push(m);
    const out = await m.encode([]);
    assert.equal(out.rows, 0);
    assert.equal(out.dims, 8);
    assert.equal(m.dimension, 32);
  });

  test("max length is capped at what the model accepts", async () => {
    const m = await FlagModel.load(modelPath("tiny-e5"), { passageMaxLength: 100000 });
    open.push(m);
    assert.equal(m.modelMaxLength, 512);
    assert.equal(m.effectiveMaxLength(100000), 512);
    const long = "word ".repeat(3000);
    const out = await m.encodeCorpus([long]);
    assert.equal(out.rows, 1);
  });
});

describe("errors name the problem", () => {
  test("missing directory, tokenizer, graph and corrupt files", async () => {
    await assert.rejects(
      FlagModel.load("./no/such/model"),
      /model directory \.\/no\/such\/model does not exist/,
    );
    const dir = await tempDir();
    try {
      await cp(modelPath("tiny-bge"), join(dir.path, "m"), { recursive: true });
      await writeFile(join(dir.path, "m", "onnx", "model.onnx"), "not a protobuf");
      await assert.rejects(FlagModel.load(join(dir.path, "m")), (e) => {
        assert.ok(isFlagserveError(e, "model_files"));
        assert.match(e.message, /cannot load ONNX model .*model\.onnx/);
        return true;
      });
      await writeFile(join(dir.path, "m", "tokenizer.json"), "{ broken");
      await assert.rejects(FlagModel.load(join(dir.path, "m")), /tokenizer\.json is not valid JSON/);
      await assert.rejects(
        FlagModel.load(modelPath("tiny-bge"), { dtype: "q4" }),
        /the model has no q4 graph \(onnx\/model_q4\.onnx or model_q4\.onnx\); ONNX files present: onnx\/model\.onnx/,
      );
    } finally {
      await dir.cleanup();
    }
  });

  test("unknown names list the known ones; modelClass opens other models", async () => {
    await assert.rejects(FlagAutoModel.fromFinetuned(modelPath("tiny-bge")), (e) => {
      assert.ok(isFlagserveError(e, "unknown_model"));
      assert.match(e.message, /"tiny-bge" is not in the model mapping/);
      assert.match(e.message, /bge-large-en-v1\.5/);
      return true;
    });
    const m = await FlagAutoModel.fromFinetuned(modelPath("tiny-bge"), { modelClass: "encoder-only-base" });
    assert.equal(m.poolingMethod, "cls");
    await m.close();
    // A decoder-only class pools the last token of whatever graph it is given, as FlagEmbedding does.
    const d = await FlagAutoModel.fromFinetuned(modelPath("tiny-bge"), { modelClass: "decoder-only-base" });
    assert.equal(d.poolingMethod, "last_token");
    await d.close();
    await assert.rejects(
      FlagAutoModel.fromFinetuned(modelPath("tiny-bge"), { modelClass: "nope" as never }),
      /unknown modelClass/,
    );
  });

  test("cuda without the CUDA provider is a clear device error", async () => {
    await assert.rejects(FlagModel.load(modelPath("tiny-bge"), { devices: "cuda:0" }), (e) => {
      assert.ok(isFlagserveError(e, "device"));
      assert.match(e.message, /cuda:0/);
      return true;
    });
    assert.throws(() => parseDevice("tpu"), /unknown device "tpu"/);
  });
});

describe("model mapping", () => {
  test("every name of the seed's Supported Models list is mapped", () => {
    const seed = [
      "bge-m3",
      "bge-large-en-v1.5",
      "bge-base-en-v1.5",
      "bge-small-en-v1.5",
      "bge-large-zh-v1.5",
      "bge-multilingual-gemma2",
      "bge-en-icl",
      "e5-mistral-7b-instruct",
      "e5-large-v2",
      "e5-base-v2",
      "multilingual-e5-large-instruct",
      "multilingual-e5-large",
      "gte-Qwen2-7B-instruct",
      "gte-Qwen2-1.5B-instruct",
      "gte-large-en-v1.5",
      "gte-base-en-v1.5",
      "gte-multilingual-base",
    ];
    for (const name of seed) assert.ok(supportModelList().includes(name), name);
    assert.ok(supportNativeBgeModelList().every((n) => n.startsWith("bge-")));
    const icl = FlagAutoModel.resolveConfig("BAAI/bge-en-icl");
    assert.deepEqual(
      [icl.modelClass, icl.poolingMethod, icl.queryInstructionFormat],
      ["decoder-only-icl", "last_token", "<instruct>{}\n<query>{}"],
    );
    assert.equal(FlagAutoModel.resolveConfig("/models/e5-large-v2/checkpoint-500").poolingMethod, "mean");
    assert.equal(
      FlagAutoModel.resolveConfig("multilingual-e5-large-instruct").queryInstructionFormat,
      "Instruct: {}\nQuery: {}",
    );
  });
});

describe("small pieces", () => {
  test("instruction formats follow Python str.format", () => {
    assert.equal(formatInstruction("{}{}", "a: ", "b"), "a: b");
    assert.equal(formatInstruction("Instruct: {}\\nQuery: {}", "x", "y"), "Instruct: x\nQuery: y");
    assert.equal(formatInstruction("{1} {0} {{}}", "a", "b"), "b a {}");
    assert.throws(() => formatInstruction("{}{}{}", "a", "b"), /unusable field/);
  });

  test("dtype aliases and ONNX choice", () => {
    assert.equal(parseDtype("float16"), "fp16");
    assert.equal(parseDtype("quantized"), "q8");
    assert.throws(() => parseDtype("fp8"), /unknown dtype/);
    const files = ["onnx/model.onnx", "onnx/model_fp16.onnx", "onnx/model_fp16.onnx_data", "model.onnx"];
    assert.equal(chooseOnnxFile(files, "auto", "cpu").file, "onnx/model.onnx");
    assert.deepEqual(chooseOnnxFile(files, "auto", "cuda"), {
      file: "onnx/model_fp16.onnx",
      dtype: "fp16",
      externalData: ["onnx/model_fp16.onnx_data"],
    });
  });

  test("half floats decode exactly", () => {
    assert.deepEqual(Array.from(halfBitsToFloat32(new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7c00, 0]))), [
      1,
      -2,
      2 ** -24,
      Number.POSITIVE_INFINITY,
      0,
    ]);
  });

  test("matrix helpers", () => {
    const m = Float32Matrix.fromRows([
      [3, 4, 0],
      [0, 0, 0],
    ]);
    m.normalizeRows();
    assert.deepEqual(Array.from(m.row(0)), [0.6000000238418579, 0.800000011920929, 0]);
    assert.deepEqual(Array.from(m.row(1)), [0, 0, 0]);
    assert.equal(m.truncateColumns(2).dims, 2);
    assert.throws(() => m.row(2), /out of range/);
  });
});
