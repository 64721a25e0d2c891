import { DEFAULT_CONFIG, type SchedulerOptions } from "../config.js";

export type { SchedulerOptions };

/** Padded tokens a batch may waste whatever its efficiency (short queries batch together freely). */
const PADDING_SLACK_TOKENS = 128;

/** What the scheduler batches: anything with token ids (its length decides padding). */
export interface Tokenized {
  ids: ArrayLike<number>;
}

/** Runs one batch on the given slot (device) and returns one result per item, in order. */
export type BatchRunner<T extends Tokenized, R> = (items: T[], slot: number) => Promise<R[]>;

export interface BatchStats {
  rows: number;
  realTokens: number;
  paddedTokens: number;
  requests: number;
  /** Wall time from dispatch to results (the device's time plus the trip to it). */
  seconds: number;
}

/** Told of every batch run and every request refused (for metrics). */
export interface SchedulerObserver {
  batch(stats: BatchStats): void;
  rejected(reason: "queue_full" | "deadline"): void;
}

/** The queue is full: the caller should answer 429 and ask the client to retry later. */
export class OverloadedError extends Error {
  readonly retryAfterSeconds: number;
  constructor(message: string, retryAfterSeconds: number) {
    super(message);
    this.name = "OverloadedError";
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** The request's deadline passed before all its inputs were computed. */
export class DeadlineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DeadlineError";
  }
}

/** The scheduler is shutting down and takes no new work. */
export class ClosedError extends Error {
  constructor() {
    super("the server is shutting down");
    this.name = "ClosedError";
  }
}

interface Pending<T, R> {
  encodings: T[];
  /** Indices into encodings, longest first, so consecutive batches of a big request pad little. */
  order: number[];
  next: number;
  done: number;
  results: R[];
  enqueuedAt: number;
  settled: boolean;
  timer: NodeJS.Timeout | undefined;
  resolve: (r: R[]) => void;
  reject: (e: Error) => void;
}

/**
 * Dynamic batching for one model: inputs of all concurrent requests are packed into batches
 * under a padded-token budget and a row cap, with a short collection window.
 *
 * Fairness: batches are filled from the requests with the fewest inputs left first, so a short
 * query never waits behind the whole of a bulk request, only behind the batches already running;
 * a request that has waited past `starvationMs` goes first regardless, so bulk work cannot starve.
 */
export class BatchScheduler<T extends Tokenized, R> {
  private readonly queue: Pending<T, R>[] = [];
  private readonly options: SchedulerOptions;
  private readonly runner: BatchRunner<T, R>;
  private readonly observer: SchedulerObserver | undefined;
  private freeSlots: number[];
  private queuedInputs = 0;
  private windowTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  /** Recent seconds per batch, for Retry-After estimates. */
  private batchSeconds = 0.05;

  constructor(
    runner: BatchRunner<T, R>,
    options: Partial<SchedulerOptions> = {},
    observer?: SchedulerObserver,
  ) {
    this.options = { ...DEFAULT_CONFIG.scheduler, ...options };
    this.runner = runner;
    this.observer = observer;
    this.freeSlots = Array.from({ length: this.options.concurrency }, (_, i) => i);
  }

  get queued(): number {
    return this.queuedInputs;
  }

  /**
   * Throw OverloadedError if `count` more inputs would not fit in the queue now: callers check
   * before tokenizing, so refused work costs nothing.
   */
  admit(count: number): void {
    if (this.closed) throw new ClosedError();
    if (this.queuedInputs > 0 && this.queuedInputs + count > this.options.maxQueuedInputs) {
      const batchesAhead = Math.ceil(
        this.queuedInputs / this.options.maxBatchSize / this.options.concurrency,
      );
      const retry = Math.max(1, Math.ceil(batchesAhead * this.batchSeconds));
      this.observer?.rejected("queue_full");
      throw new OverloadedError(
        `the queue for this model is full (${this.queuedInputs} inputs waiting)`,
        retry,
      );
    }
  }

  /** Compute every encoding; results come back in input order. */
  submit(encodings: T[], timeoutMs: number): Promise<R[]> {
    try {
      this.admit(encodings.length);
    } catch (err) {
      return Promise.reject(err);
    }
    if (encodings.length === 0) return Promise.resolve([]);
    if (timeoutMs <= 0) {
      this.observer?.rejected("deadline");
      return Promise.reject(new DeadlineError("request deadline passed before its inputs were queued"));
    }
    return new Promise<R[]>((resolve, reject) => {
      const order = encodings
        .map((_, i) => i)
        .sort((a, b) => (encodings[b] as T).ids.length - (encodings[a] as T).ids.length || a - b);
      const p: Pending<T, R> = {
        encodings,
        order,
        next: 0,
        done: 0,
        results: new Array<R>(encodings.length),
        enqueuedAt: Date.now(),
        settled: false,
        timer: undefined,
        resolve,
        reject,
      };
      p.timer = setTimeout(() => {
        this.observer?.rejected("deadline");
        this.fail(p, new DeadlineError(`request not completed within ${timeoutMs} ms`));
      }, timeoutMs);
      p.timer.unref();
      this.queue.push(p);
      this.queuedInputs += encodings.length;
      this.pump();
    });
  }

