import { randomUUID } from "node:crypto";
import type { JobsConfig } from "../config.js";
import { ChunkProcessor, type Computers } from "./chunks.js";
import { FileStore } from "./files.js";
import type { ChunkQueue } from "./queue.js";
import { JobResults } from "./results.js";
import type { BlobStore, MetaStore } from "./store.js";
import { type JobKind, JobNotFoundError, type JobRecord, type JobStatus, keys, TERMINAL } from "./types.js";

export { type Computers, JobNotFoundError };

/** What the engine needs of the jobs settings. */
export type EngineOptions = Pick<JobsConfig, "chunkSize" | "batchChunkSize" | "ttlSeconds">;

/**
 * Bulk jobs: inputs are split into chunks stored in the blob store, chunks are queued, any worker
 * on any host computes them, and results are stored per chunk so a chunk retried after a crash
 * overwrites its own result: every input appears in the output exactly once.
 */
export class JobEngine {
  readonly files: FileStore;
  readonly results: JobResults;
  private readonly chunks: ChunkProcessor;

  constructor(
    readonly meta: MetaStore,
    readonly blobs: BlobStore,
    readonly queue: ChunkQueue,
    readonly options: EngineOptions,
  ) {
    this.results = new JobResults(blobs);
    this.files = new FileStore(meta, blobs, this.results, (owner, id) => this.get(owner, id));
    this.chunks = new ChunkProcessor(meta, blobs, queue, (id, status, error) =>
      this.finish(id, status, error),
    );
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
      ...extra,
    };
  }

  /**
   * Store items in chunks as they stream in (memory holds one chunk), then queue every chunk.
   * The record exists from the start, in status "preparing".
   */
  private async create(
    record: JobRecord,
    items: AsyncIterable<string> | Iterable<string>,
  ): Promise<JobRecord> {
    await this.meta.putJob(record);
    let chunk: string[] = [];
    let chunks = 0;
    let total = 0;
    const flush = async () => {
      await this.blobs.put(keys.input(record.id, chunks), JSON.stringify(chunk));
      chunks++;
      chunk = [];
    };
    try {
      for await (const item of items) {
        chunk.push(item);
        total++;
        if (chunk.length >= record.chunkSize) await flush();
      }
      if (chunk.length) await flush();
    } catch (err) {
      await this.finish(record.id, "failed", `reading the inputs failed: ${(err as Error).message}`);
      throw err;
    }
    const ready: Partial<JobRecord> = { total, chunks, status: total === 0 ? "completed" : "queued" };
    if (total === 0) ready.finishedAt = Date.now();
    // A job cancelled while its inputs were still being stored stays cancelled.
    if (!(await this.meta.patchJob(record.id, ready, ["preparing"])))
      return this.meta.getJob(record.id) as Promise<JobRecord>;
    if (chunks > 0) await this.queue.add(record.id, chunks);
    return { ...record, ...ready };
  }

  createEmbedJob(
    owner: string,
    spec: {
      model: string;
      inputType: "query" | "passage";
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

  /** Move a job to a final status once (the first of racing finishers wins), and let it expire. */
  async finish(id: string, status: JobStatus, error?: string): Promise<void> {
    const now = Date.now();
    const ttl = this.options.ttlSeconds;
    const open = ["preparing", "queued", "running"] as const;
    const moved = await this.meta.patchJob(
      id,
      { status, finishedAt: now, expiresAt: Math.floor(now / 1000) + ttl },
      open,
    );
    if (!moved) return;
    if (error) await this.meta.addError(id, error);
    await this.meta.expireJob(id, ttl);
    await this.blobs.expirePrefix(`job:${id}:`, ttl);
  }

  /** Take chunks from the queue and compute them with these computers. */
  work(computers: Computers, concurrency: number): void {
    this.queue.consume((task, last) => this.chunks.process(task, last, computers), concurrency);
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}
