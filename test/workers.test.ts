import assert from "node:assert/strict";
import { cp, rename } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { type RunningServer, startServer } from "../src/api/start.js";
import { FlagserveError } from "../src/runtime/errors.js";
import { TextTokenizer } from "../src/runtime/tokenizer.js";
import type { ModelSpec } from "../src/serving/executor.js";
import { DeadlineError } from "../src/serving/scheduler.js";
import { parseWorkerDevices, WorkerPoolExecutor } from "../src/serving/worker-pool.js";
import { maxAbsDiff, modelPath, tempDir } from "./helpers.js";

const TINY: ModelSpec = {
  source: modelPath("tiny-bge"),
  alias: "tiny",
  options: { poolingMethod: "cls", queryInstructionForRetrieval: "query: " },
};
const quiet = { host: "127.0.0.1", port: 0, logLevel: "error" };

interface EmbeddingsJson {
  data: { embedding: number[] }[];
}

async function embed(base: string, body: Record<string, unknown>): Promise<Response> {
  return fetch(`${base}/v1/embeddings`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "tiny", encoding_format: "float", ...body }),
  });
}

function workersOf(
  server: RunningServer,
): Promise<{ device: string; pid: number; live: boolean; restarts: number }[]> {
  return fetch(`${server.url}/ready`)
    .then((r) => r.json())
    .then(
      (j) => (j as { workers: { device: string; pid: number; live: boolean; restarts: number }[] }).workers,
    );
}

const WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split(" ");
function text(i: number): string {
  return Array.from({ length: 1 + ((i * 7) % 40) }, (_, k) => WORDS[(i + k) % WORDS.length]).join(" ");
}

test("--devices parsing: cpu, cpu:N splitting the cores, CUDA lists", () => {
  assert.deepEqual(parseWorkerDevices("cpu", 8), [{ device: "cpu" }]);
  assert.deepEqual(parseWorkerDevices("cpu:4", 8), Array(4).fill({ device: "cpu", threads: 2 }));
  assert.deepEqual(parseWorkerDevices("cuda:0,cuda:1"), [{ device: "cuda:0" }, { device: "cuda:1" }]);
  assert.throws(() => parseWorkerDevices("tpu:0"), /unknown device/);
});

describe("dynamic batching across worker processes", () => {
  test("concurrent mixed requests give the same vectors as one-by-one calls", async () => {
    const server = await startServer([TINY], {
      ...quiet,
      devices: "cpu:2",
      scheduler: { maxBatchSize: 16, maxBatchTokens: 2048 },
    });
    try {
      await server.loaded;
      const requests = Array.from({ length: 40 }, (_, i) => ({
        input: Array.from({ length: 1 + (i % 5) }, (_, k) => text(i * 5 + k)),
        ...(i % 3 === 0 ? { input_type: "query" } : {}),
        ...(i % 4 === 0 ? { dimensions: 16 } : {}),
      }));
      const together = await Promise.all(
        requests.map((r) => embed(server.url, r).then((res) => res.json() as Promise<EmbeddingsJson>)),
      );
      for (const [i, r] of requests.entries()) {
        const alone = (await (await embed(server.url, r)).json()) as EmbeddingsJson;
        const diff = maxAbsDiff(
          (together[i] as EmbeddingsJson).data.map((d) => d.embedding),
          alone.data.map((d) => d.embedding),
        );
        assert.ok(diff < 1e-5, `request ${i}: ${diff}`);
      }
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      const merged = /flagserve_batch_requests_bucket\{le="1",model="tiny"\} (\d+)/.exec(metrics);
      const total = /flagserve_batch_requests_count\{model="tiny"\} (\d+)/.exec(metrics);
      assert.ok(Number(merged?.[1]) < Number(total?.[1]), "some batches merged several requests");
      const workers = await workersOf(server);
      assert.equal(workers.length, 2);
      assert.ok(workers.every((w) => w.live));
    } finally {
      await server.close();
    }
  });
});

