import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { CohereClient, CohereClientV2 } from "cohere-ai";
import { type RunningServer, startServer } from "../src/api/start.js";
import { FlagReranker } from "../src/models/reranker.js";
import { assertClose, modelPath } from "./helpers.js";

const QUERY = "What is machine learning?";
const DOCS = [
  "The best pizza recipe uses fresh tomatoes, mozzarella and basil.",
  "Machine learning is a subset of artificial intelligence that learns from data.",
  "",
  "机器学习是人工智能的一个分支。",
  "Neural networks are computing systems inspired by biological neural networks.",
];

async function post(url: string, body: unknown): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

type Json = Record<string, unknown> & {
  results: { index: number; relevance_score: number; document?: { text: string } }[];
};

describe("rerank endpoints on a cross-encoder", () => {
  let server: RunningServer;
  let expected: number[];
  let raw: number[];

  before(async () => {
    server = await startServer(
      [
        { source: modelPath("tiny-reranker-xlmr"), alias: "rr", options: {} },
        { source: modelPath("tiny-bge"), alias: "emb", options: { poolingMethod: "cls" } },
      ],
      { host: "127.0.0.1", port: 0, logLevel: "warn" },
    );
    await server.loaded;
    // The library (proven against FlagEmbedding's goldens) is the reference.
    const lib = await FlagReranker.load(modelPath("tiny-reranker-xlmr"));
    const pairs = DOCS.map((d) => [QUERY, d] as [string, string]);
    expected = await lib.computeScore(pairs, { normalize: true });
    raw = await lib.computeScore(pairs);
    await lib.close();
  });
  after(() => server.close());

  const best = () =>
    expected.map((_, i) => i).sort((a, b) => (expected[b] as number) - (expected[a] as number));

  test("cohere-ai v1 client: sorted best first, index into the input, sigmoid scores, documents on request", async () => {
    const cohere = new CohereClient({ token: "unused", environment: server.url });
    const res = await cohere.rerank({
      model: "rr",
      query: QUERY,
      documents: DOCS,
      returnDocuments: true,
      topN: 3,
    });
    assert.deepEqual(
      res.results.map((r) => r.index),
      best().slice(0, 3),
    );
    assertClose(
      res.results.map((r) => r.relevanceScore),
      best()
        .slice(0, 3)
        .map((i) => expected[i] as number),
      1e-5,
      "scores",
    );
    for (const r of res.results) assert.equal(r.document?.text, DOCS[r.index]);
    assert.ok(res.id);
    const plain = await cohere.rerank({ model: "rr", query: QUERY, documents: DOCS });
    assert.equal(plain.results.length, DOCS.length);
    for (const r of plain.results) assert.equal(r.document, undefined);
  });

  test("cohere-ai v2 client, with max_tokens_per_doc", async () => {
    const cohere = new CohereClientV2({ token: "unused", environment: server.url });
    const res = await cohere.rerank({ model: "rr", query: QUERY, documents: DOCS, topN: 2 });
    assert.deepEqual(
      res.results.map((r) => r.index),
      best().slice(0, 2),
    );
    assertClose(
      res.results.map((r) => r.relevanceScore),
      best()
        .slice(0, 2)
        .map((i) => expected[i] as number),
      1e-5,
      "v2",
    );
    const capped = await cohere.rerank({ model: "rr", query: QUERY, documents: DOCS, maxTokensPerDoc: 3 });
    assert.equal(capped.results.length, DOCS.length);
    assert.notDeepEqual(
      capped.results.map((r) => r.relevanceScore).sort(),
      res.results.map((r) => r.relevanceScore).sort(),
    );
  });

  test("Jina shape: {text} documents, usage, raw logits on request, documents omitted (not null)", async () => {
    const res = await post(`${server.url}/v1/rerank`, {
      model: "rr",
      query: QUERY,
      documents: DOCS.map((text) => ({ text })),
      raw_scores: true,
    });
    assert.equal(res.status, 200);
    const json = (await res.json()) as Json & { usage: { total_tokens: number }; model: string };
    assert.equal(json.model, "rr");
    assert.ok(json.usage.total_tokens > DOCS.length);
    const byIndex = new Map(json.results.map((r) => [r.index, r.relevance_score]));
    assertClose(
      DOCS.map((_, i) => byIndex.get(i) as number),
      raw,
      1e-5,
      "raw",
    );
    assert.ok(json.results.every((r) => !("document" in r)));
  });

  test("TEI /rerank: [{index, score, text?}] best first", async () => {
    const res = await post(`${server.url}/rerank`, { query: QUERY, texts: DOCS, return_text: true });
    const json = (await res.json()) as { index: number; score: number; text: string }[];
    assert.deepEqual(
      json.map((r) => r.index),
      best(),
    );
    assert.equal(json[0]?.text, DOCS[json[0]?.index as number]);
    const rawRes = (await (
      await post(`${server.url}/rerank`, { query: QUERY, texts: DOCS, raw_scores: true })
    ).json()) as {
      index: number;
      score: number;
    }[];
    assertClose(
      DOCS.map((_, i) => rawRes.find((r) => r.index === i)?.score as number),
      raw,
      1e-5,
      "tei raw",
    );
    const bad = await post(`${server.url}/rerank`, { query: QUERY, texts: [] });
    assert.equal(bad.status, 400);
    assert.deepEqual(Object.keys((await bad.json()) as object).sort(), ["error", "error_type"]);
  });

  test("top_n edge cases, empty documents, a 100k-character document, missing query", async () => {
    const all = (await (
      await post(`${server.url}/v1/rerank`, { model: "rr", query: QUERY, documents: DOCS, top_n: 99 })
    ).json()) as Json;
    assert.equal(all.results.length, DOCS.length);
    const cases: [unknown, string, RegExp][] = [
      [{ model: "rr", query: QUERY, documents: DOCS, top_n: 0 }, "top_n", /top_n must be at least 1/],
      [{ model: "rr", query: QUERY, documents: [] }, "documents", /documents must not be empty/],
      [{ model: "rr", documents: DOCS }, "query", /missing required field "query"/],
      [
        { model: "rr", query: QUERY, documents: [{ title: "x" }] },
        "documents",
        /documents must be an array of strings or of \{text\} objects/,
      ],
      [
        { model: "rr", query: QUERY, documents: DOCS, max_chunks_per_doc: 0 },
        "max_chunks_per_doc",
        /at least 1|between 1 and 64/,
      ],
      [
        { model: "rr", query: QUERY, documents: DOCS, mode_weights: [1, 1, 1] },
        "mode_weights",
        /needs a BGE-M3 model/,
      ],
    ];
    for (const [body, param, message] of cases) {
      const res = await post(`${server.url}/v1/rerank`, body);
      const json = (await res.json()) as { error: { message: string; param: string } };
      assert.ok(res.status === 400 || res.status === 404, `${res.status} ${json.error.message}`);
      assert.equal(json.error.param, param, json.error.message);
      assert.match(json.error.message, message);
    }
    // like the embeddings route, another name (e.g. a Cohere model id) is served by the only reranker
    const other = (await (
      await post(`${server.url}/v1/rerank`, { model: "rerank-english-v3.0", query: QUERY, documents: DOCS })
    ).json()) as Json;
    assert.equal(other.model, "rr");
    const huge = "lorem ipsum dolor sit amet ".repeat(4000).slice(0, 100_000);
    const res = await post(`${server.url}/v1/rerank`, {
      model: "rr",
      query: QUERY,
      documents: [huge, DOCS[1]],
    });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as Json).results.length, 2);
  });

  test("max_chunks_per_doc scores a long document by its best window", async () => {
    const relevant = DOCS[1] as string;
    const filler = "The weather was mild and the river was calm that afternoon. ".repeat(80);
    const long = `${filler}${relevant}`;
    const one = (await (
      await post(`${server.url}/v1/rerank`, { model: "rr", query: QUERY, documents: [long] })
    ).json()) as Json;
    const chunked = (await (
      await post(`${server.url}/v1/rerank`, {
        model: "rr",
        query: QUERY,
        documents: [long],
        max_chunks_per_doc: 10,
      })
    ).json()) as Json;
    const tail = (await (
      await post(`${server.url}/v1/rerank`, { model: "rr", query: QUERY, documents: [relevant] })
    ).json()) as Json;
    // Truncation only sees the filler; the windows reach the relevant sentence at the end.
    assert.notEqual(chunked.results[0]?.relevance_score, one.results[0]?.relevance_score);
    assert.ok((chunked.results[0]?.relevance_score as number) >= (one.results[0]?.relevance_score as number));
    assert.ok(Number.isFinite(tail.results[0]?.relevance_score));
  });

  test("an embedding model answers rerank calls by cosine similarity", async () => {
    const res = (await (
      await post(`${server.url}/v1/rerank`, { model: "emb", query: QUERY, documents: DOCS })
    ).json()) as Json;
    const embed = (await (
      await post(`${server.url}/v1/embeddings`, {
        model: "emb",
        input: [QUERY, ...DOCS],
        encoding_format: "float",
      })
    ).json()) as { data: { embedding: number[] }[] };
    const q = embed.data[0]?.embedding as number[];
    const cos = DOCS.map((_, i) =>
      (embed.data[i + 1] as { embedding: number[] }).embedding.reduce(
        (s, v, k) => s + v * (q[k] as number),
        0,
      ),
    );
    const byIndex = new Map(res.results.map((r) => [r.index, r.relevance_score]));
    assertClose(
      DOCS.map((_, i) => byIndex.get(i) as number),
      cos,
      1e-5,
      "cosine",
    );
  });

  test("models list shows both kinds; the rerank model is not used for embeddings", async () => {
    const models = (await (await fetch(`${server.url}/v1/models`)).json()) as {
      data: { id: string; kind: string }[];
    };
    // An embedding model is also listed under its "MODEL:query" name; a reranker is not.
    assert.deepEqual(models.data.map((m) => [m.id, m.kind]).sort(), [
      ["emb", "embedding"],
      ["emb:query", "embedding"],
      ["rr", "rerank"],
    ]);
    const res = await post(`${server.url}/v1/embeddings`, { model: "rr", input: "x" });
    assert.equal(res.status, 404);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /flagserve_inputs_total\{model="rr"\} \d+/);
    const spec = (await (await fetch(`${server.url}/openapi.json`)).json()) as {
      paths: Record<string, unknown>;
    };
    for (const p of ["/v1/rerank", "/v2/rerank", "/rerank"]) assert.ok(spec.paths[p], p);
  });
});
