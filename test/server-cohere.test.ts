import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { CohereEmbeddings } from "@langchain/cohere";
import { OpenAIEmbeddings } from "@langchain/openai";
import { OpenAIEmbedding } from "@llamaindex/openai";
import { CohereClient, CohereClientV2 } from "cohere-ai";
import { type RunningServer, startServer } from "../src/api/start.js";
import { maxAbsDiff, modelPath, tempDir } from "./helpers.js";

// tiny-bge has a query instruction ("query: "); classification gets a task instruction of the spec.
const TINY = {
  source: modelPath("tiny-bge"),
  alias: "tiny",
  options: { poolingMethod: "cls" as const, queryInstructionForRetrieval: "query: " },
  taskInstructions: { classification: "classify: " },
};
const TEXTS = ["what is a river", "rivers flow into the sea", "a bridge over the water"];

async function embeddings(url: string, body: Record<string, unknown>): Promise<number[][]> {
  const res = await fetch(`${url}/v1/embeddings`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "tiny", encoding_format: "float", ...body }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  return ((await res.json()) as { data: { embedding: number[] }[] }).data.map((d) => d.embedding);
}

/** The documented rules (serving/quantize.ts), written out independently. */
function int8(v: number[]): number[] {
  const max = Math.max(...v.map(Math.abs));
  // + 0: Math.round(-0.2) is -0, which the server's typed arrays write as 0.
  return v.map((x) => Math.max(-127, Math.min(127, Math.round((x * 127) / max))) + 0);
}
function ubinary(v: number[]): number[] {
  const out = new Array(Math.ceil(v.length / 8)).fill(0);
  v.forEach((x, i) => {
    if (x > 0) out[i >> 3] |= 0x80 >> (i & 7);
  });
  return out;
}

