// Bulk-job defects (issue 13): multi-byte uploads, jobs that never ended, data that never expired,
// temporary-file collisions, jobs lost on restart without Redis, malformed multipart uploads.
// Every test here failed on the code before its fix.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type RunningServer, startServer } from "../src/api/start.js";
import { jobComputers } from "../src/jobs/computers.js";
import { DirBlobStore, DirMetaStore } from "../src/jobs/dir-store.js";
import { splitLines } from "../src/jobs/lines.js";
import { type JobRecord, jobKeys, OPEN } from "../src/jobs/types.js";
import { modelPath, tempDir } from "./helpers.js";
import {
  checkResults,
  createJob,
  DISTINCT,
  getJob,
  type JobView,
  json,
  type OpenAIErrorBody,
  postJson,
  syncVectors,
  text,
  upload,
  waitFinal,
  waitFor,
} from "./support/jobs.js";
import { FlagserveProcess, freePort } from "./support/processes.js";

const TINY = { source: modelPath("tiny-bge"), alias: "tiny", options: { poolingMethod: "cls" as const } };

async function collect(source: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const x of source) out.push(x);
  return out;
}

async function* buffers(...parts: Buffer[]): AsyncGenerator<Buffer> {
  yield* parts;
}

function record(id: string, chunks: number): JobRecord {
  return {
    id,
    kind: "embed",
    owner: "anonymous",
    model: "tiny",
    status: "running",
    total: chunks * 10,
    chunks,
    chunkSize: 10,
    chunksDone: 0,
    inputsDone: 0,
    tokens: 0,
    failed: 0,
    inputType: "passage",
    dimensions: null,
    dims: 0,
    createdAt: Date.now(),
    startedAt: null,
    finishedAt: null,
    expiresAt: null,
    errors: [],
    meta: {},
  };
}

describe("job stores and line splitting (units)", () => {
  test("splitLines: a UTF-8 character cut between two stream chunks is decoded whole (item 2)", async () => {
    const source = "北京欢迎你\n🎉 party\r\nlast ü";
    const bytes = Buffer.from(source, "utf8");
    const want = ["北京欢迎你", "🎉 party", "last ü"];
    // Every cut position, most of them inside a 2-, 3- or 4-byte character.
    for (let cut = 1; cut < bytes.length; cut++) {
      assert.deepEqual(
        await collect(splitLines(buffers(bytes.subarray(0, cut), bytes.subarray(cut)))),
        want,
        `cut at byte ${cut}`,
      );
    }
    const oneByteEach = Array.from(bytes, (b) => Buffer.from([b]));
    assert.deepEqual(await collect(splitLines(buffers(...oneByteEach))), want);
  });

  test("DirBlobStore: concurrent writes of one key never share a temporary file (item 5)", async () => {
    const dir = await tempDir();
    try {
      const store = new DirBlobStore(dir.path);
      // One process writes the key 16 times at once: the same PID, as every container's PID 1 is.
      const versions = Array.from({ length: 16 }, (_, i) => Buffer.alloc(256 * 1024, i));
      await Promise.all(versions.map((v) => store.put("job:j:out:0", v)));
      const stored = (await store.get("job:j:out:0")) as Buffer;
      assert.ok(
        versions.some((v) => v.equals(stored)),
        "the stored value is one whole write",
      );
      assert.deepEqual(await readdir(join(dir.path, "job", "j", "out")), ["0"], "no temporary file is left");
    } finally {
      await dir.cleanup();
    }
  });

  test("DirBlobStore: expire marks a job's directory, the sweep deletes it once due (item 4)", async () => {
    const dir = await tempDir();
    try {
      const store = new DirBlobStore(dir.path);
      await store.put("job:a:in:0", "a");
      await store.put("job:b:in:0", "b");
      await store.put("file:f:part:0", "f");
      await store.expire(jobKeys("a", 1), 60);
      await store.expire({ prefix: "file:f:", keys: [] }, 120);
      await store.sweep();
      assert.ok(await store.get("job:a:in:0"), "not yet due");
      await store.sweep(Date.now() + 61_000);
      assert.equal(await store.get("job:a:in:0"), undefined, "expired job data is deleted");
      assert.ok(await store.get("file:f:part:0"), "a later expiry is kept");
      assert.ok(await store.get("job:b:in:0"), "data without expiry is kept");
      await store.sweep(Date.now() + 121_000);
      assert.equal(await store.get("file:f:part:0"), undefined);
      assert.deepEqual(await readdir(join(dir.path, "job")), ["b"]);
    } finally {
      await dir.cleanup();
    }
  });

  test("DirMetaStore: two stores on one directory count each chunk once and finish a job once (item 7)", async () => {
    const dir = await tempDir();
    try {
      // Two stores stand for two processes sharing the directory (or one process restarted mid-write).
      const a = new DirMetaStore(dir.path);
      const b = new DirMetaStore(dir.path);
      await a.putJob(record("job-x", 40));
      const counts = { tokens: 3, failed: 0, inputs: 10 };
      await Promise.all(
        Array.from({ length: 40 }, (_, c) => [
          a.markChunk("job-x", c, counts),
          b.markChunk("job-x", c, counts),
        ]).flat(),
      );
      const job = (await b.getJob("job-x")) as JobRecord;
      assert.equal(job.chunksDone, 40);
      assert.equal(job.inputsDone, 400, "every chunk counted exactly once");
      assert.equal(job.tokens, 120);
      assert.equal((await a.doneChunks("job-x")).size, 40);
      const moved = await Promise.all([
        a.patchJob("job-x", { status: "completed" }, { status: OPEN }),
        b.patchJob("job-x", { status: "cancelled" }, { status: OPEN }),
      ]);
      assert.equal(moved.filter(Boolean).length, 1, "one status move wins");
      assert.equal(await a.getJob("../../etc/passwd"), undefined, "ids never leave the directory");
    } finally {
      await dir.cleanup();
    }
  });
});

