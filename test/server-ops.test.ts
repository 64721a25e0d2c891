import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { connect } from "node:net";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import OpenAI from "openai";
import { type RunningServer, startServer } from "../src/api/start.js";
import type { ModelSpec } from "../src/serving/executor.js";
import { modelPath, ROOT, tempDir } from "./helpers.js";
import { commitSha, FakeHub, filesOf } from "./support/fake-hub.js";

const TINY: ModelSpec = { source: modelPath("tiny-bge"), alias: "tiny", options: { poolingMethod: "cls" } };
const quiet = { host: "127.0.0.1", port: 0, logLevel: "warn" };

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

describe("API keys and CORS", () => {
  let server: RunningServer;
  after(() => server.close());

  test("bearer keys: missing or wrong get 401 in each dialect's shape, any configured key passes", async () => {
    server = await startServer([TINY], {
      ...quiet,
      apiKeys: ["key-one", "key-two"],
      corsOrigins: ["https://app.example"],
    });
    await server.loaded;
    const url = `${server.url}/v1/embeddings`;
    const body = { model: "tiny", input: "hi" };
    const none = await post(url, body);
    assert.equal(none.status, 401);
    assert.deepEqual(((await none.json()) as { error: { code: string } }).error.code, "invalid_api_key");
    assert.equal((await post(url, body, { authorization: "Bearer key-three" })).status, 401);
    assert.equal((await post(url, body, { authorization: "Bearer key-two" })).status, 200);
    assert.equal((await post(url, body, { authorization: "bearer key-one" })).status, 200);
    const tei = await post(`${server.url}/embed`, { inputs: "hi" });
    assert.equal(tei.status, 401);
    assert.deepEqual(Object.keys((await tei.json()) as object).sort(), ["error", "error_type"]);
    for (const open of ["/health", "/ready", "/metrics", "/openapi.json"]) {
      assert.equal((await fetch(`${server.url}${open}`)).status, 200, open);
    }
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 });
    await assert.rejects(client.embeddings.create({ model: "tiny", input: "x" }), OpenAI.AuthenticationError);
    const good = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "key-one" });
    assert.equal((await good.embeddings.create({ model: "tiny", input: "x" })).data.length, 1);
  });

  test("CORS preflight for a configured origin", async () => {
    const res = await fetch(`${server.url}/v1/embeddings`, {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
      },
    });
    assert.ok(res.status === 204 || res.status === 200, String(res.status));
    assert.equal(res.headers.get("access-control-allow-origin"), "https://app.example");
  });
});

describe("saturation and deadlines", () => {
  test("a full queue answers 429 with Retry-After, and the openai client's retry then succeeds", async () => {
    // A long collection window keeps the first request queued; the queue holds 2 inputs.
    const server = await startServer([TINY], { ...quiet, scheduler: { windowMs: 400, maxQueuedInputs: 2 } });
    try {
      await server.loaded;
      const url = `${server.url}/v1/embeddings`;
      const results = await Promise.all(
        Array.from({ length: 8 }, () => post(url, { model: "tiny", input: ["a", "b"] })),
      );
      const statuses = results.map((r) => r.status).sort();
      assert.deepEqual(statuses, [200, 429, 429, 429, 429, 429, 429, 429]);
      const refused = results.find((r) => r.status === 429) as Response;
      assert.ok(Number(refused.headers.get("retry-after")) >= 1);
      const body = (await refused.json()) as { error: { type: string; code: string } };
      assert.equal(body.error.code, "rate_limit_exceeded");

      const blocker = post(url, { model: "tiny", input: ["a", "b"] });
      await new Promise((r) => setTimeout(r, 50));
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "x", maxRetries: 2 });
      const started = Date.now();
      const res = await client.embeddings.create({ model: "tiny", input: "c" });
      assert.equal(res.data.length, 1);
      assert.ok(Date.now() - started >= 900, "the client waited for Retry-After before retrying");
      assert.equal((await blocker).status, 200);
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      assert.match(
        metrics,
        /flagserve_http_requests_total\{route="\/v1\/embeddings",method="POST",status="429"\} \d+/,
      );
      assert.match(metrics, /flagserve_rejected_total\{model="tiny",reason="queue_full"\} [1-9]/);
    } finally {
      await server.close();
    }
  });

  test("a request past its deadline gets a 503 instead of waiting", async () => {
    const server = await startServer([TINY], {
      ...quiet,
      scheduler: { windowMs: 3000 },
      limits: { maxInputs: 2048, maxRequestTokens: 1e6, bodyLimit: 1e6, requestTimeoutMs: 150 },
    });
    try {
      await server.loaded;
      const started = Date.now();
      const res = await post(`${server.url}/v1/embeddings`, { model: "tiny", input: "x" });
      assert.equal(res.status, 503);
      assert.ok(Date.now() - started < 2000);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, "timeout");
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      assert.match(metrics, /flagserve_rejected_total\{model="tiny",reason="deadline"\} 1/);
    } finally {
      await server.close();
    }
  });
});