  /** Stop taking work; resolves when everything queued or running has finished. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.queuedInputs === 0 && this.inFlight === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private fail(p: Pending<T, R>, err: Error): void {
    if (p.settled) return;
    p.settled = true;
    if (p.timer) clearTimeout(p.timer);
    // Inputs not yet scheduled leave the queue now; running ones finish and are dropped.
    this.queuedInputs -= p.encodings.length - p.next;
    p.next = p.encodings.length;
    this.removeIfDrained(p);
    p.reject(err);
    this.checkIdle();
  }

  private removeIfDrained(p: Pending<T, R>): void {
    if (p.next >= p.encodings.length) {
      const i = this.queue.indexOf(p);
      if (i >= 0) this.queue.splice(i, 1);
    }
  }

  private checkIdle(): void {
    if (this.queuedInputs === 0 && this.inFlight === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private pump(): void {
    while (this.freeSlots.length > 0 && this.queuedInputs > 0) {
      const oldest = Math.min(...this.queue.map((p) => p.enqueuedAt));
      const waited = Date.now() - oldest;
      // Wait briefly for company unless a full batch is already there or the window has passed.
      if (waited < this.options.windowMs && this.queuedInputs < this.options.maxBatchSize) {
        if (!this.windowTimer) {
          this.windowTimer = setTimeout(() => {
            this.windowTimer = undefined;
            this.pump();
          }, this.options.windowMs - waited);
        }
        return;
      }
      this.runBatch(this.freeSlots.shift() as number);
    }
  }

  private pickOrder(): Pending<T, R>[] {
    const now = Date.now();
    const starving = (p: Pending<T, R>) => now - p.enqueuedAt >= this.options.starvationMs;
    return [...this.queue].sort((a, b) => {
      const sa = starving(a);
      const sb = starving(b);
      if (sa !== sb) return sa ? -1 : 1;
      if (sa) return a.enqueuedAt - b.enqueuedAt;
      return a.encodings.length - a.next - (b.encodings.length - b.next) || a.enqueuedAt - b.enqueuedAt;
    });
  }

  private runBatch(slot: number): void {
    const { maxBatchSize, maxBatchTokens } = this.options;
    const taken: { p: Pending<T, R>; index: number }[] = [];
    let longest = 0;
    let real = 0;
    // Requests in priority order; from each, its longest remaining inputs for as long as they keep
    // the batch's padding efficiency above target (the first input always goes in). A request whose
    // next input would pad too much waits for a batch of its own length.
    for (const p of this.pickOrder()) {
      while (p.next < p.encodings.length && taken.length < maxBatchSize) {
        const index = p.order[p.next] as number;
        const len = (p.encodings[index] as T).ids.length;
        const newLongest = Math.max(longest, len);
        if (taken.length > 0) {
          if ((taken.length + 1) * newLongest > maxBatchTokens) break;
          const computed = (taken.length + 1) * newLongest;
          // Padding among short inputs costs little in absolute terms; only a costly one is refused.
          const waste = computed - (real + len);
          if ((real + len) / computed < this.options.minPaddingEfficiency && waste > PADDING_SLACK_TOKENS)
            break;
        }
        taken.push({ p, index });
        longest = newLongest;
        real += len;
        p.next++;
      }
      if (taken.length >= maxBatchSize) break;
    }
    for (const { p } of taken) this.removeIfDrained(p);
    this.queuedInputs -= taken.length;
    this.inFlight++;
    const encodings = taken.map(({ p, index }) => p.encodings[index] as T);
    const started = performance.now();
    const report = () =>
      this.observer?.batch({
        rows: encodings.length,
        realTokens: real,
        paddedTokens: encodings.length * longest,
        requests: new Set(taken.map((t) => t.p)).size,
        seconds: (performance.now() - started) / 1000,
      });
    this.runner(encodings, slot).then(
      (results) => {
        report();
        this.batchSeconds = 0.8 * this.batchSeconds + 0.2 * ((performance.now() - started) / 1000);
        taken.forEach(({ p, index }, i) => {
          if (p.settled) return;
          p.results[index] = results[i] as R;
          p.done++;
          if (p.done === p.encodings.length) {
            p.settled = true;
            if (p.timer) clearTimeout(p.timer);
            p.resolve(p.results);
          }
        });
        this.finishBatch(slot);
      },
      (err: unknown) => {
        report();
        const error = err instanceof Error ? err : new Error(String(err));
        for (const p of new Set(taken.map((t) => t.p))) this.fail(p, error);
        this.finishBatch(slot);
      },
    );
  }

  private finishBatch(slot: number): void {
    this.inFlight--;
    this.freeSlots.push(slot);
    this.checkIdle();
    this.pump();
  }
}