describe("embedded jobs (no Redis): uploads, empty and rejected jobs, expiry, multipart errors", () => {
  let server: RunningServer;
  let dir: { path: string; cleanup: () => Promise<void> };
  let base: string;

  before(async () => {
    dir = await tempDir();
    server = await startServer([TINY], {
      host: "127.0.0.1",
      port: 0,
      logLevel: "warn",
      jobs: { resultsDir: dir.path, chunkSize: 100, concurrency: 1 },
    });
    await server.loaded;
    base = server.url;
  });

  after(async () => {
    await server.close();
    await dir.cleanup();
  });

  test("an upload of multi-byte text is stored byte for byte and embedded as the text it is (item 2)", async () => {
    // ~1.4 MB of 3- and 4-byte characters: the body reaches the server in many socket reads, and a
    // read boundary falls inside a character two times in three, so some character straddles two.
    const texts = Array.from(
      { length: 1000 },
      (_, i) => `${i} 北京欢迎你 ${"汉字".repeat(200 + (i % 50))} 🎉 ${DISTINCT[i]}`,
    );
    const content = Buffer.from(`${texts.map((t) => JSON.stringify(t)).join("\n")}\n`, "utf8");
    assert.ok(content.length > 1_000_000);
    const res = await upload(base, content, "embeddings");
    assert.equal(res.status, 200, await res.clone().text());
    const file = await json<{ id: string; bytes: number }>(res);
    assert.equal(file.bytes, content.length);
    const back = Buffer.from(await (await fetch(`${base}/v1/files/${file.id}/content`)).arrayBuffer());
    assert.ok(back.equals(content), "the stored file is the uploaded bytes (no U+FFFD)");

    const created = await postJson(base, "/v1/jobs", { model: "tiny", input_file_id: file.id });
    assert.equal(created.status, 202, await created.clone().text());
    const job = await json<JobView>(created);
    assert.equal((await waitFinal(base, job.id)).status, "completed");
    await checkResults(base, job.id, texts, await syncVectors(base, texts));
  });

  test("input: [] is a completed job that expires like any other (item 4)", async () => {
    const res = await postJson(base, "/v1/jobs", { model: "tiny", input: [] });
    assert.equal(res.status, 202);
    const job = await json<JobView>(res);
    assert.equal(job.status, "completed");
    assert.ok(job.expires_at !== null && job.expires_at > Date.now() / 1000, "it has an expiry");
    assert.equal((await getJob(base, job.id))?.expires_at, job.expires_at);
    const results = await fetch(`${base}/v1/jobs/${job.id}/results`);
    assert.equal(results.status, 200);
    assert.equal(await results.text(), "");
  });

  test("a job refused for a bad line of its input file leaves no job and no data behind (item 4)", async () => {
    const lines = [...Array.from({ length: 150 }, (_, i) => JSON.stringify(text(i))), "not json", '"x"'];
    const file = await json<{ id: string }>(await upload(base, `${lines.join("\n")}\n`));
    const jobsBefore = (await json<{ data: JobView[] }>(await fetch(`${base}/v1/jobs`))).data.map(
      (j) => j.id,
    );
    const dataBefore = await readdir(join(dir.path, "job")).catch(() => []);
    const res = await postJson(base, "/v1/jobs", { model: "tiny", input_file_id: file.id });
    assert.equal(res.status, 400);
    const body = await json<OpenAIErrorBody>(res);
    assert.equal(body.error.param, "input_file_id");
    assert.match(body.error.message, /line 151/);
    const jobsAfter = (await json<{ data: JobView[] }>(await fetch(`${base}/v1/jobs`))).data.map((j) => j.id);
    assert.deepEqual(jobsAfter, jobsBefore, "no failed job is listed");
    // The first chunk (100 inputs) was stored before line 151 was read: it is gone too.
    assert.deepEqual((await readdir(join(dir.path, "job")).catch(() => [])).sort(), dataBefore.sort());
    const missing = await postJson(base, "/v1/jobs", { model: "tiny", input_file_id: "file-nope" });
    assert.equal(missing.status, 400, "a missing input file is a bad request, as in /v1/batches");
    assert.equal((await json<OpenAIErrorBody>(missing)).error.param, "input_file_id");
  });

  test("malformed multipart uploads are 400s in OpenAI's error shape, and store nothing (item 10)", async () => {
    const filesBefore = (await json<{ data: unknown[] }>(await fetch(`${base}/v1/files`))).data.length;
    const post = (body: RequestInit["body"], contentType?: string) =>
      fetch(`${base}/v1/files`, {
        method: "POST",
        body,
        ...(contentType ? { headers: { "content-type": contentType } } : {}),
      });
    const expect400 = async (res: Response, what: string, message: RegExp) => {
      assert.equal(res.status, 400, `${what}: ${await res.clone().text()}`);
      const body = await json<OpenAIErrorBody>(res);
      assert.equal(body.error.type, "invalid_request_error", what);
      assert.equal(body.error.param, "file", what);
      assert.match(body.error.message, message, what);
    };
    await expect400(await post('--x\r\n"a"\r\n', "multipart/form-data"), "no boundary", /malformed/);
    await expect400(
      await post(
        '--b1\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n"cut short',
        "multipart/form-data; boundary=b1",
      ),
      "a body cut short",
      /malformed/,
    );
    const noFile = new FormData();
    noFile.append("purpose", "batch");
    await expect400(await post(noFile), "no file part", /missing required field "file"/);
    const wrongName = new FormData();
    wrongName.append("purpose", "batch");
    wrongName.append("upload", new Blob(['"x"\n']), "x.jsonl");
    await expect400(await post(wrongName), "wrong field name", /"file".*"upload"/);
    await expect400(await upload(base, ""), "an empty file", /empty/);
    // Not multipart at all: refused as the wrong media type (415, where the server checks content
    // types before the route) or by the route (400); a client error in OpenAI's shape, never a 500.
    for (const [body, type] of [
      ['{"file": "x"}', "application/json"],
      ["x", "text/plain"],
    ] as const) {
      const res = await post(body, type);
      assert.ok([400, 415].includes(res.status), `${type}: ${res.status}`);
      const error = (await json<OpenAIErrorBody>(res)).error;
      assert.equal(error.type, "invalid_request_error", type);
      assert.match(error.message, /multipart/, type);
    }
    const filesAfter = (await json<{ data: unknown[] }>(await fetch(`${base}/v1/files`))).data.length;
    assert.equal(filesAfter, filesBefore, "nothing was stored");
  });

  test("finished jobs, their data and uploaded files are deleted once they expire (item 4)", async () => {
    const job = await createJob(base, ["one", "two", "three"]);
    assert.equal((await waitFinal(base, job.id)).status, "completed");
    const file = await json<{ id: string }>(await upload(base, '"a"\n"b"\n'));
    const engine = server.ctx.jobs?.engine;
    assert.ok(engine);
    await engine.sweep();
    assert.equal((await getJob(base, job.id))?.status, "completed", "kept until it expires");
    assert.ok(existsSync(join(dir.path, "job", job.id)));
    // The sweep as it will run a week (the default TTL) and a day from now.
    await engine.sweep(Date.now() + 8 * 24 * 3600_000);
    assert.equal((await fetch(`${base}/v1/jobs/${job.id}`)).status, 404);
    assert.equal((await fetch(`${base}/v1/files/${file.id}`)).status, 404);
    assert.ok(!existsSync(join(dir.path, "job", job.id)), "the job's chunks are deleted with its record");
    assert.ok(!existsSync(join(dir.path, "file", file.id)), "the file's parts are deleted with its record");
    assert.ok(!existsSync(join(dir.path, "meta", "jobs", `${job.id}.json`)));
  });
});

