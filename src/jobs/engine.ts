import { randomUUID } from "node:crypto";
import { float32Json } from "../runtime/float-format.js";
import type { Float32Matrix } from "../runtime/matrix.js";
import { npyHeader, toFloat16 } from "./npy.js";
import type { ChunkQueue, ChunkTask } from "./queue.js";
import type { BlobStore, MetaStore } from "./store.js";
import { type FileRecord, type JobKind, type JobRecord, type JobStatus, keys, TERMINAL } from "./types.js";

/** Embeds a chunk of texts for an embed job (the device workers, through a served model). */
export type EmbedComputer = (
  model: string,
  texts: string[],
  opts: { inputType: "query" | "passage"; dimensions: number | null },
) => Promise<{ vectors: Float32Matrix; tokens: number }>;

/** Answers a chunk of OpenAI Batch API request lines: one output or error line per request. */
export type LineComputer = (
  lines: string[],
) => Promise<{ outputs: string[]; errors: string[]; tokens: number }>;

export interface Computers {
  embed: EmbedComputer;
  batch: LineComputer;
}

export interface EngineOptions {
  /** Inputs per chunk of an embed job. */
  chunkSize: number;
  /** Request lines per chunk of a batch. */
  batchChunkSize: number;
  /** Seconds a finished job and its data are kept. */
  ttlSeconds: number;
  /** Bytes of an uploaded file per stored part. */
  filePartBytes: number;
}

export const DEFAULT_ENGINE: EngineOptions = {
  chunkSize: 1024,
  batchChunkSize: 64,
  ttlSeconds: 7 * 24 * 3600,
  filePartBytes: 1 << 20,
};

/** A job was not found for this owner (another key's jobs look the same as missing ones). */
export class JobNotFoundError extends Error {}

async function* lines(source: AsyncIterable<Buffer | string>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of source) {
    rest += typeof chunk === "string" ? chunk : chunk.toString("utf8");
    let nl = rest.indexOf("\n");
    while (nl >= 0) {
      yield rest.slice(0, nl).replace(/\r$/, "");
      rest = rest.slice(nl + 1);
      nl = rest.indexOf("\n");
    }
  }
  if (rest.length) yield rest.replace(/\r$/, "");
}

/**
 * Bulk jobs: inputs are split into chunks stored in the blob store, chunks are queued, any worker
 * on any host computes them, and results are stored per chunk so a chunk retried after a crash
 * overwrites its own result: every input appears in the output exactly once.
 */
export class JobEngine {
  readonly options: EngineOptions;

