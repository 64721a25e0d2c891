import { Queue, Worker } from "bullmq";
import type { Redis } from "ioredis";

/** One unit of work: a chunk of a job's inputs. */
export interface ChunkTask {
  job: string;
  chunk: number;
}

/** Processes a chunk; `lastAttempt` tells it that a failure now is final. */
export type ChunkHandler = (task: ChunkTask, lastAttempt: boolean) => Promise<void>;

/** Where chunks wait for a worker: BullMQ on Redis across machines, or this process's memory. */
export interface ChunkQueue {
  add(job: string, chunks: number): Promise<void>;
  /** Drop the chunks still waiting (running ones finish and are discarded by the handler). */
  remove(job: string, chunks: number): Promise<void>;
  /** Start taking chunks, `concurrency` at a time. */
  consume(handler: ChunkHandler, concurrency: number): void;
  close(): Promise<void>;
}

export interface RetryPolicy {
  /** Tries per chunk, the first included. */
  attempts: number;
  /** First retry delay; doubles each time. */
  backoffMs: number;
}

const QUEUE = "flagserve-chunks";
const chunkId = (job: string, chunk: number) => `${job}-${chunk}`;

export interface BullOptions {
  /** How long a worker holds a chunk before others may take it back (a dead worker's chunks return). */
  lockMs: number;
  retry: RetryPolicy;
}

/**
 * BullMQ: chunks are jobs with deterministic ids (adding one twice is a no-op), retried with
 * exponential backoff; a chunk whose worker died is returned to the queue by BullMQ's stalled
 * check once its lock lapses.
 */
export class BullChunkQueue implements ChunkQueue {
  private readonly queue: Queue;
  private worker: Worker | undefined;

  constructor(
    private readonly connection: () => Redis,
    private readonly options: BullOptions,
    private readonly log: (message: string, detail?: Record<string, unknown>) => void = () => {},
  ) {
    this.queue = new Queue(QUEUE, { connection: connection() });
  }

  async add(job: string, chunks: number): Promise<void> {
    const { attempts, backoffMs } = this.options.retry;
    for (let start = 0; start < chunks; start += 500) {
      const batch = [];
      for (let c = start; c < Math.min(chunks, start + 500); c++) {
        batch.push({
          name: "chunk",
          data: { job, chunk: c } satisfies ChunkTask,
          opts: {
            jobId: chunkId(job, c),
            attempts,
            backoff: { type: "exponential", delay: backoffMs },
            removeOnComplete: true,
            removeOnFail: { age: 24 * 3600 },
          },
        });
      }
      await this.queue.addBulk(batch);
    }
  }

  async remove(job: string, chunks: number): Promise<void> {
    for (let c = 0; c < chunks; c++) {
      // Active (locked) chunks cannot be removed (BullMQ answers 0); their handler sees the cancellation.
      await this.queue.remove(chunkId(job, c));
    }
  }

  consume(handler: ChunkHandler, concurrency: number): void {
    const attempts = this.options.retry.attempts;
    this.worker = new Worker(
      QUEUE,
      async (j) => handler(j.data as ChunkTask, j.attemptsMade + 1 >= attempts),
      {
        connection: this.connection(),
        concurrency,
        lockDuration: this.options.lockMs,
        stalledInterval: Math.max(1000, Math.floor(this.options.lockMs / 2)),
        maxStalledCount: 3,
      },
    );
    // A chunk's own failure is recorded by the handler; what reaches here is the queue's (Redis).
    this.worker.on("error", (err) => this.log("job queue error", { error: err.message }));
  }

  async close(): Promise<void> {
    await this.worker?.close();
    await this.queue.close();
  }
}

interface Waiting {
  task: ChunkTask;
  attempt: number;
}

/** An in-process queue with the same retry rules: the embedded mode without Redis. */
export class LocalChunkQueue implements ChunkQueue {
  private readonly waiting: Waiting[] = [];
  private handler: ChunkHandler | undefined;
  private concurrency = 1;
  private running = 0;
  private closed = false;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly retry: RetryPolicy) {}

  async add(job: string, chunks: number): Promise<void> {
    for (let c = 0; c < chunks; c++) this.waiting.push({ task: { job, chunk: c }, attempt: 1 });
    this.pump();
  }

  async remove(job: string): Promise<void> {
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      if (this.waiting[i]?.task.job === job) this.waiting.splice(i, 1);
    }
  }

  consume(handler: ChunkHandler, concurrency: number): void {
    this.handler = handler;
    this.concurrency = concurrency;
    this.pump();
  }

  private pump(): void {
    const handler = this.handler;
    if (!handler) return;
    while (!this.closed && this.running < this.concurrency && this.waiting.length > 0) {
      const w = this.waiting.shift() as Waiting;
      this.running++;
      handler(w.task, w.attempt >= this.retry.attempts)
        .catch(() => {
          if (w.attempt >= this.retry.attempts) return;
          const t = setTimeout(
            () => {
              this.timers.delete(t);
              this.waiting.push({ task: w.task, attempt: w.attempt + 1 });
              this.pump();
            },
            this.retry.backoffMs * 2 ** (w.attempt - 1),
          );
          this.timers.add(t);
        })
        .finally(() => {
          this.running--;
          this.pump();
        });
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
  }
}
