import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import type { JobsConfig } from "../config.js";
import { ChunkProcessor, type Computers } from "./chunks.js";
import { FileStore } from "./files.js";
import type { ChunkQueue } from "./queue.js";
import { JobResults } from "./results.js";
import type { BlobStore, MetaStore } from "./store.js";
import {
  type JobKind,
  JobNotFoundError,
  type JobRecord,
  type JobStatus,
  jobKeys,
  keys,
  OPEN,
  TERMINAL,
} from "./types.js";

export { type Computers, JobNotFoundError };

/** What the engine needs of the jobs settings. */
export type EngineOptions = Pick<
  JobsConfig,
  "chunkSize" | "batchChunkSize" | "ttlSeconds" | "fileTtlSeconds"
>;

/** Where the engine reports what it cannot act on now (a store outage in a background task). */
export type EngineLog = (message: string, detail?: Record<string, unknown>) => void;

/** An instance says it is alive this often, for this long. */
const HEARTBEAT_MS = 10_000;
const HEARTBEAT_TTL_SECONDS = 30;
/** How often jobs whose runner is gone are looked for. */
const RECONCILE_MS = 30_000;
/** How often expired data is deleted from a directory store. */
const SWEEP_MS = 10 * 60_000;

/** Job-system instances of this process: alive whatever their heartbeat says. */
const LIVE = new Set<string>();

const range = (n: number, skip: Set<number> = new Set()) =>
  Array.from({ length: n }, (_, i) => i).filter((i) => !skip.has(i));

/**
 * Bulk jobs: inputs are split into chunks stored in the blob store, chunks are queued, any worker
 * on any host computes them, and results are stored per chunk so a chunk retried after a crash
 * overwrites its own result: every input appears in the output exactly once.
 *
 * Every job ends completed, failed or cancelled: a chunk the queue gives up on fails its job
 * (or its batch lines), and each instance looks for jobs whose runner is gone (see reconcile).
 */
export class JobEngine {
  readonly files: FileStore;
  readonly results: JobResults;
  /** This job system among all those sharing the stores. */
  readonly instance = randomUUID();
  private readonly chunks: ChunkProcessor;
  /** Jobs whose inputs this instance is storing now. */
  private readonly preparing = new Set<string>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly background = new Set<Promise<void>>();
  private readonly failing = new Set<string>();
  private retryTimer: NodeJS.Timeout | undefined;
  private started = false;
  private closed = false;

  constructor(
    readonly meta: MetaStore,
    readonly blobs: BlobStore,
    readonly queue: ChunkQueue,
    readonly options: EngineOptions,
    private readonly log: EngineLog = () => {},
  ) {
    this.results = new JobResults(blobs);
    this.files = new FileStore(meta, blobs, this.results, options.fileTtlSeconds, (owner, id) =>
      this.get(owner, id),
    );
    this.chunks = new ChunkProcessor(
      meta,
      blobs,
      queue,
      (id, status, error) => this.finish(id, status, error),
      options.ttlSeconds,
    );
  }

  // ------------------------------------------------------------------ lifecycle

