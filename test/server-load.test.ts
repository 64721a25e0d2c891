import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { startServer } from "../src/api/start.js";
import type { ModelSpec } from "../src/serving/executor.js";
import { TokenizerPool } from "../src/serving/tokenizer-pool.js";
import { modelPath } from "./helpers.js";

const TINY: ModelSpec = { source: modelPath("tiny-bge"), alias: "tiny", options: { poolingMethod: "cls" } };
const quiet = { host: "127.0.0.1", port: 0, logLevel: "silent" };

function post(url: string, body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    ...(signal ? { signal } : {}),
  });
}

function metric(text: string, line: RegExp): number {
  const m = line.exec(text);
  return m ? Number(m[1]) : 0;
}

async function metrics(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

async function until(check: () => Promise<boolean>, what: string, tries = 200): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`never: ${what}`);
}

const text = (i: number) => `passage number ${i} about rivers, bridges and the history of cities`;

describe("heavy and hostile load", () => {
  test("a client that disconnects: its queued inputs leave the queue at once and are never computed", async () => {
    // A long batching window keeps the inputs queued while the client goes away.
    const server = await startServer([TINY], { ...quiet, scheduler: { windowMs: 2500 } });
    try {
      await server.loaded;
      const abort = new AbortController();
      const pending = post(
        `${server.url}/v1/embeddings`,
        { model: "tiny", input: Array.from({ length: 40 }, (_, i) => text(i)) },
        abort.signal,
      ).catch(() => undefined);
      const depth = async () =>
        metric(await metrics(server.url), /flagserve_queue_depth\{model="tiny"\} (\d+)/);
      await until(async () => (await depth()) === 40, "the inputs are queued");
      abort.abort();
      await pending;
      await until(async () => (await depth()) === 0, "the queue is empty again");
      const m = await metrics(server.url);
      assert.match(m, /flagserve_rejected_total\{model="tiny",reason="cancelled"\} 1/);
      // Past the window: no batch ran for it.
      await new Promise((r) => setTimeout(r, 2800));
      assert.equal(metric(await metrics(server.url), /flagserve_batch_size_count\{model="tiny"\} (\d+)/), 0);
    } finally {
      await server.close();
    }
  });

  test("overload is refused before any tokenizing: a full queue, and too many bytes in flight", async () => {
    const server = await startServer([TINY], {
      ...quiet,
      scheduler: { windowMs: 2000, maxQueuedInputs: 10 },
      limits: { inflightBodyBytes: 600_000 },
    });
    try {
      await server.loaded;
      const pieces = async () => metric(await metrics(server.url), /flagserve_tokenizer_pieces_total (\d+)/);
      const waiting = post(`${server.url}/v1/embeddings`, {
        model: "tiny",
        input: ["a", "b", "c", "d", "e", "f", "g", "h"],
      });
      await until(
        async () => metric(await metrics(server.url), /flagserve_queue_depth\{model="tiny"\} (\d+)/) === 8,
        "the first request is queued",
      );
      const before = await pieces();
      const refused = await post(`${server.url}/v1/embeddings`, {
        model: "tiny",
        input: ["i", "j", "k", "l"],
      });
      assert.equal(refused.status, 429);
      assert.ok(Number(refused.headers.get("retry-after")) >= 1);
      assert.equal(await pieces(), before, "the refused request was not tokenized");
      // A body that would take the bytes in flight past the bound is refused before it is read.
      const big = await post(`${server.url}/v1/embeddings`, { model: "tiny", input: ["x".repeat(700_000)] });
      assert.equal(big.status, 429);
      assert.match(((await big.json()) as { error: { message: string } }).error.message, /MiB of requests/);
      assert.equal(await pieces(), before);
      assert.equal((await waiting).status, 200);
    } finally {
      await server.close();
    }
  });

  test("/tokenize has a size limit and the request deadline: the thread working on it is stopped, the server stays responsive", async () => {
    const server = await startServer([TINY], {
      ...quiet,
      limits: { requestTimeoutMs: 400, tokenizeBodyLimit: 4 * 1024 * 1024 },
    });
    try {
      await server.loaded;
      const tooBig = await post(`${server.url}/tokenize`, { inputs: "word ".repeat(1_000_000) });
      assert.equal(tooBig.status, 413);
      // About 3 MB of text: seconds of tokenizing, far past the 400 ms deadline.
      const slow = post(`${server.url}/tokenize`, { inputs: "rivers and bridges ".repeat(160_000) });
      const health = await fetch(`${server.url}/health`);
      assert.equal(health.status, 200, "/health answers while a thread tokenizes");
      const res = await slow;
      assert.equal(res.status, 503);
      assert.equal(((await res.json()) as { error_type: string }).error_type, "unhealthy");
      await until(
        async () => metric(await metrics(server.url), /flagserve_tokenizer_thread_restarts_total (\d+)/) >= 1,
        "the stopped thread is replaced",
      );
      // The new thread loads its tokenizer first, which may take longer than this short deadline.
      let ok = await post(`${server.url}/tokenize`, { inputs: "hello world" });
      for (let i = 0; i < 30 && ok.status === 503; i++) {
        await new Promise((r) => setTimeout(r, 200));
        ok = await post(`${server.url}/tokenize`, { inputs: "hello world" });
      }
      assert.equal(ok.status, 200);
      assert.equal(((await ok.json()) as { id: number }[][])[0]?.length, 6, "[CLS] hel ##lo wor ##ld [SEP]");
    } finally {
      await server.close();
    }
  });

  test("max_chunks_per_doc is capped", async () => {
    const server = await startServer([TINY], quiet);
    try {
      await server.loaded;
      const res = await post(`${server.url}/v1/rerank`, {
        model: "tiny",
        query: "q",
        documents: ["d"],
        max_chunks_per_doc: 1e9,
      });
      assert.equal(res.status, 400);
      assert.match(await res.text(), /max_chunks_per_doc must be (<= 64|between 1 and 64)/);
    } finally {
      await server.close();
    }
  });
});

describe("tokenizer pool", () => {
  test("a thread that runs out of its heap is replaced; the request gets a clear error, the next ones work", async () => {
    const events: string[] = [];
    const pool = new TokenizerPool({ threads: 1, heapMb: 48, onEvent: (e) => events.push(e) });
    const dir = modelPath("tiny-bge");
    const spec = { kind: "tei-tokenize" as const, prefix: "", addSpecialTokens: true };
    try {
      await assert.rejects(
        pool.teiTokenize(dir, spec, ["a b c d e f g h ".repeat(2_000_000)]),
        /exhausted a tokenizer thread's memory \(48 MiB\)/,
      );
      const ok = await pool.encode(dir, { kind: "text", limit: 16, truncate: true, offset: 0 }, [
        "hello world",
      ]);
      assert.deepEqual(Array.from(ok.encodings[0]?.ids ?? []), [2, 107, 363, 412, 1092, 3]);
      assert.ok(events.includes("tokenizer thread restarted"), events.join(", "));
    } finally {
      await pool.close();
    }
  });
});
