import { Queue, Worker } from "bullmq";
import type { Redis } from "ioredis";

/** One unit of work: a chunk of a job's inputs. */
export interface ChunkTask {
  job: string;
  chunk: number;
}

/** Processes a chunk; a rejection is a failed attempt, retried until the queue gives up. */
export type ChunkHandler = (task: ChunkTask) => Promise<void>;

/**
 * Told about a chunk the queue gave up on: its attempts are spent, or (BullMQ) it stalled more
 * often than allowed. A rejection means "not recorded yet": the queue reports it again later.
 */
export type FailureHandler = (task: ChunkTask, reason: string) => Promise<void>;

/** Where chunks wait for a worker: BullMQ on Redis across machines, or this process's memory. */
export interface ChunkQueue {
  /** Whether queued chunks outlive this process (BullMQ), or must be queued again after a restart. */
  readonly durable: boolean;
  /** Queue these chunks of a job; a chunk already waiting or running is not queued twice. */
  add(job: string, chunks: readonly number[]): Promise<void>;
  /** Drop the chunks still waiting (running ones finish and are discarded by the handler). */
  remove(job: string, chunks: number): Promise<void>;
  /** Start taking chunks, `concurrency` at a time. */
  consume(handler: ChunkHandler, concurrency: number): void;
  /** Report every chunk the queue gives up on, whichever process's worker gave up on it. */
  onFailed(handler: FailureHandler): void;
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
  /** How often failed chunks are looked for (BullMQ fails a stalled chunk without a local event). */
  failedSweepMs?: number;
}

/**
 * BullMQ: chunks are jobs with deterministic ids (adding one twice is a no-op), retried with
 * exponential backoff; a chunk whose worker died is returned to the queue by BullMQ's stalled
 * check once its lock lapses. Chunks that end in BullMQ's failed set, whoever put them there
 * (attempts spent, or stalled too often), are handed to the failure handler, then removed.
 */
export class BullChunkQueue implements ChunkQueue {
  readonly durable = true;
  private readonly queue: Queue;
  private worker: Worker | undefined;
  private failureHandler: FailureHandler | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  private sweepAgain = false;
  private closed = false;

  constructor(
    private readonly connection: () => Redis,
    private readonly options: BullOptions,
    private readonly log: (message: string, detail?: Record<string, unknown>) => void = () => {},
  ) {
    this.queue = new Queue(QUEUE, { connection: connection() });
  }

  async add(job: string, chunks: readonly number[]): Promise<void> {
    const { attempts, backoffMs } = this.options.retry;
    for (let start = 0; start < chunks.length; start += 500) {
      await this.queue.addBulk(
        chunks.slice(start, start + 500).map((c) => ({
          name: "chunk",
          data: { job, chunk: c } satisfies ChunkTask,
          opts: {
            jobId: chunkId(job, c),
            attempts,
            backoff: { type: "exponential", delay: backoffMs },
            removeOnComplete: true,
            removeOnFail: { age: 24 * 3600 },
          },
        })),
      );
    }
  }

  async remove(job: string, chunks: number): Promise<void> {
    for (let c = 0; c < chunks; c++) {
      // Active (locked) chunks cannot be removed (BullMQ answers 0); their handler sees the cancellation.
      await this.queue.remove(chunkId(job, c));
    }
  }

  consume(handler: ChunkHandler, concurrency: number): void {
    this.worker = new Worker(QUEUE, async (j) => handler(j.data as ChunkTask), {
      connection: this.connection(),
      concurrency,
      lockDuration: this.options.lockMs,
      stalledInterval: Math.max(1000, Math.floor(this.options.lockMs / 2)),
      maxStalledCount: 3,
    });
    this.worker.on("error", (err) => this.log("job queue error", { error: err.message }));
    // A failed attempt may have been the last one: look at the failed set now, not at the next sweep.
    this.worker.on("failed", () => this.sweepFailed());
  }

  onFailed(handler: FailureHandler): void {
    this.failureHandler = handler;
    this.sweepTimer = setInterval(() => this.sweepFailed(), this.options.failedSweepMs ?? 5000);
    this.sweepTimer.unref();
    this.sweepFailed();
  }