describe("embedded jobs that used to never end (item 3)", () => {
  let server: RunningServer;
  let dir: { path: string; cleanup: () => Promise<void> };
  let base: string;

  before(async () => {
    dir = await tempDir();
    server = await startServer([TINY], {
      host: "127.0.0.1",
      port: 0,
      logLevel: "warn",
      scheduler: { maxQueuedInputs: 8, maxBatchSize: 2 },
      // No consumer yet: the first test damages a chunk before anything takes it.
      jobs: {
        resultsDir: dir.path,
        concurrency: 0,
        chunkAttempts: 2,
        chunkBackoffMs: 10,
        chunkTimeoutSeconds: 1,
      },
    });
    await server.loaded;
    base = server.url;
  });

  after(async () => {
    await server.close();
    await dir.cleanup();
  });

  test("the store failing to read a chunk on every attempt fails the job with the reason", async () => {
    const job = await createJob(base, ["a", "b", "c"]);
    assert.equal(job.status, "queued");
    // The chunk's file becomes a directory: reading it throws EISDIR, outside the compute step.
    const chunkFile = join(dir.path, "job", job.id, "in", "0");
    await rm(chunkFile);
    await mkdir(chunkFile);
    server.ctx.jobs?.engine.work(jobComputers(server.ctx), 1);
    const done = await waitFinal(base, job.id, 60_000);
    assert.equal(done.status, "failed");
    assert.match(done.errors.join("\n"), /chunk 0: .*EISDIR/);
    assert.ok(done.expires_at !== null, "a failed job expires");
  });

  test("a job left preparing by a server that died is failed with the reason, not kept open", async () => {
    // As a killed server leaves it: inputs half stored, its instance gone (it never said goodbye).
    const orphan = { ...record("job-orphan", 1), status: "preparing" as const, runner: "dead-instance" };
    await new DirMetaStore(dir.path).putJob(orphan);
    await server.ctx.jobs?.engine.reconcile(false);
    const job = await getJob(base, "job-orphan");
    assert.equal(job?.status, "failed");
    assert.match(job?.errors.join("\n") ?? "", /stopped while it was storing/);
    assert.ok(job?.expires_at, "and it expires");
  });

  test("a server saturated for longer than the chunk timeout fails the job instead of waiting forever", async () => {
    const worker = server.ctx.state.workers?.()[0]?.pid;
    assert.ok(worker, "the device worker's pid");
    // A stopped device worker keeps a synchronous request's inputs queued: every chunk is refused.
    process.kill(worker, "SIGSTOP");
    try {
      const sync = postJson(base, "/v1/embeddings", { model: "tiny", input: DISTINCT.slice(0, 40) });
      await waitFor(async () => {
        const metrics = await (await fetch(`${base}/metrics`)).text();
        return /flagserve_queue_depth\{model="tiny"\} [1-9]/.test(metrics);
      }, "the synchronous inputs to be queued");
      const job = await createJob(base, ["x", "y", "z"]);
      const done = await waitFinal(base, job.id, 60_000);
      assert.equal(done.status, "failed");
      assert.match(done.errors.join("\n"), /chunk 0: .*full/);
      process.kill(worker, "SIGCONT");
      assert.equal((await sync).status, 200, "the synchronous request is served once the worker runs");
    } finally {
      process.kill(worker, "SIGCONT");
    }
  });
});

