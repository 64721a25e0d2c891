// Bulk-job defects (issue 13) in the Redis mode: chunks BullMQ gives up on must end their job,
// and a job's data must expire exactly (known keys, no SCAN), uploads included. A real
// redis-server and a real server; the "dead worker" is a BullMQ worker that takes a chunk and
// never finishes it. Every test here failed on the code before its fix.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { type RunningServer, startServer } from "../src/api/start.js";
import { jobComputers } from "../src/jobs/computers.js";
import { RedisMetaStore } from "../src/jobs/store.js";
import { modelPath, tempDir } from "./helpers.js";
import { createJob, getJob, json, upload, waitFinal, waitFor } from "./support/jobs.js";
import { freePort, RedisProcess } from "./support/processes.js";

/** BullMQ's queue of chunks (src/jobs/queue.ts). */
const CHUNKS = "flagserve-chunks";

/** How many SCAN commands Redis has served. */
async function scans(client: Redis): Promise<number> {
  const m = /cmdstat_scan:calls=(\d+)/.exec(await client.info("commandstats"));
  return m ? Number(m[1]) : 0;
}

/** Every key of a job (data and record) has a TTL: nothing it wrote stays forever. */
async function assertAllExpire(client: Redis, id: string): Promise<void> {
  const found = [
    ...(await client.keys(`flagserve:job:${id}:*`)),
    ...(await client.keys(`flagserve:jobmeta:${id}*`)),
  ];
  assert.ok(found.length > 0);
  for (const key of found) {
    const ttl = await client.ttl(key);
    assert.ok(ttl > 0, `${key} expires (ttl ${ttl})`);
  }
}