  /** Hand every chunk in BullMQ's failed set to the failure handler (one sweep at a time). */
  private sweepFailed(): void {
    if (this.sweeping) {
      this.sweepAgain = true;
      return;
    }
    this.sweeping = (async () => {
      do {
        this.sweepAgain = false;
        await this.handleFailed();
      } while (this.sweepAgain && !this.closed);
    })()
      .catch((err: Error) => {
        if (!this.closed) this.log("failed chunks could not be recorded yet", { error: err.message });
      })
      .finally(() => {
        this.sweeping = undefined;
      });
  }

  private async handleFailed(): Promise<void> {
    const handler = this.failureHandler;
    if (!handler || this.closed) return;
    let unrecorded: unknown;
    for (const j of await this.queue.getFailed(0, 199)) {
      if (this.closed) return;
      if (j?.name !== "chunk") continue;
      try {
        await handler(j.data as ChunkTask, j.failedReason || "the chunk failed");
      } catch (err) {
        unrecorded ??= err; // kept for the next sweep; the others are still recorded now
        continue;
      }
      // Recorded: drop it, so no sweep reports it again (another process may have dropped it first).
      await j.remove().catch(() => {});
    }
    if (unrecorded) throw unrecorded;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweepTimer);
    // A sweep in progress stops at its next step (not awaited: during a Redis outage it would hang).
    await this.worker?.close();
    await this.queue.close();
  }
}

interface Waiting {
  task: ChunkTask;
  attempt: number;
}

const taskKey = (t: ChunkTask) => `${t.job}\n${t.chunk}`;

/** An in-process queue with the same retry rules: the embedded mode without Redis. */
export class LocalChunkQueue implements ChunkQueue {
  readonly durable = false;
  private readonly waiting: Waiting[] = [];
  /** Chunks waiting, running or waiting for a retry: queued at most once. */
  private readonly pending = new Set<string>();
  private handler: ChunkHandler | undefined;
  private failureHandler: FailureHandler | undefined;
  private concurrency = 1;
  private running = 0;
  private closed = false;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly retry: RetryPolicy) {}

  async add(job: string, chunks: readonly number[]): Promise<void> {
    for (const c of chunks) {
      const task = { job, chunk: c };
      if (this.pending.has(taskKey(task))) continue;
      this.pending.add(taskKey(task));
      this.waiting.push({ task, attempt: 1 });
    }
    this.pump();
  }

  async remove(job: string): Promise<void> {
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      const w = this.waiting[i] as Waiting;
      if (w.task.job === job) {
        this.waiting.splice(i, 1);
        this.pending.delete(taskKey(w.task));
      }
    }
  }

  consume(handler: ChunkHandler, concurrency: number): void {
    this.handler = handler;
    this.concurrency = concurrency;
    this.pump();
  }

  onFailed(handler: FailureHandler): void {
    this.failureHandler = handler;
  }

  private later(ms: number, fn: () => void): void {
    if (this.closed) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
  }

  private pump(): void {
    const handler = this.handler;
    if (!handler) return;
    while (!this.closed && this.running < this.concurrency && this.waiting.length > 0) {
      const w = this.waiting.shift() as Waiting;
      this.running++;
      handler(w.task)
        .then(
          () => this.pending.delete(taskKey(w.task)),
          (err: Error) => {
            if (w.attempt < this.retry.attempts) {
              this.later(this.retry.backoffMs * 2 ** (w.attempt - 1), () => {
                this.waiting.push({ task: w.task, attempt: w.attempt + 1 });
                this.pump();
              });
              return;
            }
            // Whatever failed, in the handler's try block or outside it, the job must learn of it.
            this.pending.delete(taskKey(w.task));
            this.reportFailure(w.task, err?.message ?? String(err), 0);
          },
        )
        .finally(() => {
          this.running--;
          this.pump();
        });
    }
  }

  /** Hand a chunk given up on to the failure handler until it has recorded it. */
  private reportFailure(task: ChunkTask, reason: string, tries: number): void {
    const handler = this.failureHandler;
    if (!handler) return;
    handler(task, reason).catch(() => {
      this.later(Math.min(this.retry.backoffMs * 2 ** tries, 60_000), () =>
        this.reportFailure(task, reason, tries + 1),
      );
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
  }
}
