import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import OpenAI, { toFile } from "openai";
import { startServer } from "../src/api/start.js";
import { maxAbsDiff, modelPath, tempDir } from "./helpers.js";
import { FlagserveProcess, freePort, peakRssMiB, RedisProcess } from "./support/processes.js";

const MODEL = `${modelPath("tiny-bge")}=tiny`;
const WORDS =
  "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split(
    " ",
  );
/** 1000 distinct texts; input i is DISTINCT[i % 1000], so one sync request gives every expected vector. */
const DISTINCT = Array.from(
  { length: 1000 },
  (_, i) =>
    `${Array.from({ length: 2 + (i % 9) }, (_, k) => WORDS[(i * 7 + k * 3) % WORDS.length]).join(" ")} ${i}`,
);
const text = (i: number) => DISTINCT[i % DISTINCT.length] as string;

interface Job {
  id: string;
  status: string;
  inputs: { total: number; done: number };
  errors: string[];
}

async function call(base: string, path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${base}${path}`, init);
}

async function json<T>(res: Response): Promise<T> {
  return (await res.json()) as T;
}

async function createJob(base: string, n: number, headers: Record<string, string> = {}): Promise<Job> {
  const res = await call(base, "/v1/jobs", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ model: "tiny", input: Array.from({ length: n }, (_, i) => text(i)) }),
  });
  assert.equal(res.status, 202, await res.clone().text());
  return json<Job>(res);
}

async function getJob(base: string, id: string): Promise<{ status: number; job?: Job }> {
  const res = await call(base, `/v1/jobs/${id}`).catch(() => undefined);
  if (!res) return { status: 0 };
  return res.ok ? { status: 200, job: await json<Job>(res) } : { status: res.status };
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 180_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function waitDone(base: string, id: string, timeoutMs = 240_000): Promise<Job> {
  let last: Job | undefined;
  await waitFor(
    async () => {
      const r = await getJob(base, id);
      last = r.job ?? last;
      return r.job !== undefined && ["completed", "failed", "cancelled"].includes(r.job.status);
    },
    `job ${id} to finish`,
    timeoutMs,
  );
  assert.equal(last?.status, "completed", JSON.stringify(last));
  return last as Job;
}

/** The vectors the synchronous endpoint gives every distinct text. */
async function syncVectors(base: string): Promise<Map<string, number[]>> {
  const res = await call(base, "/v1/embeddings", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "tiny", input: DISTINCT, encoding_format: "float" }),
  });
  const body = await json<{ data: { embedding: number[] }[] }>(res);
  return new Map(DISTINCT.map((t, i) => [t, body.data[i]?.embedding as number[]]));
}

/** Download JSONL results and check: every index exactly once, in order, equal to the sync vectors. */
async function checkResults(
  base: string,
  id: string,
  n: number,
  expected: Map<string, number[]>,
): Promise<void> {
  const res = await call(base, `/v1/jobs/${id}/results`);
  assert.equal(res.status, 200);
  const lines = (await res.text()).trim().split("\n");
  assert.equal(lines.length, n, "one line per input");
  let worst = 0;
  lines.forEach((line, i) => {
    const row = JSON.parse(line) as { index: number; embedding: number[] };
    assert.equal(row.index, i, "inputs in order, none twice, none missing");
    worst = Math.max(worst, maxAbsDiff(row.embedding, expected.get(text(i)) as number[]));
  });
  assert.ok(worst < 1e-6, `job vectors equal the synchronous endpoint's (max diff ${worst})`);
}

function apiArgs(port: number, redis: RedisProcess, extra: string[] = []): string[] {
  return [
    "serve",
    "--model",
    MODEL,
    "--pooling",
    "cls",
    "--port",
    String(port),
    "--log-level",
    "warn",
    "--redis-url",
    redis.url,
    "--job-chunk-size",
    "1000",
    "--chunk-lock-seconds",
    "3",
    ...extra,
  ];
}

function workerArgs(redis: RedisProcess): string[] {
  return [
    "worker",
    "--redis-url",
    redis.url,
    "--model",
    MODEL,
    "--pooling",
    "cls",
    "--chunk-lock-seconds",
    "3",
  ];
}

async function withRedis(fn: (redis: RedisProcess) => Promise<void>): Promise<void> {
  const dir = await tempDir("flagserve-redis-");
  const redis = new RedisProcess(await freePort(), dir.path);
  await redis.start();
  try {
    await fn(redis);
  } finally {
    await redis.stop();
    await dir.cleanup();
  }
}

