import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CohereClientV2 } from "cohere-ai";
import OpenAI from "openai";
import { type RunningServer, startServer } from "../src/api/start.js";
import { UsageError } from "../src/cli/args.js";
import { modelOptions } from "../src/cli/model-flags.js";
import { FlagICLModel, FlagLLMModel, FlagPseudoMoEModel } from "../src/models/decoder-only.js";
import type { IclExample } from "../src/models/decoder-prompts.js";
import { llmPairRow, llmPairSettings, llmPassageRoom, llmQueryPart } from "../src/models/decoder-prompts.js";
import { formatInstruction } from "../src/models/instruction.js";
import {
  FlagLLMReranker,
  LayerWiseFlagLLMReranker,
  LightWeightFlagLLMReranker,
  type LLMReranker,
} from "../src/models/llm-reranker.js";
import { assertClose, modelPath, tempDir } from "./helpers.js";

const WEB_SEARCH = "Given a web search query, retrieve relevant passages that answer the query";
const QUERIES = ["What is machine learning?", "how much protein should a female eat", "机器学习", ""];
const PASSAGES = [
  "Machine learning is a subset of artificial intelligence that learns from data.",
  "The best pizza recipe uses fresh tomatoes, mozzarella and basil. 🍕",
  "",
];
const DEFAULT_EXAMPLES: IclExample[] = [
  { instruct: WEB_SEARCH, query: "what is a virtual interface", response: "A software-defined abstraction." },
  { query: "best pizza recipe", response: "Fresh tomatoes, mozzarella and basil." },
];
const DOCS = [
  "The best pizza recipe uses fresh tomatoes, mozzarella and basil.",
  "Machine learning is a subset of artificial intelligence that learns from data.",
  "",
  "机器学习是人工智能的一个分支。",
];
const QUERY = "What is machine learning?";

async function post(url: string, body: unknown): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

type ErrorBody = { error: { message: string; param: string | null; code: string | null } };

test("--icl-examples FILE: the default examples of ICL models; a malformed file is a usage error", async () => {
  const dir = await tempDir();
  try {
    const good = join(dir.path, "examples.json");
    await writeFile(good, JSON.stringify(DEFAULT_EXAMPLES));
    const options = modelOptions({ "icl-examples": good }, modelPath("tiny-icl"));
    assert.deepEqual(options.examplesForTask, DEFAULT_EXAMPLES);
    assert.equal(options.queryInstructionForRetrieval, undefined, "left to the export and its mapped name");
    const bad = join(dir.path, "bad.json");
    await writeFile(bad, JSON.stringify([{ question: "q" }]));
    assert.throws(
      () => modelOptions({ "icl-examples": bad }, "x"),
      (e) => e instanceof UsageError && /--icl-examples/.test(e.message),
    );
  } finally {
    await dir.cleanup();
  }
});