describe("fault tolerance", () => {
  test("an error raised in a device worker keeps its kind across the process boundary", async () => {
    const pool = new WorkerPoolExecutor(parseWorkerDevices("cpu", 2));
    try {
      await pool.load([TINY]);
      const item = { ids: [2, 3], typeIds: [0, 0], want: { dense: true, sparse: false, colbert: false } };
      await assert.rejects(pool.embed("no-such-model", [item], 0), (err) => {
        assert.ok(err instanceof FlagserveError, String(err));
        assert.equal(err.kind, "invalid_input");
        return true;
      });
    } finally {
      await pool.close();
    }
  });

  test("a batch past its timeout is answered with a timeout and restarts one worker, not every worker it is retried on", async () => {
    const events: string[] = [];
    // 1 ms: any real batch overruns it, so the timeout path runs deterministically.
    const pool = new WorkerPoolExecutor(parseWorkerDevices("cpu:2", 2), {
      batchTimeoutMs: 1,
      onEvent: (e) => events.push(e),
    });
    try {
      const [info] = await pool.load([TINY]);
      const tok = await TextTokenizer.fromDir(info?.dir as string);
      const items = Array.from({ length: 64 }, (_, i) => ({
        ...tok.encode(text(i).repeat(8), 512),
        want: { dense: true, sparse: false, colbert: false },
      }));
      await assert.rejects(pool.embed("tiny", items, 0), (err) => {
        assert.ok(err instanceof DeadlineError, String(err));
        assert.match((err as Error).message, /ran longer than .* its worker was restarted/);
        return true;
      });
      // Wait for the killed worker's restart; a retry of the batch would then kill the other one too.
      const restarts = () => pool.status().reduce((n, w) => n + w.restarts, 0);
      for (let i = 0; i < 400 && !(restarts() >= 1 && pool.status().every((w) => w.live)); i++) {
        await new Promise((r) => setTimeout(r, 25));
      }
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(restarts(), 1, `workers: ${JSON.stringify(pool.status())}; events: ${events.join(", ")}`);
      assert.equal(events.filter((e) => e.startsWith("batch timed out")).length, 1);
    } finally {
      await pool.close();
    }
  });

  // The memory-return tests: a spike of 64 inputs of 512 tokens grows ONNX Runtime's arena.
  const spikeItems = (tok: TextTokenizer) =>
    Array.from({ length: 64 }, (_, i) => ({
      ...tok.encode(text(i).repeat(20), 512),
      want: { dense: true, sparse: false, colbert: false },
    }));
  /** Polls every 50 ms, for up to 10 s, until `done` holds (the caller asserts it afterwards). */
  const waitUntil = async (done: () => boolean) => {
    for (let i = 0; i < 200 && !done(); i++) await new Promise((r) => setTimeout(r, 50));
  };
  const assertSameDense = (after: { dense?: unknown }[], before: { dense?: unknown }[]) =>
    assert.ok(
      maxAbsDiff(
        after.map((r) => r.dense as Float32Array),
        before.map((r) => Array.from(r.dense as Float32Array)),
      ) < 1e-6,
    );

  test("memory returns: an idle worker that grew recreates its sessions, which then compute the same", async () => {
    const events: { event: string; detail: Record<string, unknown> }[] = [];
    const pool = new WorkerPoolExecutor(parseWorkerDevices("cpu", 2), {
      memoryReturnMib: 1,
      memoryReturnIdleMs: 300,
      onEvent: (event, detail) => events.push({ event, detail }),
    });
    try {
      const [info] = await pool.load([TINY]);
      const tok = await TextTokenizer.fromDir(info?.dir as string);
      const items = spikeItems(tok);
      const before = await pool.embed("tiny", items, 0);
      const freed = () => events.find((e) => e.event.includes("freed its sessions' memory"));
      await waitUntil(() => freed() !== undefined);
      const e = freed();
      assert.ok(e, `no memory return; events: ${JSON.stringify(events)}`);
      assert.ok(
        (e.detail.afterMib as number) < (e.detail.beforeMib as number),
        `memory went back: ${JSON.stringify(e.detail)}`,
      );
      assertSameDense(await pool.embed("tiny", items, 0), before);
    } finally {
      await pool.close();
    }
  });

  test("memory returns: a renewal that fails keeps the old sessions, and batches still run", async () => {
    const tmp = await tempDir("flagserve-renew-");
    const dir = join(tmp.path, "tiny-bge");
    await cp(modelPath("tiny-bge"), dir, { recursive: true });
    const events: string[] = [];
    const pool = new WorkerPoolExecutor(parseWorkerDevices("cpu", 2), {
      memoryReturnMib: 1,
      memoryReturnIdleMs: 300,
      onEvent: (event) => events.push(event),
    });
    try {
      const [info] = await pool.load([{ ...TINY, source: dir }]);
      const tok = await TextTokenizer.fromDir(info?.dir as string);
      const items = spikeItems(tok);
      // The graph disappears from disk: recreating a session from it fails.
      await rename(join(dir, "onnx"), join(dir, "onnx-gone"));
      const before = await pool.embed("tiny", items, 0);
      const failed = () => events.some((e) => e.includes("could not recreate"));
      await waitUntil(failed);
      assert.ok(failed(), `events: ${events.join(", ")}`);
      assertSameDense(await pool.embed("tiny", items, 0), before);
    } finally {
      await pool.close();
      await tmp.cleanup();
    }
  });

  test("kill -9 a worker under load: every request completes or fails cleanly, the pool recovers", async () => {
    const server = await startServer([TINY], {
      ...quiet,
      devices: "cpu:2",
      limits: { maxInputs: 2048, maxRequestTokens: 1e7, bodyLimit: 1e7, requestTimeoutMs: 30_000 },
    });
    try {
      await server.loaded;
      const [victim] = await workersOf(server);
      const statuses: number[] = [];
      const bodies: unknown[] = [];
      let killed = false;
      const load = Array.from({ length: 120 }, async (_, i) => {
        if (i === 30 && !killed) {
          killed = true;
          process.kill(victim?.pid as number, "SIGKILL");
        }
        const res = await embed(server.url, { input: Array.from({ length: 8 }, (_, k) => text(i + k)) });
        statuses.push(res.status);
        bodies.push(await res.json());
      });
      await Promise.all(load);
      assert.equal(statuses.length, 120, "no request hangs");
      for (const [i, s] of statuses.entries()) {
        assert.ok(s === 200 || s === 503, `status ${s}`);
        if (s === 503)
          assert.equal((bodies[i] as { error: { code: string } }).error.code, "worker_unavailable");
      }
      assert.ok(
        statuses.filter((s) => s === 200).length >= 100,
        `mostly served: ${statuses.filter((s) => s === 200).length}`,
      );
      // the pool comes back: a fresh worker replaces the dead one
      for (let t = 0; t < 100; t++) {
        const w = await workersOf(server);
        if (w.every((x) => x.live) && w.some((x) => x.restarts === 1)) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const after = await workersOf(server);
      assert.ok(
        after.every((w) => w.live),
        JSON.stringify(after),
      );
      assert.equal(
        after.reduce((n, w) => n + w.restarts, 0),
        1,
      );
      assert.ok(!after.some((w) => w.pid === victim?.pid));
      assert.equal((await embed(server.url, { input: "after the crash" })).status, 200);
    } finally {
      await server.close();
    }
  });

  test("with the only worker dead, /ready says so and requests wait for its restart", async () => {
    const server = await startServer([TINY], quiet);
    try {
      await server.loaded;
      const [only] = await workersOf(server);
      process.kill(only?.pid as number, "SIGKILL");
      let sawUnavailable = false;
      for (let t = 0; t < 20 && !sawUnavailable; t++) {
        const r = await fetch(`${server.url}/ready`);
        sawUnavailable =
          r.status === 503 && ((await r.json()) as { status: string }).status === "unavailable";
        if (!sawUnavailable) await new Promise((r) => setTimeout(r, 10));
      }
      assert.ok(sawUnavailable, "/ready reports the dead worker");
      const res = await embed(server.url, { input: "waits for the restart" });
      assert.equal(res.status, 200);
      assert.equal((await fetch(`${server.url}/ready`)).status, 200);
    } finally {
      await server.close();
    }
  });

  test("overload: 429s appear and no request waits past its deadline", async () => {
    const timeout = 1500;
    const server = await startServer([TINY], {
      ...quiet,
      scheduler: { maxQueuedInputs: 64, maxBatchSize: 8 },
      limits: { maxInputs: 2048, maxRequestTokens: 1e7, bodyLimit: 1e7, requestTimeoutMs: timeout },
    });
    try {
      await server.loaded;
      const durations: number[] = [];
      const statuses = await Promise.all(
        Array.from({ length: 150 }, async (_, i) => {
          const started = Date.now();
          const res = await embed(server.url, {
            input: Array.from({ length: 16 }, (_, k) => text(i + k).repeat(4)),
          });
          await res.arrayBuffer();
          durations.push(Date.now() - started);
          return res.status;
        }),
      );
      assert.ok(statuses.includes(429), "the bounded queue refuses some work");
      assert.ok(statuses.includes(200), "and serves the rest");
      assert.ok(
        statuses.every((s) => s === 200 || s === 429 || s === 503),
        String([...new Set(statuses)]),
      );
      assert.ok(Math.max(...durations) < timeout + 1500, `slowest ${Math.max(...durations)} ms`);
    } finally {
      await server.close();
    }
  });
});
