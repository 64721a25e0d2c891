import type { Float32Matrix } from "../runtime/matrix.js";
import { batchErrorLine } from "./batch-lines.js";
import type { ChunkQueue, ChunkTask } from "./queue.js";
import type { BlobStore, MetaStore } from "./store.js";
import { type JobRecord, type JobStatus, keys, TERMINAL } from "./types.js";

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

/** Moves a job to a final status (once) and lets it expire. */
export type Finisher = (id: string, status: JobStatus, error?: string) => Promise<void>;

/**
 * Computes one chunk of a job and stores its result under the chunk's own key, so a chunk
 * computed twice (a retry after a crash) overwrites itself: every input appears once.
 */
export class ChunkProcessor {
  constructor(
    private readonly meta: MetaStore,
    private readonly blobs: BlobStore,
    private readonly queue: ChunkQueue,
    private readonly finish: Finisher,
  ) {}

  async process(task: ChunkTask, lastAttempt: boolean, computers: Computers): Promise<void> {
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
        await this.done(job, task.chunk, { tokens, failed: 0, inputs: items.length });
      } else {
        const { outputs, errors, tokens } = await computers.batch(items);
        await this.blobs.put(keys.output(job.id, task.chunk), outputs.map((l) => `${l}\n`).join(""));
        await this.blobs.put(keys.errors(job.id, task.chunk), errors.map((l) => `${l}\n`).join(""));
        await this.done(job, task.chunk, { tokens, failed: errors.length, inputs: items.length });
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
      await this.done(job, task.chunk, { tokens: 0, failed: failedLines.length, inputs: items.length });
    }
  }

  private async done(
    job: JobRecord,
    chunk: number,
    counts: { tokens: number; failed: number; inputs: number },
  ): Promise<void> {
    const done = await this.meta.markChunk(job.id, chunk, counts);
    if (done >= job.chunks) await this.finish(job.id, "completed");
  }
}
