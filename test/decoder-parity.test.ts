import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { type AutoModelOptions, FlagAutoModel } from "../src/models/auto.js";
import { FlagICLModel, type FlagLLMModel, FlagPseudoMoEModel } from "../src/models/decoder-only.js";
import { lengthSortedOrder } from "../src/models/pooling.js";
import { isFlagserveError } from "../src/runtime/errors.js";
import { Float32Matrix } from "../src/runtime/matrix.js";
import { padBatch } from "../src/runtime/session.js";
import { assertClose, type Golden, loadGolden, modelPath, namedModelDir } from "./helpers.js";

const TOLERANCE = 1e-5;
const FIXTURES = [
  "tiny-mistral-embed",
  "tiny-qwen2-embed",
  "tiny-qwen3-embed",
  "tiny-gemma2-embed",
  "tiny-icl",
  "tiny-pseudo-moe",
];

const CLASS_OF: Record<string, string> = {
  "decoder-only-base": "FlagLLMModel",
  "decoder-only-icl": "FlagICLModel",
  "decoder-only-pseudo_moe": "FlagPseudoMoEModel",
};

for (const fixture of FIXTURES) {
  const golden: Golden = loadGolden(fixture);
  describe(`${fixture}: ${CLASS_OF[golden.model_class]} matches FlagEmbedding (${golden.embedder_class})`, () => {
    const links: { cleanup: () => Promise<void> }[] = [];
    const models: FlagLLMModel[] = [];
    after(async () => {
      await Promise.all(models.map((m) => m.close()));
      await Promise.all(links.map((l) => l.cleanup()));
    });

    /** As the Python side built it: FlagAutoModel on a directory named after the mapped name, or modelClass. */
    async function open(init: AutoModelOptions): Promise<FlagLLMModel> {
      let model: FlagLLMModel;
      if (golden.mapped_name) {
        const link = await namedModelDir(fixture, golden.mapped_name);
        links.push(link);
        model = (await FlagAutoModel.fromFinetuned(link.path, { ...init, devices: "cpu" })) as FlagLLMModel;
      } else {
        model = (await FlagAutoModel.fromFinetuned(modelPath(fixture), {
          ...init,
          modelClass: golden.model_class,
          devices: "cpu",
        })) as FlagLLMModel;
      }
      models.push(model);
      assert.equal(model.constructor.name, CLASS_OF[golden.model_class]);
      assert.equal(model.poolingMethod, "last_token");
      return model;
    }

    function runBefore(
      model: FlagLLMModel,
      steps: { method: string; inputs: unknown[] }[] | undefined,
    ): void {
      for (const step of steps ?? []) {
        // biome-ignore lint/suspicious/noExplicitAny: the method name comes from the golden file
        (model as any)[step.method](...step.inputs);
      }
    }

    for (const group of golden.tokens) {
      test(`token ids FlagEmbedding fed the model: ${group.case} (${group.method}, max_length ${group.max_length})`, async () => {
        const model = await open(group.init);
        runBefore(model, group.before);
        const texts = typeof group.inputs === "string" ? [group.inputs] : group.inputs;
        const encodings = model.tokenizeFor(group.method, texts, group.call);
        assert.deepEqual(
          encodings.map((e) => e.ids),
          group.input_ids,
        );
        // The first padded batch: same rows, same padding side and pad id (row order among
        // equal lengths is numpy's argsort's, so rows are compared as a set).
        const tok = model.tokenizer;
        assert.equal(tok.paddingSide, group.padding_side);
        const size = group.first_batch.input_ids.length;
        const order = lengthSortedOrder(encodings.map((e) => e.ids.length)).slice(0, size);
        const batch = padBatch(
          order.map((i) => encodings[i] as (typeof encodings)[number]),
          tok.padTokenId,
          tok.paddingSide,
        );
        const rows = (ids: BigInt64Array | number[][], mask: BigInt64Array | number[][]) =>
          Array.from({ length: size }, (_, r) =>
            JSON.stringify([
              Array.isArray(ids)
                ? ids[r]
                : Array.from(ids.subarray(r * batch.seqLen, (r + 1) * batch.seqLen), Number),
              Array.isArray(mask)
                ? mask[r]
                : Array.from(mask.subarray(r * batch.seqLen, (r + 1) * batch.seqLen), Number),
            ]),
          ).sort();
        assert.deepEqual(
          rows(batch.inputIds, batch.attentionMask),
          rows(group.first_batch.input_ids, group.first_batch.attention_mask),
        );
      });
    }

    for (const c of golden.cases) {
      test(`${c.name}: ${c.method}`, async () => {
        const model = await open(c.init);
        runBefore(model, c.before);
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

describe("decoder-only embedders: mapping, ICL state, pseudo-MoE domains", () => {
  test("FlagAutoModel picks the decoder classes for every decoder-only name of the mapping", () => {
    const expected: Record<string, string> = {
      "bge-en-icl": "decoder-only-icl",
      "bge-multilingual-gemma2": "decoder-only-base",
      "bge-reasoner-embed-qwen3-8b-0923": "decoder-only-base",
      "e5-mistral-7b-instruct": "decoder-only-base",
      "gte-Qwen2-7B-instruct": "decoder-only-base",
      "gte-Qwen2-1.5B-instruct": "decoder-only-base",
      "Qwen3-Embedding-8B": "decoder-only-base",
      "SFR-Embedding-Mistral": "decoder-only-base",
    };
    for (const [name, cls] of Object.entries(expected)) {
      const config = FlagAutoModel.resolveConfig(`some-org/${name}`);
      assert.equal(config.modelClass, cls, name);
      assert.equal(config.poolingMethod, "last_token", name);
    }
    assert.equal(FlagAutoModel.resolveConfig("bge-en-icl").queryInstructionFormat, "<instruct>{}\n<query>{}");
    assert.equal(
      FlagAutoModel.resolveConfig("x", { modelClass: "decoder-only-icl" }).poolingMethod,
      "last_token",
    );
  });

  test("ICL: examples change query embeddings only; setExamples() goes back to the constructor's", async () => {
    const golden = loadGolden("tiny-icl");
    const withExamples = golden.cases.find((c: Golden) => c.name === "queries_with_examples");
    const link = await namedModelDir("tiny-icl", "bge-en-icl");
    const model = (await FlagAutoModel.fromFinetuned(link.path, withExamples.init)) as FlagICLModel;
    try {
      assert.ok(model instanceof FlagICLModel);
      assert.match(model.examplesPrefix, /<response>.*\n\n$/s);
      const before = await model.encodeQueries(withExamples.inputs as string[]);
      assertClose(before.toArrays(), withExamples.output, TOLERANCE, "constructor examples");
      model.setExamples([
        { instruct: "Retrieve the capital city.", query: "capital of Japan", response: "Tokyo." },
      ]);
      const other = await model.encodeQueries(withExamples.inputs as string[]);
      assert.ok(Math.abs((other.row(0)[0] as number) - (before.row(0)[0] as number)) > 1e-6);
      const corpus = await model.encodeCorpus(["Paris is the capital of France."]);
      model.setExamples();
      assertClose(
        (await model.encodeQueries(withExamples.inputs as string[])).toArrays(),
        withExamples.output,
        TOLERANCE,
        "reset",
      );
      assertClose(
        (await model.encodeCorpus(["Paris is the capital of France."])).toArrays(),
        corpus.toArrays(),
        0,
        "corpus unaffected by examples",
      );
    } finally {
      await model.close();
      await link.cleanup();
    }
  });

  test("pseudo-MoE: the domain is remembered between calls; unknown domains name the exported ones", async () => {
    const golden = loadGolden("tiny-pseudo-moe");
    const coding = golden.cases.find((c: Golden) => c.name === "corpus_coding");
    const general = golden.cases.find((c: Golden) => c.name === "corpus_general");
    const model = (await FlagAutoModel.fromFinetuned(modelPath("tiny-pseudo-moe"), {
      modelClass: "decoder-only-pseudo_moe",
    })) as FlagPseudoMoEModel;
    try {
      assert.ok(model instanceof FlagPseudoMoEModel);
      assert.deepEqual(Object.keys(model.domains), ["general", "coding", "reasoning"]);
      assert.equal(model.currentDomain, "general");
      assertClose(
        (await model.encodeCorpus(coding.inputs as string[], { domain: "coding" })).toArrays(),
        coding.output,
        TOLERANCE,
        "coding",
      );
      // No domain given: the model stays in the last one, as set_domain leaves it.
      assert.equal(model.currentDomain, "coding");
      assertClose(
        (await model.encodeCorpus(coding.inputs as string[])).toArrays(),
        coding.output,
        TOLERANCE,
        "still coding",
      );
      assertClose(
        (await model.encodeCorpus(general.inputs as string[], { domainForPseudoMoe: "general" })).toArrays(),
        general.output,
        TOLERANCE,
        "general",
      );
      await assert.rejects(model.encode(["x"], { domain: "biology" }), (e) => {
        assert.ok(isFlagserveError(e, "invalid_input"));
        assert.match(e.message, /unknown domain "biology".*general, coding, reasoning/);
        return true;
      });
    } finally {
      await model.close();
    }
    // A checkpoint exported without per-domain graphs cannot route: the error says so.
    const plain = (await FlagAutoModel.fromFinetuned(modelPath("tiny-qwen3-embed"), {
      modelClass: "decoder-only-pseudo_moe",
    })) as FlagPseudoMoEModel;
    try {
      await assert.rejects(
        plain.encode(["x"], { domain: "coding" }),
        /routing is fixed at export.*--domains/,
      );
    } finally {
      await plain.close();
    }
  });
});