  constructor(
    readonly meta: MetaStore,
    readonly blobs: BlobStore,
    readonly queue: ChunkQueue,
    options: Partial<EngineOptions> = {},
  ) {
    this.options = { ...DEFAULT_ENGINE, ...options };
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
  private async finish(id: string, status: JobStatus, error?: string): Promise<void> {
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

  // ------------------------------------------------------------------ working

  /** Take chunks from the queue and compute them with these computers. */
  work(computers: Computers, concurrency: number): void {
    this.queue.consume((task, last) => this.processChunk(task, last, computers), concurrency);
  }

  async processChunk(task: ChunkTask, lastAttempt: boolean, computers: Computers): Promise<void> {
    const job = await this.meta.getJob(task.job);
    // A cancelled, failed or expired job's chunks are dropped, not computed.
    if (!job || TERMINAL.has(job.status)) return;
    if (job.status === "queued")
      await this.meta.patchJob(job.id, { status: "running", startedAt: Date.now() }, ["queued"]);
    const stored = await this.blobs.get(keys.input(job.id, task.chunk));
    if (!stored) {
      await this.finish(job.id, "failed", `the inputs of chunk ${task.chunk} are missing from the store`);
      return;
    }
    const items = JSON.parse(stored.toString("utf8")) as string[];
    try {
      if (job.kind === "embed") {
        const { vectors, tokens } = await computers.embed(job.model, items, {
          inputType: job.inputType,
          dimensions: job.dimensions,
        });
        await this.blobs.put(
          keys.output(job.id, task.chunk),
          Buffer.from(vectors.data.buffer, vectors.data.byteOffset, vectors.data.byteLength),
        );
        if (!job.dims) await this.meta.patchJob(job.id, { dims: vectors.dims });
        await this.chunkDone(job, task.chunk, { tokens, failed: 0, inputs: items.length });
      } else {
        const { outputs, errors, tokens } = await computers.batch(items);
        await this.blobs.put(keys.output(job.id, task.chunk), outputs.map((l) => `${l}\n`).join(""));
        await this.blobs.put(keys.errors(job.id, task.chunk), errors.map((l) => `${l}\n`).join(""));
        await this.chunkDone(job, task.chunk, { tokens, failed: errors.length, inputs: items.length });
      }
    } catch (err) {
      const message = `chunk ${task.chunk}: ${(err as Error).message}`;
      if (!lastAttempt) throw err;
      if (job.kind === "embed") {
        // An embed job without all its vectors has failed; stop the rest.
        await this.finish(job.id, "failed", message);
        await this.queue.remove(job.id, job.chunks);
        return;
      }
      // A batch records the chunk's requests as failed and goes on.
      const failedLines = items.map((line) => batchErrorLine(line, "server_error", message));
      await this.blobs.put(keys.output(job.id, task.chunk), "");
      await this.blobs.put(keys.errors(job.id, task.chunk), failedLines.map((l) => `${l}\n`).join(""));
      await this.meta.addError(job.id, message);
      await this.chunkDone(job, task.chunk, { tokens: 0, failed: failedLines.length, inputs: items.length });
    }
  }

  private async chunkDone(
    job: JobRecord,
    chunk: number,
    counts: { tokens: number; failed: number; inputs: number },
  ): Promise<void> {
    const done = await this.meta.markChunk(job.id, chunk, counts);
    if (done >= job.chunks) await this.finish(job.id, "completed");
  }

  // ------------------------------------------------------------------ results

  /** The vectors of a completed embed job, chunk by chunk (memory holds one chunk). */
  async *vectorChunks(job: JobRecord): AsyncGenerator<Float32Array> {
    for (let c = 0; c < job.chunks; c++) {
      const buf = await this.blobs.get(keys.output(job.id, c));
      if (!buf) throw new Error(`the results of chunk ${c} are missing (expired?)`);
      const copy = new Uint8Array(buf.byteLength);
      copy.set(buf);
      yield new Float32Array(copy.buffer);
    }
  }

  /** JSONL: {"index", "embedding"} per input, in input order. */
  async *jsonl(job: JobRecord): AsyncGenerator<string> {
    let index = 0;
    for await (const data of this.vectorChunks(job)) {
      const rows = data.length / job.dims;
      let text = "";
      for (let r = 0; r < rows; r++) {
        text += `{"index":${index++},"embedding":${float32Json(data.subarray(r * job.dims, (r + 1) * job.dims))}}\n`;
      }
      yield text;
    }
  }

  /** A NumPy .npy file of shape (inputs, dims), float32 or float16. */
  async *npy(job: JobRecord, dtype: "float32" | "float16"): AsyncGenerator<Buffer> {
    yield npyHeader(dtype === "float16" ? "<f2" : "<f4", [job.total, job.dims]);
    for await (const data of this.vectorChunks(job)) {
      yield dtype === "float16"
        ? Buffer.from(toFloat16(data).buffer)
        : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    }
  }

  /** A batch's output or error lines, in request order. */
  async *batchLines(job: JobRecord, which: "output" | "errors"): AsyncGenerator<Buffer> {
    for (let c = 0; c < job.chunks; c++) {
      const buf = await this.blobs.get(which === "output" ? keys.output(job.id, c) : keys.errors(job.id, c));
      if (buf?.length) yield buf;
    }
  }

  // ------------------------------------------------------------------ files

  /** Store an upload in parts of whole lines (memory holds one part). */
  async putFile(
    owner: string,
    filename: string,
    purpose: string,
    content: AsyncIterable<Buffer>,
  ): Promise<FileRecord> {
    const record: FileRecord = {
      id: `file-${randomUUID().replaceAll("-", "")}`,
      owner,
      filename,
      purpose,
      bytes: 0,
      parts: 0,
      createdAt: Math.floor(Date.now() / 1000),
    };
    let part = "";
    for await (const line of lines(content)) {
      part += `${line}\n`;
      record.bytes += Buffer.byteLength(line) + 1;
      if (part.length >= this.options.filePartBytes) {
        await this.blobs.put(keys.filePart(record.id, record.parts++), part);
        part = "";
      }
    }
    if (part.length) await this.blobs.put(keys.filePart(record.id, record.parts++), part);
    await this.meta.putFile(record);
    return record;
  }

  async getFile(owner: string, id: string): Promise<FileRecord> {
    const derived = /^file-(batch_[0-9a-f]+)-(output|errors)$/.exec(id);
    if (derived) {
      const job = await this.get(owner, derived[1] as string);
      if (job.status !== "completed" && job.status !== "cancelled")
        throw new JobNotFoundError(`file ${id} not found`);
      return {
        id,
        owner,
        filename: `${job.id}_${derived[2]}.jsonl`,
        purpose: "batch_output",
        bytes: 0,
        parts: job.chunks,
        createdAt: Math.floor((job.finishedAt ?? job.createdAt) / 1000),
        derivedFrom: { job: job.id, which: derived[2] as "output" | "errors" },
      };
    }
    const file = await this.meta.getFile(id);
    if (!file || file.owner !== owner) throw new JobNotFoundError(`file ${id} not found`);
    return file;
  }

  async *fileContent(file: FileRecord): AsyncGenerator<Buffer> {
    if (file.derivedFrom) {
      const job = await this.get(file.owner, file.derivedFrom.job);
      yield* this.batchLines(job, file.derivedFrom.which);
      return;
    }
    for (let p = 0; p < file.parts; p++) {
      const buf = await this.blobs.get(keys.filePart(file.id, p));
      if (!buf) throw new Error(`part ${p} of ${file.id} is missing`);
      yield buf;
    }
  }

  async *fileLines(file: FileRecord): AsyncGenerator<string> {
    for await (const line of lines(this.fileContent(file))) if (line.trim()) yield line;
  }

  async deleteFile(owner: string, id: string): Promise<void> {
    const file = await this.getFile(owner, id);
    if (file.derivedFrom) return;
    await this.meta.deleteFile(id);
    await this.blobs.deletePrefix(`file:${id}:`);
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}

/** An OpenAI Batch API error line for a request that could not be answered. */
export function batchErrorLine(line: string, code: string, message: string): string {
  let customId: string | null = null;
  try {
    const parsed = JSON.parse(line) as { custom_id?: unknown };
    if (typeof parsed.custom_id === "string") customId = parsed.custom_id;
  } catch {
    // the line is not JSON: no custom_id to report
  }
  return JSON.stringify({
    id: `batch_req_${randomUUID().replaceAll("-", "")}`,
    custom_id: customId,
    response: null,
    error: { code, message },
  });
}