describe("bulk jobs on Redis + BullMQ, real processes", () => {
  test("a 100k-input job split between the API's pool and a worker process equals the synchronous results", async () => {
    await withRedis(async (redis) => {
      const port = await freePort();
      const api = new FlagserveProcess(apiArgs(port, redis, ["--job-concurrency", "1"]));
      const worker = new FlagserveProcess(workerArgs(redis));
      const base = `http://127.0.0.1:${port}`;
      try {
        await Promise.all([api.waitReady(base), worker.waitFor(/taking chunks/)]);
        const expected = await syncVectors(base);
        const started = Date.now();
        const job = await createJob(base, 100_000);
        const done = await waitDone(base, job.id);
        const seconds = (Date.now() - started) / 1000;
        assert.equal(done.inputs.done, 100_000);
        await checkResults(base, job.id, 100_000, expected);
        const a = peakRssMiB(api.pid);
        const w = peakRssMiB(worker.pid);
        console.log(
          `# 100k inputs in ${seconds.toFixed(1)} s (${(100_000 / seconds).toFixed(0)}/s); peak RSS: API ${a.self.toFixed(0)} MiB ` +
            `(device worker ${a.children.map((x) => x.toFixed(0)).join(", ")}), worker ${w.self.toFixed(0)} MiB ` +
            `(device worker ${w.children.map((x) => x.toFixed(0)).join(", ")})`,
        );
      } finally {
        await Promise.all([api.kill(), worker.kill()]);
      }
    });
  });

  test("kill -9 a worker mid-job: the job completes with every input exactly once", async () => {
    await withRedis(async (redis) => {
      const port = await freePort();
      const api = new FlagserveProcess(apiArgs(port, redis, ["--job-concurrency", "0"]));
      const victim = new FlagserveProcess(workerArgs(redis));
      const survivor = new FlagserveProcess(workerArgs(redis));
      const base = `http://127.0.0.1:${port}`;
      try {
        await Promise.all([
          api.waitReady(base),
          victim.waitFor(/taking chunks/),
          survivor.waitFor(/taking chunks/),
        ]);
        const expected = await syncVectors(base);
        const job = await createJob(base, 40_000);
        await waitFor(
          async () => ((await getJob(base, job.id)).job?.inputs.done ?? 0) >= 5_000,
          "some progress",
        );
        await victim.kill("SIGKILL");
        const done = await waitDone(base, job.id);
        assert.equal(done.inputs.done, 40_000);
        await checkResults(base, job.id, 40_000, expected);
      } finally {
        await Promise.all([api.kill(), victim.kill(), survivor.kill()]);
      }
    });
  });

  test("restart the API mid-job: the job continues and its results are downloadable afterwards", async () => {
    await withRedis(async (redis) => {
      const port = await freePort();
      const base = `http://127.0.0.1:${port}`;
      let api = new FlagserveProcess(apiArgs(port, redis, ["--job-concurrency", "0"]));
      const worker = new FlagserveProcess(workerArgs(redis));
      try {
        await Promise.all([api.waitReady(base), worker.waitFor(/taking chunks/)]);
        const expected = await syncVectors(base);
        const job = await createJob(base, 30_000);
        await waitFor(
          async () => ((await getJob(base, job.id)).job?.inputs.done ?? 0) >= 3_000,
          "some progress",
        );
        await api.kill("SIGKILL");
        api = new FlagserveProcess(apiArgs(port, redis, ["--job-concurrency", "0"]));
        await api.waitReady(base);
        await waitDone(base, job.id);
        await checkResults(base, job.id, 30_000, expected);
      } finally {
        await Promise.all([api.kill(), worker.kill()]);
      }
    });
  });

  test("Redis briefly unavailable: job routes answer 503, synchronous routes work, the job resumes", async () => {
    await withRedis(async (redis) => {
      const port = await freePort();
      const base = `http://127.0.0.1:${port}`;
      const api = new FlagserveProcess(apiArgs(port, redis, ["--job-concurrency", "1"]));
      try {
        await api.waitReady(base);
        const expected = await syncVectors(base);
        const job = await createJob(base, 30_000);
        await waitFor(
          async () => ((await getJob(base, job.id)).job?.inputs.done ?? 0) >= 2_000,
          "some progress",
        );
        await redis.stop();
        await waitFor(
          async () => (await getJob(base, job.id)).status === 503,
          "job routes to answer 503",
          20_000,
        );
        const r = await call(base, `/v1/jobs/${job.id}`);
        assert.equal(r.status, 503);
        assert.equal((await json<{ error: { code: string } }>(r)).error.code, "queue_unavailable");
        assert.ok(Number(r.headers.get("retry-after")) > 0);
        const sync = await call(base, "/v1/embeddings", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "tiny", input: "still serving" }),
        });
        assert.equal(sync.status, 200, "synchronous embeddings do not need Redis");
        await new Promise((r) => setTimeout(r, 1500));
        await redis.start();
        await waitDone(base, job.id);
        await checkResults(base, job.id, 30_000, expected);
      } finally {
        await api.kill();
      }
    });
  });

  test("the official openai client: files.create + batches.create + files.content, errors in the error file", async () => {
    await withRedis(async (redis) => {
      const port = await freePort();
      const base = `http://127.0.0.1:${port}`;
      const api = new FlagserveProcess(apiArgs(port, redis, ["--job-concurrency", "2"]));
      try {
        await api.waitReady(base);
        const expected = await syncVectors(base);
        const lines: string[] = [];
        for (let i = 0; i < 150; i++) {
          lines.push(
            JSON.stringify({
              custom_id: `req-${i}`,
              method: "POST",
              url: "/v1/embeddings",
              body: { model: "tiny", input: [text(i), text(i + 1)], encoding_format: "float" },
            }),
          );
        }
        lines.push(
          JSON.stringify({
            custom_id: "bad-body",
            method: "POST",
            url: "/v1/embeddings",
            body: { model: "tiny" },
          }),
        );
        lines.push(
          JSON.stringify({
            custom_id: "bad-dims",
            method: "POST",
            url: "/v1/embeddings",
            body: { model: "tiny", input: "x", dimensions: 99 },
          }),
        );
        lines.push(
          JSON.stringify({ custom_id: "bad-url", method: "POST", url: "/v1/chat/completions", body: {} }),
        );
        lines.push("not json");
        const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused" });
        const file = await client.files.create({
          file: await toFile(Buffer.from(`${lines.join("\n")}\n`), "requests.jsonl"),
          purpose: "batch",
        });
        assert.equal(file.purpose, "batch");
        assert.ok(file.bytes > 0);
        const batch = await client.batches.create({
          input_file_id: file.id,
          endpoint: "/v1/embeddings",
          completion_window: "24h",
        });
        assert.ok(["validating", "in_progress", "completed"].includes(batch.status));
        let current = batch;
        await waitFor(async () => {
          current = await client.batches.retrieve(batch.id);
          return ["completed", "failed", "cancelled"].includes(current.status);
        }, "batch to finish");
        assert.equal(current.status, "completed");
        assert.deepEqual(current.request_counts, { total: 154, completed: 150, failed: 4 });
        const output = await (await client.files.content(current.output_file_id as string)).text();
        const outLines = output
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l));
        assert.equal(outLines.length, 150);
        for (const o of outLines) {
          const i = Number(String(o.custom_id).slice(4));
          assert.equal(o.response.status_code, 200);
          assert.equal(o.error, null);
          const data = o.response.body.data as { embedding: number[] }[];
          assert.ok(maxAbsDiff(data[0]?.embedding as number[], expected.get(text(i)) as number[]) < 1e-6);
          assert.ok(maxAbsDiff(data[1]?.embedding as number[], expected.get(text(i + 1)) as number[]) < 1e-6);
        }
        const errors = (await (await client.files.content(current.error_file_id as string)).text())
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l));
        const byId = new Map(errors.map((e) => [e.custom_id, e]));
        assert.equal(byId.get("bad-body").response.status_code, 400);
        assert.equal(byId.get("bad-body").response.body.error.param, "input");
        assert.equal(byId.get("bad-dims").response.status_code, 400);
        assert.equal(byId.get("bad-url").error.code, "invalid_url");
        assert.equal(byId.get(null).error.code, "invalid_json");
        const listed = [];
        for await (const b of client.batches.list()) listed.push(b.id);
        assert.ok(listed.includes(batch.id));
      } finally {
        await api.kill();
      }
    });
  });
});

