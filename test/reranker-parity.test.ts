import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { FlagAutoReranker, type Reranker } from "../src/models/auto-reranker.js";
import { encodePair } from "../src/models/reranker.js";
import { isFlagserveError } from "../src/runtime/errors.js";
import { TextTokenizer } from "../src/runtime/tokenizer.js";
import { assertClose, type Golden, loadGolden, modelPath, namedModelDir } from "./helpers.js";

for (const fixture of ["tiny-reranker-bert", "tiny-reranker-xlmr"]) {
  const golden: Golden = loadGolden(fixture);

  test(`${fixture}: pair token ids equal FlagReranker's, truncation included`, async () => {
    const tok = await TextTokenizer.fromDir(modelPath(fixture));
    assert.equal(tok.numSpecialTokens(true), golden.num_special_tokens_pair);
    for (const setting of golden.pair_tokens) {
      setting.pairs.forEach(([q, p]: [string, string], i: number) => {
        const enc = encodePair(tok, q, p, setting.query_max_length, setting.max_length);
        assert.deepEqual(
          enc.ids,
          setting.input_ids[i],
          `${setting.max_length}/${setting.query_max_length} pair ${i}`,
        );
        if (setting.token_type_ids) assert.deepEqual(enc.typeIds, setting.token_type_ids[i]);
      });
    }
  });

  describe(`${fixture}: FlagAutoReranker("${golden.mapped_name}") matches FlagEmbedding`, () => {
    let link: { path: string; cleanup: () => Promise<void> };
    const open: Reranker[] = [];
    before(async () => {
      link = await namedModelDir(fixture, golden.mapped_name);
    });
    after(async () => {
      await Promise.all(open.map((m) => m.close()));
      await link.cleanup();
    });
    for (const c of golden.cases) {
      test(c.name, async () => {
        const model = await FlagAutoReranker.fromFinetuned(link.path, { ...c.init, devices: "cpu" });
        open.push(model);
        const scores = await model.computeScore(c.inputs, c.call);
        assertClose(scores, c.output, 1e-5, c.name);
      });
    }
  });
}

test("reranker mapping: every FlagEmbedding reranker name, classes, clear errors", async () => {
  const expected: Record<string, string> = {
    "bge-reranker-base": "encoder-only-base",
    "bge-reranker-large": "encoder-only-base",
    "bge-reranker-v2-m3": "encoder-only-base",
    "bge-reranker-v2-gemma": "decoder-only-base",
    "bge-reranker-v2-minicpm-layerwise": "decoder-only-layerwise",
    "bge-reranker-v2.5-gemma2-lightweight": "decoder-only-lightweight",
  };
  for (const [name, cls] of Object.entries(expected)) {
    assert.equal(FlagAutoReranker.resolveConfig(`BAAI/${name}`).modelClass, cls);
  }
  // An LLM reranker class needs the graph contract of scripts/export/reranker_llm.py.
  await assert.rejects(
    FlagAutoReranker.fromFinetuned(modelPath("tiny-reranker-bert"), { modelClass: "decoder-only-base" }),
    (e) => {
      assert.ok(isFlagserveError(e, "model_files"));
      assert.match(e.message, /no flagserve\.json.*reranker_llm\.py/);
      return true;
    },
  );
  await assert.rejects(
    FlagAutoReranker.fromFinetuned(modelPath("tiny-reranker-bert")),
    /not in the model mapping.*bge-reranker-large/,
  );
  const m = await FlagAutoReranker.fromFinetuned(modelPath("tiny-reranker-bert"), {
    modelClass: "encoder-only-base",
    devices: ["cpu", "cpu"],
  });
  const golden = loadGolden("tiny-reranker-bert");
  const c = golden.cases.find((x: { name: string }) => x.name === "default");
  assertClose(await m.computeScore(c.inputs), c.output, 1e-5, "two devices");
  await assert.rejects(m.computeScore([["only one"]] as never), /sentence pairs must be/);
  await m.close();
});