describe("jobs on Redis: every job ends, and its data expires exactly", () => {
  let redisDir: { path: string; cleanup: () => Promise<void> };
  let redis: RedisProcess;
  let client: Redis;
  let server: RunningServer;
  let base: string;
  let consuming = false;
  /** From here on the server computes chunks too (once: a second call would add a second worker). */
  const consume = () => {
    if (!consuming) server.ctx.jobs?.engine.work(jobComputers(server.ctx), 2);
    consuming = true;
  };

  before(async () => {
    redisDir = await tempDir("flagserve-redis-");
    redis = new RedisProcess(await freePort(), redisDir.path);
    await redis.start();
    client = new Redis(redis.url, { maxRetriesPerRequest: null });
    server = await startServer(
      [{ source: modelPath("tiny-bge"), alias: "tiny", options: { poolingMethod: "cls" } }],
      {
        host: "127.0.0.1",
        port: 0,
        logLevel: "warn",
        // No consumer at first: the first tests decide who takes the chunks.
        jobs: { redisUrl: redis.url, chunkSize: 100, concurrency: 0, chunkAttempts: 2, chunkBackoffMs: 10 },
      },
    );
    await server.loaded;
    base = server.url;
  });

  after(async () => {
    await server.close();
    client.disconnect();
    await redis.stop();
    await redisDir.cleanup();
  });

  test("a chunk BullMQ fails for stalling too often (its worker died) fails the job with the reason (item 3)", async () => {
    const job = await createJob(base, ["a", "b", "c"]);
    const connections = [1, 2].map(() => new Redis(redis.url, { maxRetriesPerRequest: null }));
    // A worker that takes the chunk and dies with it: its lock is never renewed. Its stalled check
    // allows no stall, so BullMQ marks the chunk to fail and puts it back in the queue...
    const dead = new Worker(CHUNKS, null, {
      connection: connections[0] as Redis,
      autorun: false,
      lockDuration: 1000,
      stalledInterval: 500,
      maxStalledCount: 0,
    });
    let next: Worker | undefined;
    try {
      let taken: { data: { job: string } } | undefined;
      await waitFor(async () => {
        taken = (await dead.getNextJob("dead-worker", { block: false })) ?? undefined;
        return taken !== undefined;
      }, "the chunk to be taken");
      assert.equal(taken?.data.job, job.id);
      const stalled = new Promise((resolve) => dead.once("stalled", resolve));
      await dead.startStalledCheckTimer();
      await stalled;
      // ...and the next worker to take it fails it without running it: no handler of ours runs.
      next = new Worker(CHUNKS, async () => {}, { connection: connections[1] as Redis });
      const done = await waitFinal(base, job.id, 60_000);
      assert.equal(done.status, "failed");
      assert.match(done.errors.join("\n"), /chunk 0: .*stalled/);
      assert.ok(done.expires_at !== null);
    } finally {
      await Promise.all([dead.close(), next?.close()]);
      for (const c of connections) c.disconnect();
    }
  });

  test("the store failing to read a chunk on its last attempt fails the job with the reason (item 3)", async () => {
    const job = await createJob(base, ["a", "b", "c"]);
    // The chunk's key becomes a list: reading it answers WRONGTYPE, outside the compute step.
    const key = `flagserve:job:${job.id}:in:0`;
    await client.del(key);
    await client.rpush(key, "not a chunk");
    consume();
    const done = await waitFinal(base, job.id, 60_000);
    assert.equal(done.status, "failed");
    assert.match(done.errors.join("\n"), /chunk 0: .*WRONGTYPE/);
  });

  test("a job left preparing by an API replica that died is failed with the reason (item 3)", async () => {
    const orphan = {
      id: "job-orphan",
      kind: "embed" as const,
      owner: "anonymous",
      model: "tiny",
      status: "preparing" as const,
      total: 100,
      chunks: 1,
      chunkSize: 100,
      chunksDone: 0,
      inputsDone: 0,
      tokens: 0,
      failed: 0,
      inputType: "passage" as const,
      dimensions: null,
      dims: 0,
      createdAt: Date.now(),
      startedAt: null,
      finishedAt: null,
      expiresAt: null,
      errors: [],
      meta: {},
      runner: "dead-instance",
    };
    await new RedisMetaStore(client).putJob(orphan);
    await server.ctx.jobs?.engine.reconcile(false);
    const job = await getJob(base, "job-orphan");
    assert.equal(job?.status, "failed");
    assert.match(job?.errors.join("\n") ?? "", /stopped while it was storing/);
    assert.ok((await client.ttl("flagserve:jobmeta:job-orphan")) > 0, "and it expires");
  });

  test("finishing a job expires exactly its keys without SCAN; uploads and late chunks expire too (item 4)", async () => {
    consume();
    const before = await scans(client);
    const file = await json<{ id: string }>(await upload(base, `${'"x"\n'.repeat(100)}`));
    assert.ok((await client.ttl(`flagserve:filemeta:${file.id}`)) > 0, "the file's record expires");
    assert.ok((await client.ttl(`flagserve:file:${file.id}:part:0`)) > 0, "the file's content expires");

    const texts = Array.from({ length: 250 }, (_, i) => `text ${i}`);
    const job = await createJob(base, texts);
    assert.equal((await waitFinal(base, job.id)).status, "completed");
    await assertAllExpire(client, job.id);
    assert.equal(await scans(client), before, "no SCAN of the keyspace");

    // Cancelled while chunks run: what they write after the cancellation expires as well.
    const big = await createJob(
      base,
      Array.from({ length: 20_000 }, (_, i) => `passage ${i}`),
    );
    await waitFor(async () => ((await getJob(base, big.id))?.chunks.done ?? 0) >= 3, "some progress");
    await server.ctx.jobs?.engine.cancel("anonymous", big.id);
    assert.equal((await getJob(base, big.id))?.status, "cancelled");
    const connection = new Redis(redis.url, { maxRetriesPerRequest: null });
    const queue = new Queue(CHUNKS, { connection });
    try {
      await waitFor(async () => (await queue.getActiveCount()) === 0, "the running chunks to end");
    } finally {
      await queue.close();
      connection.disconnect();
    }
    await assertAllExpire(client, big.id);
  });
});