describe("decoder-only embedders and LLM rerankers over HTTP (exported directories, no flags)", () => {
  let server: RunningServer;
  let jobsDir: { path: string; cleanup: () => Promise<void> };
  const libs: { close(): Promise<void> }[] = [];
  const lib = async <T extends { close(): Promise<void> }>(p: Promise<T>): Promise<T> => {
    const m = await p;
    libs.push(m);
    return m;
  };

  before(async () => {
    jobsDir = await tempDir();
    server = await startServer(
      [
        { source: modelPath("tiny-mistral-embed"), alias: "mistral", options: {} },
        // What `--icl-examples FILE` sets.
        { source: modelPath("tiny-icl"), alias: "icl", options: { examplesForTask: DEFAULT_EXAMPLES } },
        { source: modelPath("tiny-pseudo-moe"), alias: "moe", options: {} },
        { source: modelPath("tiny-gemma-reranker"), alias: "gemma", options: {} },
        { source: modelPath("tiny-minicpm-layerwise"), alias: "layerwise", options: {} },
        { source: modelPath("tiny-gemma2-lightweight"), alias: "lightweight", options: {} },
      ],
      {
        host: "127.0.0.1",
        port: 0,
        logLevel: "warn",
        limits: { maxChunksPerDoc: 16 },
        jobs: { chunkSize: 4, concurrency: 1, resultsDir: jobsDir.path },
      },
    );
    await server.loaded;
  });
  after(async () => {
    await server.close();
    await Promise.all(libs.map((m) => m.close()));
    await jobsDir.cleanup();
  });

  const embed = async (body: Record<string, unknown>) => {
    const res = await post(`${server.url}/v1/embeddings`, { encoding_format: "float", ...body });
    const json = (await res.json()) as { data: { embedding: number[] }[] } & ErrorBody;
    return { status: res.status, json, vectors: res.ok ? json.data.map((d) => d.embedding) : [] };
  };

  test("/v1/embeddings: queries get the model card's instruction, or the request's; passages none", async () => {
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
    // flagserve.json's mapped name (e5-mistral-7b-instruct) gives the default task description.
    const withDefault = await lib(
      FlagLLMModel.load(modelPath("tiny-mistral-embed"), { queryInstructionForRetrieval: WEB_SEARCH }),
    );
    const q = await embed({ model: "mistral", input: QUERIES, input_type: "query" });
    assert.equal(q.status, 200);
    assertClose(
      q.vectors,
      (await withDefault.encodeQueries(QUERIES)).toArrays(),
      1e-5,
      "default instruction",
    );
    const own = await lib(
      FlagLLMModel.load(modelPath("tiny-mistral-embed"), { queryInstructionForRetrieval: "Find code" }),
    );
    const mine = await embed({ model: "mistral", input: QUERIES, instruction: "Find code" });
    assertClose(
      mine.vectors,
      (await own.encodeQueries(QUERIES)).toArrays(),
      1e-5,
      "the request's instruction",
    );
    const passages = await openai.embeddings.create({ model: "mistral", input: PASSAGES });
    assertClose(
      passages.data.map((d) => d.embedding),
      (await withDefault.encodeCorpus(PASSAGES)).toArrays(),
      1e-5,
      "passages (base64 through the official client)",
    );
  });

  test("/v1/embeddings on an ICL model: default examples, the request's examples, none", async () => {
    const icl = (examples: IclExample[] | null, instruction = WEB_SEARCH) =>
      lib(
        FlagICLModel.load(modelPath("tiny-icl"), {
          queryInstructionForRetrieval: instruction,
          examplesForTask: examples,
        }),
      );
    const byDefault = await embed({ model: "icl", input: QUERIES, input_type: "query" });
    assertClose(
      byDefault.vectors,
      (await (await icl(DEFAULT_EXAMPLES)).encodeQueries(QUERIES)).toArrays(),
      1e-5,
      "the server's default examples",
    );
    const mine: IclExample[] = [
      { instruct: "Retrieve the capital city.", query: "capital of Japan", response: "Tokyo." },
    ];
    const withMine = await embed({ model: "icl", input: QUERIES, examples: mine, instruction: "Find facts" });
    assertClose(
      withMine.vectors,
      (await (await icl(mine, "Find facts")).encodeQueries(QUERIES)).toArrays(),
      1e-5,
      "the request's examples and instruction",
    );
    const none = await embed({ model: "icl", input: QUERIES, examples: [] });
    assertClose(
      none.vectors,
      (await (await icl(null)).encodeQueries(QUERIES)).toArrays(),
      1e-5,
      "no examples",
    );
    // Passages never carry examples.
    const passages = await embed({ model: "icl", input: PASSAGES, input_type: "passage" });
    assertClose(
      passages.vectors,
      (await (await icl(null)).encodeCorpus(PASSAGES)).toArrays(),
      1e-5,
      "passages",
    );
    // A query longer than its share of max_length is cut as FlagICLModel cuts it, or refused.
    const long = Array.from({ length: 700 }, (_, i) => `word${i % 50}`).join(" ");
    const cut = await embed({ model: "icl", input: [long], input_type: "query" });
    assertClose(
      cut.vectors,
      (await (await icl(DEFAULT_EXAMPLES)).encodeQueries([long])).toArrays(),
      1e-5,
      "cut",
    );
    const refused = await embed({ model: "icl", input: [long], input_type: "query", truncate: false });
    assert.equal(refused.status, 400);
    assert.equal(refused.json.error.code, "context_length_exceeded");
  });

  test("the extension fields are checked: 400s name the field and what the model supports", async () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [
        { model: "mistral", input: ["x"], examples: [{ query: "q" }] },
        "examples",
        /in-context-learning embedder \(decoder-only-icl.*mistral is decoder-only-base/,
      ],
      [
        { model: "icl", input: ["x"], instruction: "Find", input_type: "passage" },
        "instruction",
        /applies to queries/,
      ],
      [{ model: "icl", input: ["x"], examples: [{ question: "q" }] }, "examples", /./],
      [{ model: "icl", input: ["x"], examples: "none" }, "examples", /./],
      [
        {
          model: "icl",
          input: ["x"],
          examples: [{ query: "long", response: Array.from({ length: 5000 }, (_, i) => `w${i}`).join(" ") }],
        },
        "examples",
        /more than the model takes \(4096\)/,
      ],
    ];
    for (const [body, param, message] of cases) {
      const r = await embed(body);
      assert.equal(r.status, 400, JSON.stringify(body).slice(0, 80));
      assert.match(r.json.error.param ?? "", new RegExp(param), JSON.stringify(r.json));
      assert.match(r.json.error.message, message);
    }
  });

  test("pseudo-MoE serves its default domain; TEI /embed embeds texts as given", async () => {
    const moe = await lib(FlagPseudoMoEModel.load(modelPath("tiny-pseudo-moe")));
    const r = await embed({ model: "moe", input: PASSAGES });
    assertClose(r.vectors, (await moe.encode(PASSAGES)).toArrays(), 1e-5, "moe general");
    const res = await post(`${server.url}/embed`, { inputs: QUERIES, model: "mistral" });
    assert.equal(res.status, 200);
    const plain = await lib(FlagLLMModel.load(modelPath("tiny-mistral-embed")));
    assertClose(
      (await res.json()) as number[][],
      (await plain.encode(QUERIES)).toArrays(),
      1e-5,
      "TEI /embed",
    );
  });

  test("/v1/models and /info report class, pooling, dimensions, max tokens and LLM reranker options", async () => {
    const models = (await (await fetch(`${server.url}/v1/models`)).json()) as {
      data: Record<string, unknown>[];
    };
    const by = Object.fromEntries(models.data.map((m) => [m.id as string, m]));
    const served = ["mistral", "icl", "moe", "gemma", "layerwise", "lightweight"];
    assert.deepEqual(Object.fromEntries(served.map((id) => [id, by[id]?.model_class])), {
      mistral: "decoder-only-base",
      icl: "decoder-only-icl",
      moe: "decoder-only-pseudo_moe",
      gemma: "decoder-only-base",
      layerwise: "decoder-only-layerwise",
      lightweight: "decoder-only-lightweight",
    });
    assert.equal(by.mistral?.pooling, "last_token");
    assert.equal(by.mistral?.dimensions, 32);
    assert.equal(by.mistral?.max_input_tokens, 512);
    assert.equal(by.mistral?.query_instruction_format, "Instruct: {}\nQuery: {}");
    assert.equal(by.mistral?.query_instruction, WEB_SEARCH);
    assert.equal(by.icl?.icl_examples, 2);
    assert.deepEqual(by.layerwise?.cutoff_layers, { default: [6], available: [2, 3, 4, 5, 6] });
    assert.equal(by.gemma?.cutoff_layers, undefined);
    assert.deepEqual(by.lightweight?.compress_ratio, {
      default: 1,
      available: [1, 2, 4, 8],
      any_integer: true,
    });
    assert.deepEqual(by.lightweight?.compress_layers, {
      default: [8],
      available: [1, 2, 3, 4, 5, 6, 7, 8, 9],
    });
    const info = (await (await fetch(`${server.url}/info`)).json()) as Record<string, unknown>;
    assert.deepEqual(info.model_type, { embedding: { pooling: "last_token" } });
    assert.equal(info.model_class, "decoder-only-base");
    assert.equal(info.dimensions, 32);
    assert.equal(info.max_input_length, 512);
  });

  test("a bulk job on a decoder model equals the synchronous endpoint", async () => {
    const input = Array.from({ length: 10 }, (_, i) => `${PASSAGES[i % 2]} ${i}`);
    const res = await post(`${server.url}/v1/jobs`, { model: "mistral", input, input_type: "query" });
    assert.equal(res.status, 202, await res.clone().text());
    const job = (await res.json()) as { id: string };
    const until = Date.now() + 60_000;
    for (;;) {
      const j = (await (await fetch(`${server.url}/v1/jobs/${job.id}`)).json()) as { status: string };
      if (j.status === "completed") break;
      assert.ok(!["failed", "cancelled"].includes(j.status), JSON.stringify(j));
      assert.ok(Date.now() < until, "job did not complete");
      await new Promise((r) => setTimeout(r, 100));
    }
    const lines = (await (await fetch(`${server.url}/v1/jobs/${job.id}/results`)).text()).trim().split("\n");
    const sync = await embed({ model: "mistral", input, input_type: "query" });
    assertClose(
      lines.map((l) => (JSON.parse(l) as { embedding: number[] }).embedding),
      sync.vectors,
      1e-6,
      "job vs sync",
    );
  });

  const rerankers: [string, string, (path: string) => Promise<LLMReranker>][] = [
    ["gemma", "tiny-gemma-reranker", (p) => FlagLLMReranker.load(p)],
    ["layerwise", "tiny-minicpm-layerwise", (p) => LayerWiseFlagLLMReranker.load(p)],
    ["lightweight", "tiny-gemma2-lightweight", (p) => LightWeightFlagLLMReranker.load(p)],
  ];
  for (const [alias, fixture, load] of rerankers) {
    test(`${alias}: /v1/rerank, /v2/rerank and TEI /rerank give the library's scores (sigmoid unless raw)`, async () => {
      const model = await lib(load(modelPath(fixture)));
      const pairs = DOCS.map((d) => [QUERY, d] as [string, string]);
      const normalized = (await model.computeScore(pairs, { normalize: true })) as number[];
      const raw = (await model.computeScore(pairs)) as number[];
      const v1 = (await (
        await post(`${server.url}/v1/rerank`, { model: alias, query: QUERY, documents: DOCS })
      ).json()) as {
        results: { index: number; relevance_score: number }[];
      };
      const byIndex = (rs: { index: number; relevance_score: number }[]) =>
        rs
          .slice()
          .sort((a, b) => a.index - b.index)
          .map((r) => r.relevance_score);
      assertClose(byIndex(v1.results), normalized, 1e-5, "v1");
      const cohere = new CohereClientV2({ token: "unused", environment: server.url });
      const v2 = await cohere.rerank({ model: alias, query: QUERY, documents: DOCS });
      assertClose(
        v2.results
          .slice()
          .sort((a, b) => a.index - b.index)
          .map((r) => r.relevanceScore),
        normalized,
        1e-5,
        "v2",
      );
      const tei = (await (
        await post(`${server.url}/rerank`, { model: alias, query: QUERY, texts: DOCS, raw_scores: true })
      ).json()) as { index: number; score: number }[];
      assertClose(
        tei
          .slice()
          .sort((a, b) => a.index - b.index)
          .map((r) => r.score),
        raw,
        1e-5,
        "TEI raw",
      );
    });
  }

  test("cutoff_layers and compression: the library's scores; concurrent settings batch apart", async () => {
    const layerwise = await lib(LayerWiseFlagLLMReranker.load(modelPath("tiny-minicpm-layerwise")));
    const light = await lib(LightWeightFlagLLMReranker.load(modelPath("tiny-gemma2-lightweight")));
    const pairs = DOCS.map((d) => [QUERY, d] as [string, string]);
    const scores = async (body: Record<string, unknown>) => {
      const res = await post(`${server.url}/v1/rerank`, {
        query: QUERY,
        documents: DOCS,
        raw_scores: true,
        ...body,
      });
      assert.equal(res.status, 200, await res.clone().text());
      const json = (await res.json()) as { results: { index: number; relevance_score: number }[] };
      return json.results.sort((a, b) => a.index - b.index).map((r) => r.relevance_score);
    };
    assertClose(
      await scores({ model: "layerwise", cutoff_layers: [3] }),
      (await layerwise.computeScore(pairs, { cutoffLayers: [3] })) as number[],
      1e-5,
      "layerwise layer 3",
    );
    const settings: Record<string, unknown>[] = [
      {},
      { cutoff_layers: [6] },
      { compress_ratio: 2, compress_layers: [3] },
      { compress_ratio: 4, compress_layers: [1, 5], cutoff_layers: [7] },
      { compress_ratio: 3 },
    ];
    // Sent at once: each set of compression settings must be computed by batches of its own.
    const got = await Promise.all(settings.map((s) => scores({ model: "lightweight", ...s })));
    for (const [i, s] of settings.entries()) {
      const want = (await light.computeScore(pairs, {
        ...(s.cutoff_layers ? { cutoffLayers: s.cutoff_layers as number[] } : {}),
        ...(s.compress_ratio ? { compressRatio: s.compress_ratio as number } : {}),
        ...(s.compress_layers ? { compressLayers: s.compress_layers as number[] } : {}),
      })) as number[];
      assertClose(got[i] as number[], want, 1e-5, `lightweight ${JSON.stringify(s)}`);
    }
  });

  test("options an LLM reranker or its graph cannot honour are 400s naming what it supports", async () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [
        { model: "gemma", cutoff_layers: [2] },
        "cutoff_layers",
        /layerwise or lightweight.*gemma is decoder-only-base/,
      ],
      [
        { model: "layerwise", cutoff_layers: [1] },
        "cutoff_layers",
        /must be in \[2, 6\].*serves cutoff layers 2, 3, 4, 5, 6/,
      ],
      [{ model: "layerwise", cutoff_layers: [2, 3] }, "cutoff_layers", /./],
      [{ model: "layerwise", compress_ratio: 2 }, "compress_ratio", /lightweight.*decoder-only-layerwise/],
      [{ model: "lightweight", compress_layers: [0, 12] }, "compress_layers", /0, 12.*layers 1, 2, 3/],
      [{ model: "lightweight", compress_ratio: 0 }, "compress_ratio", /./],
      [{ model: "mistral", cutoff_layers: [2] }, "cutoff_layers", /embedding model/],
    ];
    for (const [body, param, message] of cases) {
      const res = await post(`${server.url}/v1/rerank`, { query: QUERY, documents: DOCS, ...body });
      const json = (await res.json()) as ErrorBody;
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.match(json.error.param ?? "", new RegExp(param), JSON.stringify(json));
      assert.match(json.error.message, message);
    }
    const tei = await post(`${server.url}/rerank`, {
      model: "gemma",
      query: QUERY,
      texts: DOCS,
      compress_ratio: 2,
    });
    assert.equal(tei.status, 422);
  });

  test("max_chunks_per_doc: windows of the pair prompt's passage room, scored by the best one", async () => {
    const model = await lib(FlagLLMReranker.load(modelPath("tiny-gemma-reranker"), { maxLength: 512 }));
    const tok = model.tokenizer;
    const long = `${Array.from({ length: 400 }, (_, i) => `filler ${i % 37}`).join(" ")} Machine learning learns from data.`;
    const res = await post(`${server.url}/v1/rerank`, {
      model: "gemma",
      query: QUERY,
      documents: [long, DOCS[1]],
      max_chunks_per_doc: 8,
      raw_scores: true,
    });
    assert.equal(res.status, 200, await res.clone().text());
    const got = ((await res.json()) as { results: { index: number; relevance_score: number }[] }).results;
    // The expected windows, built here from the prompt's token budget: room passage tokens each,
    // stepping by three quarters of that.
    const settings = llmPairSettings(tok, {
      separator: "\n",
      prompt: model.serveInfo().prompt,
      bosTokenId: model.serveInfo().bosTokenId,
      maxLength: 512,
      queryMaxLength: 384,
    });
    const first = llmQueryPart(tok, settings, formatInstruction("{}{}", "A: ", QUERY));
    const room = llmPassageRoom(settings, first);
    const passage = tok.encodeWithoutSpecials(formatInstruction("{}{}", "B: ", long));
    assert.ok(passage.length > room * 2, "the document needs several windows");
    const rows = [];
    for (let start = 0; ; start += Math.floor((room * 3) / 4)) {
      rows.push(llmPairRow(settings, first, passage.slice(start, start + room)));
      if (start + room >= passage.length || rows.length === 8) break;
    }
    const windowScores = await model.scoreRows(rows.map((r) => ({ ...r, typeIds: [], layer: 0, head: 0 })));
    assertClose(
      [got.find((r) => r.index === 0)?.relevance_score as number],
      [Math.max(...windowScores)],
      1e-5,
      "best window",
    );
    // A document that fits one window scores as FlagEmbedding scores the pair.
    const [short] = (await model.computeScore([[QUERY, DOCS[1] as string]])) as number[];
    assertClose(
      [got.find((r) => r.index === 1)?.relevance_score as number],
      [short as number],
      1e-5,
      "one window",
    );
  });
});