  /**
   * Say this instance is alive, take over the jobs of instances that are gone (at once, then
   * periodically), end chunks the queue gives up on, and delete expired data.
   */
  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    LIVE.add(this.instance);
    const every = (ms: number, name: string, task: () => Promise<void>) => {
      const t = setInterval(() => this.run(name, task), ms);
      t.unref();
      this.timers.push(t);
    };
    const beat = () =>
      this.meta.putInstance(this.instance, { pid: process.pid, host: hostname() }, HEARTBEAT_TTL_SECONDS);
    this.queue.onFailed((task, reason) => this.chunks.failed(task, reason));
    // The first reconcile queues what a restart left behind: retried until the stores answer.
    const startup = async () => {
      await beat();
      await this.reconcile(true);
      await this.sweep();
    };
    const attempt = (wait: number) =>
      this.run("starting", startup, () => {
        if (this.closed) return;
        const t = setTimeout(() => attempt(Math.min(wait * 2, 30_000)), wait);
        t.unref();
        this.retryTimer = t;
      });
    attempt(500);
    every(HEARTBEAT_MS, "heartbeat", beat);
    every(RECONCILE_MS, "reconcile", () => this.reconcile(false));
    every(SWEEP_MS, "sweep", () => this.sweep());
  }

  /** Run a background task; report its failure once per streak (a store outage repeats). */
  private run(name: string, task: () => Promise<void>, onFailure?: () => void): void {
    if (this.closed) return;
    const p = task()
      .then(() => {
        this.failing.delete(name);
      })
      .catch((err: Error) => {
        if (this.closed) return;
        if (!this.failing.has(name)) this.log(`jobs: ${name} failed; retrying`, { error: err.message });
        this.failing.add(name);
        onFailure?.();
      })
      .finally(() => this.background.delete(p));
    this.background.add(p);
  }

  /** Whether the instance that runs a job is still there. */
  private async alive(instance: string): Promise<boolean> {
    if (instance === this.instance || LIVE.has(instance)) return true;
    const info = await this.meta.getInstance(instance);
    if (!info) return false;
    if (info.host !== hostname()) return true;
    // On this host an instance of another process is alive while that process runs; one that
    // claims our own process id was a previous life of this id (PID 1 in a restarted container).
    if (info.pid === process.pid) return false;
    try {
      process.kill(info.pid, 0);
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === "EPERM";
    }
  }

  /**
   * Bring every open job to a state that ends: a job whose inputs were being stored by an
   * instance that is gone fails (its inputs came from a request that died with it); an embedded
   * job whose instance is gone is taken over and its chunks not yet done are queued here
   * (done chunks are marked, so none is computed into the output twice). With a durable queue,
   * chunks of running jobs need no owner; at start they are queued again in case a crash came
   * between a job's record and its chunks (adding a queued chunk is a no-op).
   */
  async reconcile(startup: boolean): Promise<void> {
    for (const job of await this.meta.listOpen()) {
      // Status moves here are compare-and-set from what was listed: a job that moved on since
      // (its inputs all stored, say) is left alone.
      const preparing = job.status === "preparing";
      if (job.runner === this.instance) {
        if (preparing && !this.preparing.has(job.id))
          await this.finish(job.id, "failed", "storing the job's inputs stopped; submit the job again", [
            "preparing",
          ]);
        continue;
      }
      if (!preparing && this.queue.durable) {
        if (startup) await this.queueUndone(job);
        continue;
      }
      if (job.runner && (await this.alive(job.runner))) continue;
      const claimed = await this.meta.patchJob(
        job.id,
        { runner: this.instance },
        { status: preparing ? ["preparing"] : OPEN, runner: job.runner ?? "" },
      );
      if (!claimed) continue; // another instance took it first, or it moved on
      if (preparing) {
        await this.finish(
          job.id,
          "failed",
          "the server stopped while it was storing the job's inputs; submit the job again",
          ["preparing"],
        );
      } else {
        await this.queueUndone(job);
      }
    }
  }

  /** Queue the chunks of a job not yet done; a job with all of them done is completed. */
  private async queueUndone(job: JobRecord): Promise<void> {
    const undone = range(job.chunks, await this.meta.doneChunks(job.id));
    // Every chunk is done: the instance died between the last chunk and finishing the job.
    if (undone.length === 0) await this.finish(job.id, "completed");
    else await this.queue.add(job.id, undone);
  }

  /** Delete expired data a directory store keeps (Redis expires keys itself). */
  async sweep(now = Date.now()): Promise<void> {
    await this.meta.sweep(now);
    await this.blobs.sweep(now);
  }

  // ------------------------------------------------------------------ producing

  private newRecord(kind: JobKind, owner: string, model: string, extra: Partial<JobRecord>): JobRecord {
    return {
      id: kind === "batch" ? `batch_${randomUUID().replaceAll("-", "")}` : `job-${randomUUID()}`,
      kind,
      owner,
      model,
      status: "preparing",
      total: 0,
      chunks: 0,
      chunkSize: kind === "batch" ? this.options.batchChunkSize : this.options.chunkSize,
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
      runner: this.instance,
      ...extra,
    };
  }

  /**
   * Store items in chunks as they stream in (memory holds one chunk), then queue every chunk.
   * The record exists from the start, in status "preparing", and counts the chunks stored.
   */
  private async create(
    record: JobRecord,
    items: AsyncIterable<string> | Iterable<string>,
  ): Promise<JobRecord> {
    const id = record.id;
    this.preparing.add(id);
    try {
      await this.meta.putJob(record);
      let chunk: string[] = [];
      let chunks = 0;
      let total = 0;
      /** Store a chunk while the job is still preparing (a cancelled job stops reading). */
      const flush = async () => {
        // Counted before it is written: whoever ends the job expires every chunk it may have.
        const open = await this.meta.patchJob(id, { chunks: chunks + 1, total }, { status: ["preparing"] });
        if (open) {
          await this.blobs.put(keys.input(id, chunks), JSON.stringify(chunk));
          chunks++;
          chunk = [];
        }
        return open;
      };
      try {
        for await (const item of items) {
          chunk.push(item);
          total++;
          if (chunk.length >= record.chunkSize && !(await flush())) return await this.ended(id, chunks + 1);
        }
        if (chunk.length && !(await flush())) return await this.ended(id, chunks + 1);
      } catch (err) {
        // The request submitting the job fails with this error and never learns the job's id:
        // leave no job behind.
        await this.discard(id, chunks + 1);
        throw err;
      }
      if (total === 0) {
        // Nothing to compute: completed now, and expiring like any finished job.
        await this.meta.patchJob(id, { total, chunks }, { status: ["preparing"] });
        await this.finish(id, "completed");
        return (await this.meta.getJob(id)) as JobRecord;
      }
      const ready: Partial<JobRecord> = { total, chunks, status: "queued" };
      // A job cancelled while its inputs were still being stored stays cancelled.
      if (!(await this.meta.patchJob(id, ready, { status: ["preparing"] })))
        return await this.ended(id, chunks);
      await this.queue.add(id, range(chunks));
      return { ...record, ...ready };
    } finally {
      this.preparing.delete(id);
    }
  }

  /** A job ended (cancelled) while its inputs were stored: chunks written after that expire too. */
  private async ended(id: string, chunks: number): Promise<JobRecord> {
    await this.blobs.expire(jobKeys(id, chunks), this.options.ttlSeconds);
    return (await this.meta.getJob(id)) as JobRecord;
  }

  /** Delete a job whose submission failed; if the store refuses, at least end it. */
  private async discard(id: string, chunks: number): Promise<void> {
    try {
      await this.meta.deleteJob(id);
      await this.blobs.remove(jobKeys(id, chunks));
    } catch (err) {
      await this.finish(id, "failed", `reading the inputs failed: ${(err as Error).message}`).catch(() => {});
    }
  }

  createEmbedJob(
    owner: string,
    spec: {
      model: string;
      inputType: "query" | "passage" | "classification" | "clustering";
      dimensions: number | null;
      texts: AsyncIterable<string> | Iterable<string>;
    },
  ): Promise<JobRecord> {
    const record = this.newRecord("embed", owner, spec.model, {
      inputType: spec.inputType,
      dimensions: spec.dimensions,
    });
    return this.create(record, spec.texts);
  }

  createBatchJob(
    owner: string,
    spec: { lines: AsyncIterable<string>; meta: Record<string, string> },
  ): Promise<JobRecord> {
    const record = this.newRecord("batch", owner, "", { meta: spec.meta });
    return this.create(record, spec.lines);
  }

  async get(owner: string, id: string): Promise<JobRecord> {
    const job = await this.meta.getJob(id);
    if (!job || job.owner !== owner) throw new JobNotFoundError(`job ${id} not found`);
    return job;
  }

  list(owner: string): Promise<JobRecord[]> {
    return this.meta.listJobs(owner);
  }

  async cancel(owner: string, id: string): Promise<JobRecord> {
    const job = await this.get(owner, id);
    if (TERMINAL.has(job.status)) return job;
    await this.finish(id, "cancelled");
    await this.queue.remove(id, job.chunks);
    return this.get(owner, id);
  }

  /** Delete a job and all its data (cancelling it first, so no worker computes more of it). */
  async delete(owner: string, id: string): Promise<void> {
    const job = await this.cancel(owner, id);
    await this.meta.deleteJob(job.id);
    await this.blobs.remove(jobKeys(job.id, job.chunks));
  }

  /**
   * Move a job to a final status once (the first of racing finishers wins; `from` narrows the
   * statuses it may leave), and let it and exactly its keys expire.
   */
  async finish(
    id: string,
    status: JobStatus,
    error?: string,
    from: readonly JobStatus[] = OPEN,
  ): Promise<void> {
    const now = Date.now();
    const ttl = this.options.ttlSeconds;
    const moved = await this.meta.patchJob(
      id,
      { status, finishedAt: now, expiresAt: Math.floor(now / 1000) + ttl },
      { status: from },
      error,
    );
    if (!moved) return;
    await this.meta.expireJob(id, ttl);
    const job = await this.meta.getJob(id);
    await this.blobs.expire(jobKeys(id, job?.chunks ?? 0), ttl);
  }

  /** Take chunks from the queue and compute them with these computers. */
  work(computers: Computers, concurrency: number): void {
    this.queue.consume((task) => this.chunks.process(task, computers), concurrency);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    for (const t of this.timers) clearInterval(t);
    // Let background work finish a step, but never hang a shutdown on a store that is down.
    await Promise.race([Promise.all(this.background), sleep(2000, undefined, { ref: false })]);
    await this.queue.close();
    if (this.started) {
      LIVE.delete(this.instance);
      // Gone at once rather than when the heartbeat lapses: a restart takes its jobs over now.
      await this.meta.deleteInstance(this.instance).catch(() => {});
    }
  }
}