describe("instructions from standard clients: the Cohere embed API, input types, quantized outputs", () => {
  let server: RunningServer;
  let data: { path: string; cleanup: () => Promise<void> };
  let query: number[][];
  let passage: number[][];
  before(async () => {
    data = await tempDir();
    server = await startServer([TINY], {
      host: "127.0.0.1",
      port: 0,
      logLevel: "silent",
      jobs: { resultsDir: data.path },
    });
    await server.loaded;
    query = await embeddings(server.url, { input: TEXTS, input_type: "query" });
    passage = await embeddings(server.url, { input: TEXTS, input_type: "passage" });
    assert.ok(maxAbsDiff(query, passage) > 1e-3, "the query instruction changes the vectors (sanity)");
  });
  after(async () => {
    await server.close();
    await data.cleanup();
  });

  test("input_type on /v1/embeddings: Cohere's names, task instructions, and a 400 listing the accepted values", async () => {
    assert.ok(
      maxAbsDiff(await embeddings(server.url, { input: TEXTS, input_type: "search_query" }), query) < 1e-6,
    );
    assert.ok(
      maxAbsDiff(await embeddings(server.url, { input: TEXTS, input_type: "search_document" }), passage) <
        1e-6,
    );
    assert.ok(
      maxAbsDiff(await embeddings(server.url, { input: TEXTS, input_type: "document" }), passage) < 1e-6,
    );
    const classification = await embeddings(server.url, { input: TEXTS, input_type: "classification" });
    const instructed = await embeddings(server.url, {
      input: TEXTS.map((t) => `classify: ${t}`),
      input_type: "passage",
    });
    assert.ok(maxAbsDiff(classification, instructed) < 1e-6, "classification applies the task instruction");
    // No clustering instruction: the passage side.
    assert.ok(
      maxAbsDiff(await embeddings(server.url, { input: TEXTS, input_type: "clustering" }), passage) < 1e-6,
    );
    const bad = await fetch(`${server.url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", input: "x", input_type: "search" }),
    });
    assert.equal(bad.status, 400);
    assert.match(await bad.text(), /search_query.*search_document.*classification.*clustering/);
  });

  test("cohere-ai v1 and v2 clients: every embedding type, search_query applying the query instruction", async () => {
    const types = ["float", "int8", "uint8", "binary", "ubinary"] as const;
    const v1 = new CohereClient({ token: "x", environment: server.url });
    const r1 = await v1.embed({
      texts: TEXTS,
      model: "tiny",
      inputType: "search_query",
      embeddingTypes: [...types],
    });
    const v2 = new CohereClientV2({ token: "x", environment: server.url });
    const r2 = await v2.embed({
      texts: TEXTS,
      model: "tiny",
      inputType: "search_query",
      embeddingTypes: [...types],
    });
    for (const e of [
      r1.embeddings as Record<string, number[][]>,
      r2.embeddings as Record<string, number[][]>,
    ]) {
      assert.ok(maxAbsDiff(e.float as number[][], query) < 1e-6);
      assert.deepEqual(e.int8, query.map(int8));
      assert.deepEqual(
        e.uint8,
        query.map(int8).map((v) => v.map((x) => x + 128)),
      );
      assert.deepEqual(e.ubinary, query.map(ubinary));
      assert.deepEqual(
        e.binary,
        query.map(ubinary).map((v) => v.map((x) => x - 128)),
      );
    }
    // v1 without embedding types: plain float lists.
    const plain = await v1.embed({ texts: TEXTS, model: "tiny", inputType: "search_document" });
    assert.ok(maxAbsDiff(plain.embeddings as number[][], passage) < 1e-6);
    // v2 output_dimension: Matryoshka.
    const short = await v2.embed({
      texts: TEXTS,
      model: "tiny",
      inputType: "search_document",
      embeddingTypes: ["float"],
      outputDimension: 16,
    });
    assert.equal(short.embeddings.float?.[0]?.length, 16);
  });

  test("Cohere errors come in Cohere's shape", async () => {
    const res = await fetch(`${server.url}/v2/embed`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", texts: [] }),
    });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { id: string; message: string };
    assert.equal(typeof body.id, "string");
    assert.match(body.message, /texts/);
    const none = await fetch(`${server.url}/v2/embed`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", texts: ["river ".repeat(1000)], truncate: "NONE" }),
    });
    assert.equal(none.status, 400);
    assert.match(((await none.json()) as { message: string }).message, /more than the model's limit/);
  });

  test("LangChain's CohereEmbeddings sends the input type itself: query and passage vectors", async () => {
    // @langchain/cohere brings its own cohere-ai (v7); the v8 client speaks the same v1 API.
    const client = new CohereClient({ token: "x", environment: server.url }) as unknown as NonNullable<
      ConstructorParameters<typeof CohereEmbeddings>[0]
    >["client"];
    const lc = new CohereEmbeddings({ model: "tiny", client });
    assert.ok(maxAbsDiff([await lc.embedQuery(TEXTS[0] as string)], [query[0] as number[]]) < 1e-6);
    assert.ok(maxAbsDiff(await lc.embedDocuments(TEXTS), passage) < 1e-6);
  });

  test('"MODEL:query" names: LlamaIndex and LangChain OpenAI embedders get the query instruction by name', async () => {
    const models = (await (await fetch(`${server.url}/v1/models`)).json()) as {
      data: { id: string; input_type?: string }[];
    };
    assert.deepEqual(
      models.data.map((m) => [m.id, m.input_type ?? null]),
      [
        ["tiny", null],
        ["tiny:query", "query"],
      ],
    );
    const llama = new OpenAIEmbedding({ model: "tiny:query", apiKey: "x", baseURL: `${server.url}/v1` });
    assert.ok(maxAbsDiff([await llama.getTextEmbedding(TEXTS[1] as string)], [query[1] as number[]]) < 1e-6);
    const lc = new OpenAIEmbeddings({
      model: "tiny:query",
      apiKey: "x",
      configuration: { baseURL: `${server.url}/v1` },
    });
    assert.ok(maxAbsDiff([await lc.embedQuery(TEXTS[2] as string)], [query[2] as number[]]) < 1e-6);
    const contradiction = await fetch(`${server.url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny:query", input: "x", input_type: "passage" }),
    });
    assert.equal(contradiction.status, 400);
  });

  test("embedding_type on /v1/embeddings (float JSON and base64 bytes) and in bulk-job results", async () => {
    const ints = await embeddings(server.url, { input: TEXTS, input_type: "query", embedding_type: "int8" });
    assert.deepEqual(ints, query.map(int8));
    const res = await fetch(`${server.url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "tiny",
        input: TEXTS,
        input_type: "query",
        embedding_type: "ubinary",
        encoding_format: "base64",
      }),
    });
    const b64 = ((await res.json()) as { data: { embedding: string }[] }).data.map((d) => [
      ...Buffer.from(d.embedding, "base64"),
    ]);
    assert.deepEqual(b64, query.map(ubinary));

    const job = (await (
      await fetch(`${server.url}/v1/jobs`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", input: TEXTS, input_type: "search_query" }),
      })
    ).json()) as { id: string };
    for (let i = 0; i < 400; i++) {
      const j = (await (await fetch(`${server.url}/v1/jobs/${job.id}`)).json()) as { status: string };
      if (j.status === "completed") break;
      await new Promise((r) => setTimeout(r, 25));
    }
    const npy = Buffer.from(
      await (await fetch(`${server.url}/v1/jobs/${job.id}/results?format=npy&dtype=int8`)).arrayBuffer(),
    );
    const headerLength = npy.readUInt16LE(8);
    const header = npy.subarray(10, 10 + headerLength).toString("latin1");
    assert.match(header, /'descr': '\|i1'.*'shape': \(3, 32\)/);
    const body = new Int8Array(npy.buffer, npy.byteOffset + 10 + headerLength, 3 * 32);
    assert.deepEqual([...body], query.flatMap(int8));
    const bits = Buffer.from(
      await (await fetch(`${server.url}/v1/jobs/${job.id}/results?format=npy&dtype=ubinary`)).arrayBuffer(),
    );
    assert.match(bits.subarray(10, 10 + bits.readUInt16LE(8)).toString("latin1"), /'shape': \(3, 4\)/);
  });
});
