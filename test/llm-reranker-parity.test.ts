import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { FlagAutoReranker, type Reranker } from "../src/models/auto-reranker.js";
import {
  FlagLLMReranker,
  LayerWiseFlagLLMReranker,
  LightWeightFlagLLMReranker,
  type LLMRerankerOptions,
} from "../src/models/llm-reranker.js";
import { isFlagserveError } from "../src/runtime/errors.js";
import { assertClose, type Golden, loadGolden, modelPath, namedModelDir } from "./helpers.js";

const TOLERANCE = 1e-5;
const CLASSES: Record<string, unknown> = {
  "tiny-gemma-reranker": FlagLLMReranker,
  "tiny-minicpm-layerwise": LayerWiseFlagLLMReranker,
  "tiny-gemma2-lightweight": LightWeightFlagLLMReranker,
};

type LLM = FlagLLMReranker | LayerWiseFlagLLMReranker | LightWeightFlagLLMReranker;

for (const fixture of Object.keys(CLASSES)) {
  const golden: Golden = loadGolden(fixture);
  describe(`${fixture}: ${golden.reranker_class} matches FlagEmbedding (transformers ${golden.flagembedding_transformers})`, () => {
    let link: { path: string; cleanup: () => Promise<void> };
    const open: Reranker[] = [];
    before(async () => {
      link = await namedModelDir(fixture, golden.mapped_name);
    });
    after(async () => {
      await Promise.all(open.map((m) => m.close()));
      await link.cleanup();
    });
    const load = async (init: LLMRerankerOptions): Promise<LLM> => {
      const model = await FlagAutoReranker.fromFinetuned(link.path, { ...init, devices: "cpu" });
      open.push(model);
      assert.ok(model instanceof (CLASSES[fixture] as new (...a: never[]) => LLM));
      return model as LLM;
    };

    test("pair token ids (and lightweight part lengths) equal the rows FlagEmbedding fed its model", async () => {
      for (const setting of golden.pair_tokens) {
        const init: LLMRerankerOptions = { maxLength: setting.max_length };
        if (setting.query_max_length !== null) init.queryMaxLength = setting.query_max_length;
        if (setting.prompt !== null) init.prompt = setting.prompt;
        const model = await load(init);
        const rows = model.encodePairs(setting.pairs);
        const what = `max_length ${setting.max_length}, query_max_length ${setting.query_max_length}, prompt ${JSON.stringify(setting.prompt)}`;
        assert.deepEqual(
          rows.map((r) => r.ids),
          setting.input_ids,
          what,
        );
        if (setting.query_lengths) {
          assert.deepEqual(
            rows.map((r) => r.queryLength),
            setting.query_lengths,
            what,
          );
          assert.deepEqual(
            rows.map((r) => r.promptLength),
            setting.prompt_lengths,
            what,
          );
        }
      }
    });

    for (const c of golden.cases) {
      test(`${c.name}`, async () => {
        const model = await load(c.init);
        const scores = await model.computeScore(c.inputs, c.call);
        if (Array.isArray(c.output[0])) {
          assert.equal(scores.length, c.output.length, "one list per collected layer");
          (scores as number[][]).forEach((list, k) => {
            assertClose(list, c.output[k], TOLERANCE, `${c.name} layer list ${k}`);
          });
        } else {
          assertClose(scores as number[], c.output, TOLERANCE, c.name);
        }
      });
    }
  });
}

describe("LLM rerankers: options the export cannot serve, devices, dtype variants", () => {
  test("cutoff layers outside the accepted range fail with the range; several devices give the same scores", async () => {
    const golden = loadGolden("tiny-minicpm-layerwise");
    const link = await namedModelDir("tiny-minicpm-layerwise", golden.mapped_name);
    const model = (await FlagAutoReranker.fromFinetuned(link.path, {
      devices: ["cpu", "cpu"],
    })) as LayerWiseFlagLLMReranker;
    try {
      await assert.rejects(model.computeScore([["q", "p"]], { cutoffLayers: [0, 99] }), (e) => {
        assert.ok(isFlagserveError(e, "invalid_input"));
        assert.match(e.message, /cutoff layers must be in \[2, 6\]/);
        return true;
      });
      const several = golden.cases.find((c: Golden) => c.name === "cutoff_several");
      const scores = (await model.computeScore(several.inputs, several.init)) as number[][];
      several.output.forEach((list: number[], k: number) => {
        assertClose(scores[k] as number[], list, TOLERANCE, `two devices, layer list ${k}`);
      });
      assert.deepEqual(model.serveInfo().cutoffLayers?.available, [2, 3, 4, 5, 6]);
    } finally {
      await model.close();
      await link.cleanup();
    }
  });

  test("the quantized and fp16 graphs of the base reranker rank like fp32 (correlation recorded at export)", async () => {
    const golden = loadGolden("tiny-gemma-reranker");
    const c = golden.cases.find((x: Golden) => x.name === "default");
    for (const dtype of ["fp16", "int8", "q4"]) {
      const model = await FlagLLMReranker.load(modelPath("tiny-gemma-reranker"), { dtype });
      try {
        const scores = await model.computeScore(c.inputs);
        const worst = Math.max(...scores.map((s, i) => Math.abs(s - (c.output[i] as number))));
        // flagserve.json `quality` records the largest difference of each variant at export.
        const recorded = model.exportMeta.quality as Record<string, { max_abs_diff_to_fp32: number }>;
        const bound = (recorded[`onnx/model_${dtype}.onnx`]?.max_abs_diff_to_fp32 ?? 0) * 3 + 1e-3;
        assert.ok(worst <= bound, `${dtype}: max abs difference ${worst} > ${bound}`);
      } finally {
        await model.close();
      }
    }
  });
});