describe("embedded jobs survive a restart (item 7)", () => {
  test("kill -9 mid-job, restart on the default directory: every input exactly once; finished jobs and files kept", async () => {
    const xdg = await tempDir("flagserve-xdg-");
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const args = [
      "serve",
      "--model",
      `${modelPath("tiny-bge")}=tiny`,
      "--pooling",
      "cls",
      "--port",
      String(port),
      "--log-level",
      "warn",
      "--job-chunk-size",
      "100",
      "--job-concurrency",
      "1",
    ];
    // No --results-dir: the default, $XDG_DATA_HOME/flagserve/jobs.
    const env = { XDG_DATA_HOME: xdg.path };
    const jobsDir = join(xdg.path, "flagserve", "jobs");
    let api = new FlagserveProcess(args, env);
    try {
      await api.waitReady(base);
      const expected = await syncVectors(base, DISTINCT);
      const smallInputs = Array.from({ length: 300 }, (_, i) => text(i * 3));
      const small = await createJob(base, smallInputs);
      assert.equal((await waitFinal(base, small.id)).status, "completed");
      const fileContent = `${DISTINCT.slice(0, 20)
        .map((t) => JSON.stringify(t))
        .join("\n")}\n`;
      const file = await json<{ id: string }>(await upload(base, fileContent));

      const bigInputs = Array.from({ length: 30_000 }, (_, i) => text(i));
      const big = await createJob(base, bigInputs);
      await waitFor(async () => ((await getJob(base, big.id))?.inputs.done ?? 0) >= 3_000, "some progress");
      await api.kill("SIGKILL");
      const onDisk = JSON.parse(await readFile(join(jobsDir, "meta", "jobs", `${big.id}.json`), "utf8")) as {
        record: JobRecord;
      };
      assert.equal(onDisk.record.status, "running", "killed mid-job");
      assert.ok(onDisk.record.chunksDone < onDisk.record.chunks);

      api = new FlagserveProcess(args, env);
      await api.waitReady(base);
      const done = await waitFinal(base, big.id, 240_000);
      assert.equal(done.status, "completed", JSON.stringify(done));
      assert.equal(done.inputs.done, 30_000, "no chunk counted twice");
      await checkResults(base, big.id, bigInputs, expected);

      const listed = (await json<{ data: JobView[] }>(await fetch(`${base}/v1/jobs`))).data.map((j) => j.id);
      assert.ok(
        listed.includes(small.id) && listed.includes(big.id),
        "both jobs are listed after the restart",
      );
      await checkResults(base, small.id, smallInputs, expected);
      const files = (await json<{ data: { id: string }[] }>(await fetch(`${base}/v1/files`))).data.map(
        (f) => f.id,
      );
      assert.ok(files.includes(file.id), "the uploaded file is listed after the restart");
      assert.equal(await (await fetch(`${base}/v1/files/${file.id}/content`)).text(), fileContent);
    } finally {
      await api.kill();
      await xdg.cleanup();
    }
  });
});
