import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { Embedder } from "../src/models/auto.js";
import { FlagAutoModel } from "../src/models/auto.js";
import { Float32Matrix } from "../src/runtime/matrix.js";
import { TextTokenizer } from "../src/runtime/tokenizer.js";
import { assertClose, type Golden, loadGolden, modelPath, namedModelDir } from "./helpers.js";

const TOLERANCE = 1e-5;

for (const fixture of ["tiny-bge", "tiny-e5"]) {
  const golden: Golden = loadGolden(fixture);

  describe(`${fixture}: tokenizer matches transformers`, () => {
    let tok: TextTokenizer;
    before(async () => {
      tok = await TextTokenizer.fromDir(modelPath(fixture));
    });
    for (const key of ["tokens", "tokens_short"]) {
      test(`${key} (max_length ${golden[key].max_length})`, () => {
        const { texts, input_ids, max_length } = golden[key];
        texts.forEach((text: string, i: number) => {
          assert.deepEqual(tok.encode(text, max_length).ids, input_ids[i], `text ${JSON.stringify(text)}`);
        });
      });
    }
  });

  describe(`${fixture}: FlagAutoModel("${golden.mapped_name}") matches FlagEmbedding`, () => {
    let link: { path: string; cleanup: () => Promise<void> };
    const models: Embedder[] = [];
    before(async () => {
      link = await namedModelDir(fixture, golden.mapped_name);
    });
    after(async () => {
      await Promise.all(models.map((m) => m.close()));
      await link.cleanup();
    });

    test("mapping picks the reference's pooling", () => {
      assert.equal(FlagAutoModel.resolveConfig(link.path).poolingMethod, golden.pooling);
    });

    for (const c of golden.cases) {
      test(`${c.name}: ${c.method}`, async () => {
        const model = await FlagAutoModel.fromFinetuned(link.path, { ...c.init, devices: "cpu" });
        models.push(model);
        assert.equal(model.poolingMethod, golden.pooling);
        // biome-ignore lint/suspicious/noExplicitAny: the method name comes from the golden file
        const out = await (model as any)[c.method](c.inputs, c.call);
        if (typeof c.inputs === "string") {
          assert.ok(out instanceof Float32Array);
          assertClose(out, c.output, TOLERANCE, c.name);
        } else {
          assert.ok(out instanceof Float32Matrix);
          assertClose(out.toArrays(), c.output, TOLERANCE, c.name);
        }
      });
    }
  });
}