describe("loading and shutdown", () => {
  test("/ready is 503 while the model downloads, model routes say so, then both turn 200", async () => {
    const hub = new FakeHub();
    const cache = await tempDir();
    const sha = commitSha("x");
    hub.addRepo("org/tiny", {
      refs: { main: sha },
      commits: { [sha]: await filesOf(modelPath("tiny-bge")) },
    });
    await hub.start();
    hub.delayMs = 150;
    const server = await startServer(
      [
        {
          source: "org/tiny",
          options: { poolingMethod: "cls", hub: { endpoint: hub.url, cacheDir: cache.path } },
        },
      ],
      quiet,
    );
    try {
      const ready = await fetch(`${server.url}/ready`);
      assert.equal(ready.status, 503);
      assert.equal(((await ready.json()) as { status: string }).status, "loading");
      assert.equal((await fetch(`${server.url}/health`)).status, 200);
      const early = await post(`${server.url}/v1/embeddings`, { model: "org/tiny", input: "x" });
      assert.equal(early.status, 503);
      assert.ok(early.headers.get("retry-after"));
      await server.loaded;
      assert.equal((await fetch(`${server.url}/ready`)).status, 200);
      assert.equal(
        (await post(`${server.url}/v1/embeddings`, { model: "org/tiny", input: "x" })).status,
        200,
      );
    } finally {
      await server.close();
      await hub.stop();
      await cache.cleanup();
    }
  });

  test("while draining, a request on a kept-alive connection gets a 503 in the route's error shape", async () => {
    const server = await startServer([TINY], { ...quiet, scheduler: { windowMs: 1500 } });
    await server.loaded;
    const { hostname, port } = new URL(server.url);
    const sock = connect(Number(port), hostname);
    let data = "";
    sock.on("data", (d: Buffer) => {
      data += d.toString();
    });
    const request = (path: string, body: unknown) => {
      const json = JSON.stringify(body);
      return `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`;
    };
    // The first request waits in the batch window, so the connection is busy when draining starts.
    sock.write(request("/v1/embeddings", { model: "tiny", input: "x" }));
    await new Promise((r) => setTimeout(r, 300));
    const closing = server.close();
    await new Promise((r) => setTimeout(r, 50));
    sock.write(request("/v1/embeddings", { model: "tiny", input: "y" }));
    await closing;
    for (let i = 0; i < 40 && !/shutting_down/.test(data); i++) await new Promise((r) => setTimeout(r, 50));
    sock.destroy();
    const [first, second] = data.split(/(?=HTTP\/1\.1 )/);
    assert.match(first as string, /^HTTP\/1\.1 200/);
    assert.match(second as string, /^HTTP\/1\.1 503/);
    const body = JSON.parse((second as string).slice((second as string).indexOf("\r\n\r\n") + 4)) as {
      error: { code: string; type: string };
    };
    assert.deepEqual([body.error.code, body.error.type], ["shutting_down", "server_error"]);
  });

  test("SIGTERM: the in-flight request completes, the process exits 0", async () => {
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        join(ROOT, "src", "cli.ts"),
        "serve",
        "--model",
        `${modelPath("tiny-bge")}=tiny`,
        "--pooling",
        "cls",
        "--port",
        "0",
        "--batch-window-ms",
        "1500",
      ],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    let log = "";
    const url = await new Promise<string>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        log += chunk.toString();
        const m = /listening on (http:\/\/[^ ]+) /.exec(log);
        if (m && /all models ready/.test(log)) resolve(m[1] as string);
      };
      child.stdout.on("data", onData);
      child.stderr.on("data", onData);
      child.once("exit", (code) => reject(new Error(`server exited early (${code}): ${log}`)));
    });
    const inFlight = post(`${url}/v1/embeddings`, { model: "tiny", input: "still running" });
    await new Promise((r) => setTimeout(r, 300));
    const exited = once(child, "exit");
    child.kill("SIGTERM");
    const res = await inFlight;
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { data: unknown[] }).data.length, 1);
    const [code] = await exited;
    assert.equal(code, 0, log);
    await assert.rejects(fetch(`${url}/health`));
  });
});

describe("model names and per-model defaults", () => {
  test("--strict-models answers 404 model_not_found for other names; a model's default input type applies", async () => {
    const server = await startServer(
      [
        {
          source: modelPath("tiny-bge"),
          alias: "q-model",
          options: { poolingMethod: "cls", queryInstructionForRetrieval: "query: " },
          defaultInputType: "query",
        },
      ],
      { ...quiet, strictModels: true },
    );
    try {
      await server.loaded;
      const other = await post(`${server.url}/v1/embeddings`, {
        model: "text-embedding-3-small",
        input: "x",
      });
      assert.equal(other.status, 404);
      const body = (await other.json()) as { error: { code: string; param: string } };
      assert.equal(body.error.code, "model_not_found");
      assert.equal(body.error.param, "model");
      const vec = async (extra: Record<string, unknown>) =>
        (
          (await (
            await post(`${server.url}/v1/embeddings`, {
              model: "q-model",
              input: "x",
              encoding_format: "float",
              ...extra,
            })
          ).json()) as {
            data: { embedding: number[] }[];
          }
        ).data[0]?.embedding;
      assert.deepEqual(await vec({}), await vec({ input_type: "query" }), "the model's default is query");
      assert.notDeepEqual(await vec({}), await vec({ input_type: "passage" }));
    } finally {
      await server.close();
    }
  });
});
