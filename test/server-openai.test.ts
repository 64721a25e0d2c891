import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { OpenAIEmbeddings } from "@langchain/openai";
import { Tiktoken } from "js-tiktoken/lite";
import cl100k from "js-tiktoken/ranks/cl100k_base";
import OpenAI from "openai";
import { type RunningServer, startServer } from "../src/api/start.js";
import { AUTO_BATCH_TOKENS } from "../src/config.js";
import { assertClose, loadGolden, modelPath } from "./helpers.js";

const golden = loadGolden("tiny-bge");
const caseOf = (name: string) => golden.cases.find((c: { name: string }) => c.name === name);
const INSTRUCTION = caseOf("queries_with_instruction").init.queryInstructionForRetrieval as string;

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

describe("OpenAI-compatible embeddings over HTTP", () => {
  let server: RunningServer;
  let base: string;

  before(async () => {
    server = await startServer(
      [
        {
          source: modelPath("tiny-bge"),
          alias: "tiny-bge",
          options: { poolingMethod: "cls", queryInstructionForRetrieval: INSTRUCTION },
        },
      ],
      {
        host: "127.0.0.1",
        port: 0,
        logLevel: "warn",
        limits: { maxInputs: 20, maxRequestTokens: 4000, bodyLimit: 64 * 1024, requestTimeoutMs: 60_000 },
      },
    );
    await server.loaded;
    base = server.url;
  });
  after(() => server.close());

  test("the official openai client: base64 (its default) and float give the reference vectors", async () => {
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused" });
    const corpus = caseOf("corpus_normalized");
    const viaBase64 = await client.embeddings.create({ model: "tiny-bge", input: corpus.inputs });
    const viaFloat = await client.embeddings.create({
      model: "tiny-bge",
      input: corpus.inputs,
      encoding_format: "float",
    });
    assert.equal(viaBase64.object, "list");
    assert.equal(viaBase64.model, "tiny-bge");
    assert.deepEqual(
      viaBase64.data.map((d) => d.index),
      corpus.inputs.map((_: string, i: number) => i),
    );
    assertClose(
      viaBase64.data.map((d) => d.embedding as unknown as number[]),
      corpus.output,
      1e-5,
      "base64",
    );
    assertClose(
      viaFloat.data.map((d) => d.embedding),
      corpus.output,
      1e-5,
      "float",
    );
    // base64 carries float32 exactly; the float form keeps 9 significant digits, also exact for float32
    assert.deepEqual(
      viaFloat.data.map((d) => d.embedding.map(Math.fround)),
      viaBase64.data.map((d) => d.embedding),
    );
    assert.ok(viaBase64.usage.prompt_tokens > corpus.inputs.length);
    assert.equal(viaBase64.usage.total_tokens, viaBase64.usage.prompt_tokens);
  });

  test("single input, input_type query applies the instruction, dimensions re-normalises", async () => {
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused" });
    const queries = caseOf("queries_with_instruction");
    const res = await client.embeddings.create({
      model: "tiny-bge",
      input: queries.inputs,
      input_type: "query", // extension field, unknown to the OpenAI typings
    } as OpenAI.Embeddings.EmbeddingCreateParams);
    assertClose(
      res.data.map((d) => d.embedding as unknown as number[]),
      queries.output,
      1e-5,
      "queries",
    );

    const one = await client.embeddings.create({
      model: "tiny-bge",
      input: "What is machine learning?",
      dimensions: 8,
    });
    assert.equal(one.data.length, 1);
    const v = one.data[0]?.embedding as number[];
    assert.equal(v.length, 8);
    assert.ok(Math.abs(Math.hypot(...v) - 1) < 1e-6);
    const full = caseOf("single_string").output as number[];
    const head = full.slice(0, 8);
    const norm = Math.hypot(...head);
    assertClose(
      v,
      head.map((x) => x / norm),
      1e-5,
      "matryoshka",
    );
  });

  test("models.list() and a 400 surfaced as the client's error", async () => {
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
    const models = [];
    for await (const m of client.models.list()) models.push(m);
    // Every embedding model is also served as "MODEL:query" (its query side).
    assert.deepEqual(
      models.map((m) => m.id),
      ["tiny-bge", "tiny-bge:query"],
    );
    const m = models[0] as unknown as Record<string, unknown>;
    assert.equal(m.dimensions, 32);
    assert.equal(m.max_input_tokens, 512);
    assert.equal(m.kind, "embedding");
    await assert.rejects(client.embeddings.create({ model: "tiny-bge", input: "x", dimensions: 33 }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.status, 400);
      assert.match(e.message, /dimensions must be between 1 and 32/);
      assert.equal((e.error as { param: string }).param, "dimensions");
      return true;
    });
  });

  test("another model name is served by the only embedding model, and the response names it", async () => {
    const res = await post(`${base}/v1/embeddings`, { model: "text-embedding-3-small", input: "hi" });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { model: string }).model, "tiny-bge");
    const alias = await post(`${base}/embeddings`, { model: "tiny-bge", input: ["", ""] });
    assert.equal(alias.status, 200, "empty strings are valid inputs");
  });

  test("LangChain OpenAIEmbeddings with only baseURL changed gives the library's vectors", async () => {
    const embeddings = new OpenAIEmbeddings({
      model: "tiny-bge",
      apiKey: "unused",
      configuration: { baseURL: `${base}/v1` },
    });
    const corpus = caseOf("corpus_normalized");
    const texts = (corpus.inputs as string[]).filter((t) => !t.includes("\n"));
    const expected = texts.map((t) => corpus.output[(corpus.inputs as string[]).indexOf(t)] as number[]);
    assertClose(await embeddings.embedDocuments(texts), expected, 1e-5, "embedDocuments");
    const q = await embeddings.embedQuery(texts[0] as string);
    assertClose(q, expected[0] as number[], 1e-5, "embedQuery");
  });

  test("token ids (cl100k_base, as LangChain's Python client sends) embed like the text itself", async () => {
    const enc = new Tiktoken(cl100k);
    const texts = [
      "What is machine learning?",
      "I love pizza 🍕 and café crème!",
      "机器学习是人工智能的一个分支。",
    ];
    const byText = (await (
      await post(`${base}/v1/embeddings`, { model: "tiny-bge", input: texts })
    ).json()) as {
      data: { embedding: number[] }[];
    };
    const ids = texts.map((t) => enc.encode(t));
    const byIds = (await (await post(`${base}/v1/embeddings`, { model: "tiny-bge", input: ids })).json()) as {
      data: { embedding: number[] }[];
    };
    assert.deepEqual(
      byIds.data.map((d) => d.embedding),
      byText.data.map((d) => d.embedding),
    );
    const single = await post(`${base}/v1/embeddings`, { model: "tiny-bge", input: ids[0] });
    assert.equal(single.status, 200);
    const bad = await post(`${base}/v1/embeddings`, { model: "tiny-bge", input: [[1, 2, 999999]] });
    assert.equal(bad.status, 400);
    assert.match(
      ((await bad.json()) as { error: { message: string } }).error.message,
      // Past cl100k_base's largest id the schema refuses it (maximum 100276).
      /outside the cl100k_base vocabulary|input\[0\]\[2\] must be between 0 and 100276, got 999999/,
    );
  });

  test("bad requests get OpenAI-shaped 400s that name the field", async () => {
    const cases: [unknown, number, string | null, RegExp][] = [
      ["{not json", 400, null, /not valid JSON/],
      [{ model: "tiny-bge" }, 400, "input", /missing required field "input"/],
      [{ input: "x" }, 400, "model", /missing required field "model"/],
      [
        { model: "tiny-bge", input: 5 },
        400,
        "input",
        /input must be a string, an array of strings, or token ids/,
      ],
      [{ model: "tiny-bge", input: [1, "a"] }, 400, "input", /input must be/],
      [{ model: "tiny-bge", input: [] }, 400, "input", /input must not be empty/],
      [{ model: "tiny-bge", input: "x", encoding_format: "int8" }, 400, "encoding_format", /encoding_format/],
      [{ model: "tiny-bge", input: "x", dimensions: 0 }, 400, "dimensions", /dimensions must be at least 1/],
      [{ model: "tiny-bge", input: "x", dimensions: 33 }, 400, "dimensions", /between 1 and 32/],
      [{ model: "tiny-bge", input: "x", dimensions: 2.5 }, 400, "dimensions", /dimensions must be integer/],
      [{ model: "tiny-bge", input: "x", input_type: "code" }, 400, "input_type", /input_type/],
      [
        { model: "tiny-bge", input: Array(21).fill("x") },
        400,
        "input",
        /input has 21 items; at most 20 are accepted/,
      ],
      [
        { model: "tiny-bge", input: Array(8).fill("word ".repeat(600)) },
        400,
        "input",
        /at most 4000 are accepted per request/,
      ],
      [
        { model: "tiny-bge", input: "word ".repeat(600), truncate: false },
        400,
        "input",
        /input 0 has \d+ tokens, more than the model's limit of 512/,
      ],
    ];
    for (const [body, status, param, message] of cases) {
      const res = await post(`${base}/v1/embeddings`, body as object);
      const json = (await res.json()) as {
        error: { message: string; type: string; param: string | null; code: string | null };
      };
      assert.equal(res.status, status, JSON.stringify(body).slice(0, 80));
      assert.deepEqual(Object.keys(json), ["error"]);
      assert.deepEqual(Object.keys(json.error).sort(), ["code", "message", "param", "type"]);
      assert.equal(json.error.param, param, json.error.message);
      assert.match(json.error.message, message);
      assert.equal(json.error.type, "invalid_request_error");
    }
    // over-long inputs are truncated by default, as FlagEmbedding does
    assert.equal(
      (await post(`${base}/v1/embeddings`, { model: "tiny-bge", input: "word ".repeat(600) })).status,
      200,
    );
  });

  test("bodies over the limit get a 413 in OpenAI's shape; unknown routes a 404", async () => {
    const res = await post(`${base}/v1/embeddings`, { model: "tiny-bge", input: "x".repeat(70 * 1024) });
    assert.equal(res.status, 413);
    const json = (await res.json()) as { error: { code: string } };
    assert.equal(json.error.code, "request_too_large");
    const missing = await fetch(`${base}/v1/nothing`);
    assert.equal(missing.status, 404);
    assert.ok(((await missing.json()) as { error: unknown }).error);
  });

  test("TEI routes: /embed, /tokenize, /decode, /info", async () => {
    const corpus = caseOf("corpus_normalized");
    const embed = await post(`${base}/embed`, { inputs: corpus.inputs.slice(0, 3) });
    assertClose((await embed.json()) as number[][], corpus.output.slice(0, 3), 1e-5, "/embed");
    const raw = (await (
      await post(`${base}/embed`, { inputs: "hi", normalize: false })
    ).json()) as number[][];
    assert.ok(Math.abs(Math.hypot(...(raw[0] as number[])) - 1) > 1e-3, "normalize:false gives raw vectors");
    const query = (await (
      await post(`${base}/embed`, { inputs: caseOf("queries_with_instruction").inputs, prompt_name: "query" })
    ).json()) as number[][];
    assertClose(query, caseOf("queries_with_instruction").output, 1e-5, "prompt_name query");
    const tooLong = await post(`${base}/embed`, { inputs: "word ".repeat(600), truncate: false });
    assert.equal(tooLong.status, 413);
    assert.deepEqual(Object.keys((await tooLong.json()) as object).sort(), ["error", "error_type"]);
    const badPrompt = await post(`${base}/embed`, { inputs: "x", prompt_name: "nope" });
    assert.equal(badPrompt.status, 422);
    const empty = await post(`${base}/embed`, { inputs: [] });
    assert.equal(empty.status, 400);

    const tokens = (await (await post(`${base}/tokenize`, { inputs: ["hello world"] })).json()) as {
      id: number;
      text: string;
      special: boolean;
    }[][];
    assert.equal(tokens[0]?.[0]?.text, "[CLS]");
    assert.equal(tokens[0]?.[0]?.special, true);
    const ids = tokens[0]?.map((t) => t.id) as number[];
    const decoded = (await (await post(`${base}/decode`, { ids })).json()) as string[];
    assert.deepEqual(decoded, ["hello world"]);
    const info = (await (await fetch(`${base}/info`)).json()) as Record<string, unknown>;
    assert.equal(info.max_input_length, 512);
    assert.deepEqual(info.model_type, { embedding: { pooling: "cls" } });
    assert.equal(info.max_batch_tokens, AUTO_BATCH_TOKENS.cpu, "a CPU server's batch size, resolved");
  });

  test("health, readiness, metrics and the OpenAPI document", async () => {
    assert.equal((await fetch(`${base}/health`)).status, 200);
    const ready = await fetch(`${base}/ready`);
    assert.equal(ready.status, 200);
    const body = (await ready.json()) as {
      status: string;
      models: string[];
      workers: { device: string; live: boolean }[];
    };
    assert.equal(body.status, "ready");
    assert.deepEqual(body.models, ["tiny-bge"]);
    assert.deepEqual(
      body.workers.map((w) => [w.device, w.live]),
      [["cpu", true]],
    );
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(
      metrics,
      /flagserve_http_requests_total\{route="\/v1\/embeddings",method="POST",status="200"\} \d+/,
    );
    assert.match(metrics, /flagserve_tokens_total\{model="tiny-bge"\} \d+/);
    assert.match(metrics, /flagserve_batch_size_bucket\{le="1",model="tiny-bge"\}/);
    assert.match(metrics, /flagserve_http_request_duration_seconds_bucket/);
    assert.match(metrics, /flagserve_queue_depth\{model="tiny-bge"\} 0/);
    const spec = (await (await fetch(`${base}/openapi.json`)).json()) as {
      openapi: string;
      paths: Record<string, unknown>;
    };
    assert.equal(spec.openapi, "3.0.3");
    for (const p of ["/v1/embeddings", "/v1/models", "/embed", "/tokenize", "/info", "/health", "/ready"])
      assert.ok(spec.paths[p], p);
    const docs = await fetch(`${base}/docs`);
    assert.equal(docs.status, 200);
  });
});