describe("jobs without Redis (embedded queue)", () => {
  test("ownership by API key, cancellation, an uploaded input file, npy download", async () => {
    // Its own job directory: the default one (~/.local/share/flagserve/jobs) outlives the test.
    const jobsDir = await tempDir();
    const server = await startServer(
      [{ source: modelPath("tiny-bge"), alias: "tiny", options: { poolingMethod: "cls" } }],
      {
        host: "127.0.0.1",
        port: 0,
        logLevel: "warn",
        apiKeys: ["key-a", "key-b"],
        jobs: { chunkSize: 100, concurrency: 1, resultsDir: jobsDir.path },
      },
    );
    const a = { authorization: "Bearer key-a" };
    const b = { authorization: "Bearer key-b" };
    try {
      await server.loaded;
      const base = server.url;
      const job = await createJob(base, 500, a);
      assert.equal(
        (await call(base, `/v1/jobs/${job.id}`, { headers: b })).status,
        404,
        "another key does not see the job",
      );
      assert.equal((await call(base, `/v1/jobs/${job.id}/results`, { headers: b })).status, 404);
      const listB = await json<{ data: Job[] }>(await call(base, "/v1/jobs", { headers: b }));
      assert.equal(listB.data.length, 0);
      await waitFor(
        async () =>
          (await json<Job>(await call(base, `/v1/jobs/${job.id}`, { headers: a }))).status === "completed",
        "job",
      );
      const npy = Buffer.from(
        await (
          await call(base, `/v1/jobs/${job.id}/results?format=npy&dtype=float16`, { headers: a })
        ).arrayBuffer(),
      );
      assert.equal(npy.subarray(0, 6).toString("latin1"), "\x93NUMPY");
      const headerLen = npy.readUInt16LE(8);
      assert.match(
        npy.subarray(10, 10 + headerLen).toString("latin1"),
        /'descr': '<f2', 'fortran_order': False, 'shape': \(500, 32\)/,
      );
      assert.equal(npy.length, 10 + headerLen + 500 * 32 * 2);
      assert.equal((10 + headerLen) % 64, 0);

      // an uploaded JSONL file of {text} objects and strings
      const dir = await tempDir();
      const path = join(dir.path, "in.jsonl");
      await writeFile(
        path,
        `${Array.from({ length: 250 }, (_, i) => (i % 2 ? JSON.stringify({ text: text(i) }) : JSON.stringify(text(i)))).join("\n")}\n`,
      );
      const form = new FormData();
      form.append("purpose", "embeddings");
      form.append(
        "file",
        new Blob([await import("node:fs/promises").then((f) => f.readFile(path))]),
        "in.jsonl",
      );
      const uploaded = await json<{ id: string; purpose: string }>(
        await call(base, "/v1/files", { method: "POST", headers: a, body: form }),
      );
      assert.equal(uploaded.purpose, "embeddings");
      const fromFile = await json<Job>(
        await call(base, "/v1/jobs", {
          method: "POST",
          headers: { ...a, "content-type": "application/json" },
          body: JSON.stringify({ model: "tiny", input_file_id: uploaded.id, dimensions: 8 }),
        }),
      );
      assert.equal(fromFile.inputs.total, 250);
      await dir.cleanup();

      // cancellation stops a big job; its results are refused
      const big = await createJob(base, 50_000, a);
      const cancelled = await json<Job>(
        await call(base, `/v1/jobs/${big.id}/cancel`, { method: "POST", headers: a }),
      );
      assert.equal(cancelled.status, "cancelled");
      const res = await call(base, `/v1/jobs/${big.id}/results`, { headers: a });
      assert.equal(res.status, 409);
      assert.ok((await getJob(base, "job-nope")).status === 401, "no key, no access");
      const bad = await call(base, "/v1/jobs", {
        method: "POST",
        headers: { ...a, "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", input: ["x"], input_file_id: "file-x" }),
      });
      assert.equal(bad.status, 400);
    } finally {
      await server.close();
      await jobsDir.cleanup();
    }
  });
});

test("an upload over the size limit is refused with 413 and not kept", async () => {
  const jobsDir = await tempDir();
  const server = await startServer(
    [{ source: modelPath("tiny-bge"), alias: "tiny", options: { poolingMethod: "cls" } }],
    {
      host: "127.0.0.1",
      port: 0,
      logLevel: "warn",
      limits: { uploadBytes: 1000 },
      jobs: { resultsDir: jobsDir.path },
    },
  );
  try {
    await server.loaded;
    const form = new FormData();
    form.append("purpose", "batch");
    form.append("file", new Blob([`${JSON.stringify("x".repeat(100))}\n`.repeat(100)]), "big.jsonl");
    const res = await call(server.url, "/v1/files", { method: "POST", body: form });
    assert.equal(res.status, 413);
    assert.equal((await json<{ error: { code: string } }>(res)).error.code, "file_too_large");
    const files = await json<{ data: unknown[] }>(await call(server.url, "/v1/files"));
    assert.equal(files.data.length, 0);
  } finally {
    await server.close();
    await jobsDir.cleanup();
  }
});
