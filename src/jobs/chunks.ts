import type { Float32Matrix } from "../runtime/matrix.js";
import { batchErrorLine } from "./batch-lines.js";
import type { ChunkQueue, ChunkTask } from "./queue.js";
import type { BlobStore, MetaStore } from "./store.js";
import { type JobRecord, type JobStatus, jobKeys, keys, TERMINAL } from "./types.js";

/** Embeds a chunk of texts for an embed job (the device workers, through a served model). */
export type EmbedComputer = (
  model: string,
  texts: string[],
  opts: { inputType: "query" | "passage" | "classification" | "clustering"; dimensions: number | null },
) => Promise<{ vectors: Float32Matrix; tokens: number }>;

/** Answers a chunk of OpenAI Batch API request lines: one output or error line per request. */
export type LineComputer = (
  lines: string[],
) => Promise<{ outputs: string[]; errors: string[]; tokens: number }>;

export interface Computers {
  embed: EmbedComputer;
  batch: LineComputer;
}

/** Moves a job to a final status (once) and lets it expire. */
export type Finisher = (id: string, status: JobStatus, error?: string) => Promise<void>;

const lines = (list: string[]) => list.map((l) => `${l}\n`).join("");

/**
 * Computes one chunk of a job and stores its result under the chunk's own key, so a chunk
 * computed twice (a retry after a crash) overwrites itself: every input appears once. Any error
 * is a failed attempt; when the queue gives up on a chunk, `failed` ends it: an embed job fails,
 * a batch records the chunk's requests as failed and goes on.
 */
export class ChunkProcessor {
  constructor(
    private readonly meta: MetaStore,
    private readonly blobs: BlobStore,
    private readonly queue: ChunkQueue,
    private readonly finish: Finisher,
    private readonly ttlSeconds: number,
  ) {}

  async process(task: ChunkTask, computers: Computers): Promise<void> {
    const job = await this.meta.getJob(task.job);
    // A cancelled, failed or expired job's chunks are dropped, not computed.
    if (!job || TERMINAL.has(job.status)) return;
    if (job.status === "queued")
      await this.meta.patchJob(job.id, { status: "running", startedAt: Date.now() }, { status: ["queued"] });
    const stored = await this.blobs.get(keys.input(job.id, task.chunk));
    if (!stored) {
      // Nothing a retry could fix.
      await this.finish(job.id, "failed", `the inputs of chunk ${task.chunk} are missing from the store`);
      return;
    }
    const items = JSON.parse(stored.toString("utf8")) as string[];
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
      await this.stored(job, task.chunk, { tokens, failed: 0, inputs: items.length });
    } else {
      const { outputs, errors, tokens } = await computers.batch(items);
      await this.blobs.put(keys.output(job.id, task.chunk), lines(outputs));
      await this.blobs.put(keys.errors(job.id, task.chunk), lines(errors));
      await this.stored(job, task.chunk, { tokens, failed: errors.length, inputs: items.length });
    }
  }

  /** The queue gave up on a chunk (attempts spent, or stalled too often): end it for the job. */
  async failed(task: ChunkTask, reason: string): Promise<void> {
    const job = await this.meta.getJob(task.job);
    if (!job || TERMINAL.has(job.status)) return;
    const message = `chunk ${task.chunk}: ${reason}`;
    let items: string[] | undefined;
    if (job.kind === "batch") {
      const stored = await this.blobs.get(keys.input(job.id, task.chunk)).catch(() => undefined);
      items = stored ? (JSON.parse(stored.toString("utf8")) as string[]) : undefined;
    }
    if (!items) {
      // An embed job without all its vectors has failed (so has a batch whose requests are unreadable).
      await this.finish(job.id, "failed", message);
      await this.queue.remove(job.id, job.chunks);
      return;
    }
    // A batch records the chunk's requests as failed and goes on.
    const failedLines = items.map((line) => batchErrorLine(line, "server_error", message));
    await this.blobs.put(keys.output(job.id, task.chunk), "");
    await this.blobs.put(keys.errors(job.id, task.chunk), lines(failedLines));
    await this.meta.addError(job.id, message);
    await this.stored(job, task.chunk, { tokens: 0, failed: failedLines.length, inputs: items.length });
  }

  private async stored(
    job: JobRecord,
    chunk: number,
    counts: { tokens: number; failed: number; inputs: number },
  ): Promise<void> {
    const done = await this.meta.markChunk(job.id, chunk, counts);
    if (done >= job.chunks) await this.finish(job.id, "completed");
    // A job that ended while this chunk ran (cancelled, failed by another chunk) had its keys
    // expired before this chunk wrote its own: give them the same expiry.
    const now = await this.meta.getJob(job.id);
    if (!now || TERMINAL.has(now.status))
      await this.blobs.expire(jobKeys(job.id, chunk + 1, chunk), this.ttlSeconds);
  }
}
