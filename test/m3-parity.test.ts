import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { FlagAutoModel } from "../src/models/auto.js";
import { BGEM3FlagModel, type LexicalWeights, type M3Output, type M3Single } from "../src/models/m3.js";
import { Float32Matrix } from "../src/runtime/matrix.js";
import { TextTokenizer } from "../src/runtime/tokenizer.js";
import { assertClose, type Golden, loadGolden, modelPath, namedModelDir } from "./helpers.js";

const golden: Golden = loadGolden("tiny-m3");
const TOL = 1e-5;

function assertWeights(actual: LexicalWeights, expected: Record<string, number>, what: string): void {
  assert.deepEqual(Object.keys(actual).sort(), Object.keys(expected).sort(), `${what}: same token ids`);
  for (const [k, v] of Object.entries(expected)) {
    assert.ok(Math.abs((actual[k] as number) - v) <= TOL, `${what}: token ${k} ${actual[k]} vs ${v}`);
  }
}

function assertM3(actual: M3Output | M3Single, expected: Golden, what: string): void {
  for (const key of ["dense_vecs", "lexical_weights", "colbert_vecs"]) {
    if (expected[key] === null) {
      assert.equal(
        actual[
          key === "dense_vecs" ? "denseVecs" : key === "lexical_weights" ? "lexicalWeights" : "colbertVecs"
        ],
        null,
        `${what}: ${key} must be null`,
      );
    }
  }
  if (expected.dense_vecs !== null) {
    const d = actual.denseVecs as Float32Matrix | Float32Array;
    assertClose(d instanceof Float32Matrix ? d.toArrays() : d, expected.dense_vecs, TOL, `${what} dense`);
  }
  if (expected.lexical_weights !== null) {
    const lw = actual.lexicalWeights as LexicalWeights | LexicalWeights[];
    if (Array.isArray(expected.lexical_weights)) {
      (lw as LexicalWeights[]).forEach((w, i) => {
        assertWeights(w, expected.lexical_weights[i], `${what} sparse ${i}`);
      });
      assert.equal((lw as LexicalWeights[]).length, expected.lexical_weights.length);
    } else {
      assertWeights(lw as LexicalWeights, expected.lexical_weights, `${what} sparse`);
    }
  }
  if (expected.colbert_vecs !== null) {
    const cv = actual.colbertVecs as Float32Matrix | Float32Matrix[];
    if (cv instanceof Float32Matrix) {
      assertClose(cv.toArrays(), expected.colbert_vecs, TOL, `${what} colbert`);
    } else {
      assert.equal(cv.length, expected.colbert_vecs.length);
      cv.forEach((m, i) => {
        assertClose(m.toArrays(), expected.colbert_vecs[i], TOL, `${what} colbert ${i}`);
      });
    }
  }
}

test("tiny-m3: tokenizer matches transformers", async () => {
  const tok = await TextTokenizer.fromDir(modelPath("tiny-m3"));
  for (const key of ["tokens", "tokens_short"]) {
    const { texts, input_ids, max_length } = golden[key];
    texts.forEach((t: string, i: number) => {
      assert.deepEqual(tok.encode(t, max_length).ids, input_ids[i], JSON.stringify(t));
    });
  }
});

describe(`tiny-m3: FlagAutoModel("${golden.mapped_name}") matches BGEM3FlagModel`, () => {
  let link: { path: string; cleanup: () => Promise<void> };
  const open: BGEM3FlagModel[] = [];
  before(async () => {
    link = await namedModelDir("tiny-m3", golden.mapped_name);
  });
  after(async () => {
    await Promise.all(open.map((m) => m.close()));
    await link.cleanup();
  });

  for (const c of golden.cases) {
    test(`${c.name}: ${c.method}`, async () => {
      const model = await FlagAutoModel.fromFinetuned(link.path, { ...c.init, devices: "cpu" });
      assert.ok(model instanceof BGEM3FlagModel);
      open.push(model);
      const toMatrix = (x: number[][]) => Float32Matrix.fromRows(x);
      switch (c.method) {
        case "encode":
        case "encodeQueries":
        case "encodeCorpus": {
          // biome-ignore lint/suspicious/noExplicitAny: method name from the golden file
          const out = await (model as any)[c.method](c.inputs, c.call);
          assertM3(out, c.output, c.name);
          break;
        }
        case "computeLexicalMatchingScore": {
          const out = model.computeLexicalMatchingScore(c.inputs[0], c.inputs[1]);
          if (typeof c.output === "number") assert.ok(Math.abs((out as number) - c.output) <= TOL);
          else assertClose(out as unknown as number[][], c.output, TOL, c.name);
          break;
        }
        case "colbertScore": {
          const out = model.colbertScore(toMatrix(c.inputs[0]), toMatrix(c.inputs[1]));
          assert.ok(Math.abs(out - c.output) <= TOL, `${out} vs ${c.output}`);
          break;
        }
        case "convertIdToToken": {
          assert.deepEqual(model.convertIdToToken(c.inputs), c.output);
          break;
        }
        case "computeScore": {
          const out = await model.computeScore(c.inputs, c.call);
          for (const [mode, want] of Object.entries(c.output)) {
            const got = (out as unknown as Record<string, number | number[]>)[mode];
            if (typeof want === "number")
              assert.ok(Math.abs((got as number) - want) <= TOL, `${mode}: ${got} vs ${want}`);
            else assertClose(got as number[], want as number[], TOL, `${c.name} ${mode}`);
          }
          break;
        }
        default:
          assert.fail(`unknown method ${c.method}`);
      }
    });
  }

  test("a model without the M3 heads is refused with a clear error", async () => {
    await assert.rejects(
      BGEM3FlagModel.load(modelPath("tiny-e5")),
      /not a flagserve BGE-M3 export: its graph has no "sparse_weights" output.*scripts\/export\/m3\.py/,
    );
  });
});
