import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { type RunningServer, startServer } from "../src/api/start.js";
import { BGEM3FlagModel } from "../src/models/m3.js";
import { assertClose, loadGolden, modelPath } from "./helpers.js";

const golden = loadGolden("tiny-m3");
const encodeAll = golden.cases.find((c: { name: string }) => c.name === "encode_all");
const TEXTS = encodeAll.inputs as string[];

async function post(url: string, body: unknown): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

interface M3Item {
  index: number;
  embedding: number[] | string;
  sparse_embedding?: { indices: number[]; values: number[]; tokens?: string[] };
  colbert_embedding?: (number[] | string)[];
}

function decodeBase64(s: string): number[] {
  const buf = Buffer.from(s, "base64");
  return Array.from(new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4));
}

function sortedWeights(w: Record<string, number>): { indices: number[]; values: number[] } {
  const indices = Object.keys(w)
    .map(Number)
    .sort((a, b) => a - b);
  return { indices, values: indices.map((i) => w[String(i)] as number) };
}

describe("BGE-M3 over HTTP", () => {
  let server: RunningServer;
  before(async () => {
    server = await startServer(
      [
        { source: modelPath("tiny-m3"), alias: "m3", options: { modelClass: "encoder-only-m3" } },
        { source: modelPath("tiny-bge"), alias: "bge", options: { poolingMethod: "cls" } },
      ],
      { host: "127.0.0.1", port: 0, logLevel: "warn" },
    );
    await server.loaded;
  });
  after(() => server.close());

  test("/v1/embeddings keeps the OpenAI contract and adds sparse and ColBERT outputs on request", async () => {
    const res = await post(`${server.url}/v1/embeddings`, {
      model: "m3",
      input: TEXTS,
      encoding_format: "float",
      return: ["dense", "sparse", "colbert"],
    });
    assert.equal(res.status, 200);
    const json = (await res.json()) as { data: M3Item[] };
    assertClose(
      json.data.map((d) => d.embedding as number[]),
      encodeAll.output.dense_vecs,
      1e-5,
      "dense",
    );
    json.data.forEach((d, i) => {
      const want = sortedWeights(encodeAll.output.lexical_weights[i]);
      assert.deepEqual(d.sparse_embedding?.indices, want.indices, `sparse ids ${i}`);
      assertClose(d.sparse_embedding?.values as number[], want.values, 1e-5, `sparse ${i}`);
      assertClose(d.colbert_embedding as number[][], encodeAll.output.colbert_vecs[i], 1e-5, `colbert ${i}`);
    });
    // deterministic, and in the {indices, values} shape Qdrant and Pinecone take
    const again = (await (
      await post(`${server.url}/v1/embeddings`, {
        model: "m3",
        input: TEXTS,
        encoding_format: "float",
        return: ["sparse"],
      })
    ).json()) as { data: M3Item[] };
    assert.deepEqual(
      again.data.map((d) => d.sparse_embedding),
      json.data.map((d) => d.sparse_embedding),
    );
    for (const d of again.data) {
      const ids = d.sparse_embedding?.indices as number[];
      assert.deepEqual(
        ids,
        [...new Set(ids)].sort((a, b) => a - b),
      );
      assert.equal(d.colbert_embedding, undefined);
    }
  });

  test("base64 applies to ColBERT vectors too; return_tokens names the sparse ids; the openai client still works", async () => {
    const res = (await (
      await post(`${server.url}/v1/embeddings`, {
        model: "m3",
        input: [TEXTS[0]],
        encoding_format: "base64",
        return: ["colbert", "sparse"],
        return_tokens: true,
      })
    ).json()) as { data: M3Item[] };
    const item = res.data[0] as M3Item;
    assertClose(
      (item.colbert_embedding as string[]).map(decodeBase64),
      encodeAll.output.colbert_vecs[0],
      1e-5,
      "colbert base64",
    );
    assert.equal(item.sparse_embedding?.tokens?.length, item.sparse_embedding?.indices.length);
    assert.ok(item.sparse_embedding?.tokens?.every((t) => typeof t === "string"));
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "x" });
    const dense = await client.embeddings.create({ model: "m3", input: TEXTS });
    assertClose(
      dense.data.map((d) => d.embedding),
      encodeAll.output.dense_vecs,
      1e-5,
      "openai client",
    );
  });

  test("an M3-only field sent to another model is a 400 that says so", async () => {
    const res = await post(`${server.url}/v1/embeddings`, { model: "bge", input: "x", return: ["sparse"] });
    assert.equal(res.status, 400);
    const json = (await res.json()) as { error: { param: string; message: string } };
    assert.equal(json.error.param, "return");
    assert.match(json.error.message, /needs a BGE-M3 model; bge produces dense vectors only/);
    const tei = await post(`${server.url}/embed_sparse`, { model: "bge", inputs: "x" });
    assert.equal(tei.status, 422);
    assert.match(((await tei.json()) as { error: string }).error, /no sparse head/);
  });

  test("TEI /embed_sparse and /embed_all", async () => {
    const sparse = (await (
      await post(`${server.url}/embed_sparse`, { model: "m3", inputs: TEXTS })
    ).json()) as {
      index: number;
      value: number;
    }[][];
    sparse.forEach((items, i) => {
      const want = sortedWeights(encodeAll.output.lexical_weights[i]);
      assert.deepEqual(
        items.map((x) => x.index),
        want.indices,
      );
      assertClose(
        items.map((x) => x.value),
        want.values,
        1e-5,
        "embed_sparse",
      );
    });
    const all = (await (
      await post(`${server.url}/embed_all`, { model: "m3", inputs: TEXTS.slice(0, 2) })
    ).json()) as number[][][];
    all.forEach((m, i) => {
      assertClose(m, encodeAll.output.colbert_vecs[i], 1e-5, "embed_all m3");
    });
    const states = (await (
      await post(`${server.url}/embed_all`, { model: "bge", inputs: ["hello world", ""] })
    ).json()) as number[][][];
    assert.equal(states[1]?.length, 2, "[CLS] [SEP] of an empty input");
    assert.equal(states[0]?.[0]?.length, 32);
  });

  test("rerank with mode_weights gives M3's hybrid score; without, dense cosine", async () => {
    const query = "What is machine learning?";
    const docs = [
      "Machine learning is a subset of artificial intelligence that learns from data.",
      "best pizza recipe",
      "",
    ];
    const weights: [number, number, number] = [0.4, 0.2, 0.4];
    const res = (await (
      await post(`${server.url}/v1/rerank`, { model: "m3", query, documents: docs, mode_weights: weights })
    ).json()) as { results: { index: number; relevance_score: number }[] };
    const lib = await BGEM3FlagModel.load(modelPath("tiny-m3"));
    // one pair at a time: FlagEmbedding's batched compute_score adds padding rows to shorter passages
    const expected: number[] = [];
    for (const d of docs) {
      const s = await lib.computeScore([[query, d]], { weightsForDifferentModes: weights });
      expected.push(s["colbert+sparse+dense"][0] as number);
    }
    const dense: number[] = [];
    for (const d of docs) dense.push((await lib.computeScore([[query, d]])).dense[0] as number);
    await lib.close();
    const byIndex = new Map(res.results.map((r) => [r.index, r.relevance_score]));
    assertClose(
      docs.map((_, i) => byIndex.get(i) as number),
      expected,
      1e-5,
      "hybrid",
    );
    const plain = (await (
      await post(`${server.url}/v1/rerank`, { model: "m3", query, documents: docs })
    ).json()) as {
      results: { index: number; relevance_score: number }[];
    };
    const plainBy = new Map(plain.results.map((r) => [r.index, r.relevance_score]));
    assertClose(
      docs.map((_, i) => plainBy.get(i) as number),
      dense,
      1e-5,
      "dense",
    );
    const zero = await post(`${server.url}/v1/rerank`, {
      model: "m3",
      query,
      documents: docs,
      mode_weights: [0, 0, 0],
    });
    assert.equal(zero.status, 400);
  });
});
