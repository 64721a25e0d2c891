import { type SchedulerOptions, serverConfig } from "../config.js";

export type { SchedulerOptions };

/** Padded tokens a batch may waste whatever its efficiency (short queries batch together freely). */
const PADDING_SLACK_TOKENS = 128;

/** What the scheduler batches: anything with token ids (its length decides padding). */
export interface Tokenized {
  ids: ArrayLike<number>;
}

/** Runs one batch on the given slot (device) and returns one result per item, in order. */
export type BatchRunner<T extends Tokenized, R> = (
  items: T[],
  slot: number,
  signal: AbortSignal,
) => Promise<R[]>;

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
  rejected(reason: "queue_full" | "deadline" | "too_large" | "cancelled"): void;
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

/** A request too large to compute within its deadline even on an idle server (413; use a bulk job). */
export class TooLargeForDeadlineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TooLargeForDeadlineError";
  }
}

/** The request's deadline passed before all its inputs were computed. */
export class DeadlineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DeadlineError";
  }
}

/** The client went away: its queued inputs are dropped and nothing more is computed for it. */
export class CancelledError extends Error {
  constructor(message = "the client closed the connection") {
    super(message);
    this.name = "CancelledError";
  }
}

/** The scheduler is shutting down and takes no new work. */
export class ClosedError extends Error {
  constructor() {
    super("the server is shutting down");
    this.name = "ClosedError";
  }
}

export interface SubmitOptions {
  /** Epoch milliseconds after which the request is abandoned (DeadlineError). */
  deadline: number;
  /** Aborted when the client goes away: queued inputs leave the queue at once. */
  signal?: AbortSignal;
  /** The admission this work was reserved under (released as the inputs are queued). */
  admission?: Admission;
}

/** Room reserved for a request between admission and submission (tokenizing takes time). */
export interface Admission {
  readonly tokens: number;
  release(): void;
}

interface Pending<T, R> {
  items: T[];
  /** Indices into items, longest first, so consecutive batches of a big request pad little. */
  order: number[];
  next: number;
  done: number;
  /** Real tokens of the inputs not yet put in a batch. */
  remainingTokens: number;
  /** Padded tokens computed for it so far: bulk requests share the device by this (least first). */
  served: number;
  results: R[];
  enqueuedAt: number;
  settled: boolean;
  timer: NodeJS.Timeout | undefined;
  unlisten: (() => void) | undefined;
  resolve: (r: R[]) => void;
  reject: (e: Error) => void;
}

/**
 * Dynamic batching for one model: inputs of all concurrent requests are packed into batches
 * under a padded-token budget and a row cap, with a short collection window.
 *
 * Fairness. A request with little work left (at most a quarter of a batch's tokens: queries,
 * small requests) is "small"; small requests are served first, in arrival order, in batches of
 * their own, so their latency does not depend on how large the concurrent requests are. Large
 * requests share the rest by least service first (the one that has had the fewest tokens
 * computed gets the next batch, topped up from the others), and get at least one batch every
 * `starvationMs` even under a flood of small requests.
 *
 * Pipelining. The device is kept busy by sending the next batch before the current one returns,
 * but only a little of it: at most a quarter of a batch's tokens beyond one full batch per
 * device is in flight, so a small request arriving behind a full batch waits for about one
 * batch, not two.
 *
 * Admission. Before a request is tokenized, `admit` estimates whether it can finish before its
 * deadline at the rate the device has shown: if the work ahead makes that impossible the answer
 * is 429 at once; if the request alone is too large, TooLargeForDeadlineError (413).
 */
export class BatchScheduler<T extends Tokenized, R> {
  private readonly queue: Pending<T, R>[] = [];
  private readonly options: SchedulerOptions;
  private readonly runner: BatchRunner<T, R>;
  private readonly observer: SchedulerObserver | undefined;
  private readonly devices: number;
  private freeSlots: number[];
  private queuedInputs = 0;
  private queuedTokens = 0;
  private reservedTokens = 0;
  private reservedInputs = 0;
  private inFlight = 0;
  /** Padded tokens of the batches now on devices. */
  private inFlightTokens = 0;
  private windowTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private idleWaiters: (() => void)[] = [];
  /** When the last batch for a large request was formed, and whether the last batch was small. */
  private lastLargeBatchAt = 0;
  private lastBatchSmall = false;
  /** Batches on devices, with the requests they serve (to call off a batch nobody waits for). */
  private readonly running = new Set<{ owners: Set<Pending<T, R>>; stop: AbortController }>();
  /** Smoothed padded tokens per completion and device-busy seconds per completion (their ratio is the rate). */
  private rateTokens = 0;
  /** The best smoothed rate seen: the device undisturbed. */
  private peakRate = 0;
  private rateSeconds = 0;
  /** When the busy time last counted from: a completion, or the end of an idle spell. */
  private busyMark = 0;

  constructor(
    runner: BatchRunner<T, R>,
    options: Partial<SchedulerOptions> & {
      /** Batches in flight at once: the executor's slots (a few per device worker). */
      concurrency?: number;
      /** Device workers the batches are spread over. */
      devices?: number;
    } = {},
    observer?: SchedulerObserver,
  ) {
    const { devices, concurrency, ...rest } = options;
    // Unset options: the defaults of a CPU server (the server passes its resolved settings).
    this.options = { ...serverConfig().scheduler, ...rest };
    if (!(this.options.maxBatchTokens >= 1)) throw new RangeError("maxBatchTokens must be at least 1");
    this.devices = Math.max(1, devices ?? 1);
    this.runner = runner;
    this.observer = observer;
    this.freeSlots = Array.from({ length: Math.max(1, concurrency ?? 1) }, (_, i) => i);
  }

  /** Inputs waiting to be put in a batch. */
  get queued(): number {
    return this.queuedInputs;
  }

  /** Padded tokens per second this model has been computed at, if measured yet. */
  get tokensPerSecond(): number | undefined {
    return this.rateSeconds > 0 ? this.rateTokens / this.rateSeconds : undefined;
  }

  private get smallLimit(): number {
    return Math.max(1, Math.floor(this.options.maxBatchTokens / 4));
  }

  /**
   * Reserve room for a request of about `tokens` tokens in `inputs` inputs, or refuse it now:
   * OverloadedError (429) when the work ahead would not let it finish by its deadline or the
   * queue is full, TooLargeForDeadlineError (413) when it could not finish in time even alone.
   * Callers admit before tokenizing, so refused work costs nothing.
   */
  admit(inputs: number, tokens: number, deadline: number): Admission {
    if (this.closed) throw new ClosedError();
    const retryAfter = (seconds: number) => Math.max(1, Math.ceil(seconds));
    const waiting = this.queuedInputs + this.reservedInputs;
    if (waiting > 0 && waiting + inputs > this.options.maxQueuedInputs) {
      this.observer?.rejected("queue_full");
      throw new OverloadedError(
        `the queue for this model is full (${waiting} inputs waiting)`,
        retryAfter(this.tokensPerSecond ? this.queuedTokens / this.tokensPerSecond : 1),
      );
    }
    const rate = this.tokensPerSecond;
    const budget = (deadline - Date.now()) / 1000;
    if (rate !== undefined && budget > 0) {
      // Too large even alone is judged at the best rate seen (what the device does when nothing
      // else takes the cores); the work ahead at the current one. Padding adds about 10%.
      this.peakRate = Math.max(this.peakRate, rate);
      if ((tokens * 1.1) / this.peakRate > budget * 0.9) {
        const own = (tokens * 1.1) / this.peakRate;
        this.observer?.rejected("too_large");
        throw new TooLargeForDeadlineError(
          `this request has about ${Math.round(tokens)} tokens, which take about ${Math.ceil(own)} s at this server's ` +
            `rate (${Math.round(this.peakRate)} tokens/s), more than its ${Math.floor(budget)} s deadline; send it as a bulk job ` +
            "(POST /v1/jobs, or the Batch API: POST /v1/files + /v1/batches), or split it",
        );
      }
      // Small requests go ahead of large ones: only the small work queued and the batches already
      // running delay them. (Not a full batch's worth: on a slow model or with small batches that
      // alone would exceed the deadline and refuse every request, the server idle or not.)
      const ahead =
        tokens <= this.smallLimit
          ? this.queue.reduce(
              (n, p) => n + (p.remainingTokens <= this.smallLimit ? p.remainingTokens : 0),
              0,
            ) + this.inFlightTokens
          : this.queuedTokens + this.reservedTokens + this.inFlightTokens;
      // The measured rate moves with load: keep a wide margin, a 429 costs the client little.
      const wait = ((ahead + tokens) * 1.1) / rate;
      if (wait > budget * 0.6 && ahead > 0) {
        this.observer?.rejected("queue_full");
        throw new OverloadedError(
          `the server is busy: the work queued for this model would not let this request finish within its deadline`,
          retryAfter(wait - budget * 0.6),
        );
      }
    }
    this.reservedTokens += tokens;
    this.reservedInputs += inputs;
    let released = false;
    return {
      tokens,
      release: () => {
        if (released) return;
        released = true;
        this.reservedTokens -= tokens;
        this.reservedInputs -= inputs;
      },
    };
  }

  /** Compute every item; results come back in input order. */
  submit(items: T[], opts: SubmitOptions): Promise<R[]> {
    opts.admission?.release();
    if (this.closed) return Promise.reject(new ClosedError());
    if (opts.signal?.aborted) return Promise.reject(abortReason(opts.signal));
    if (items.length === 0) return Promise.resolve([]);
    const timeoutMs = opts.deadline - Date.now();
    if (timeoutMs <= 0) {
      this.observer?.rejected("deadline");
      return Promise.reject(new DeadlineError("request deadline passed before its inputs were queued"));
    }
    return new Promise<R[]>((resolve, reject) => {
      const order = items
        .map((_, i) => i)
        .sort((a, b) => (items[b] as T).ids.length - (items[a] as T).ids.length || a - b);
      const p: Pending<T, R> = {
        items,
        order,
        next: 0,
        done: 0,
        remainingTokens: items.reduce((n, e) => n + e.ids.length, 0),
        served: 0,
        results: new Array<R>(items.length),
        enqueuedAt: Date.now(),
        settled: false,
        timer: undefined,
        unlisten: undefined,
        resolve,
        reject,
      };
      p.timer = setTimeout(() => {
        if (!p.settled) this.observer?.rejected("deadline");
        this.fail(p, new DeadlineError(`request not completed within ${timeoutMs} ms`));
      }, timeoutMs);
      p.timer.unref();
      const signal = opts.signal;
      if (signal) {
        const onAbort = () => {
          const reason = abortReason(signal);
          if (!p.settled) this.observer?.rejected(reason instanceof DeadlineError ? "deadline" : "cancelled");
          this.fail(p, reason);
        };
        signal.addEventListener("abort", onAbort, { once: true });
        p.unlisten = () => signal.removeEventListener("abort", onAbort);
      }
      this.queue.push(p);
      this.queuedInputs += items.length;
      this.queuedTokens += p.remainingTokens;
      this.pump();
    });
  }

  /** Stop taking work; resolves when everything queued or running has finished. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.queuedInputs === 0 && this.inFlight === 0) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private settle(p: Pending<T, R>): void {
    p.settled = true;
    if (p.timer) clearTimeout(p.timer);
    p.unlisten?.();
  }

  private fail(p: Pending<T, R>, err: Error): void {
    if (p.settled) return;
    this.settle(p);
    // Inputs not yet scheduled leave the queue now; running ones finish and are dropped.
    this.queuedInputs -= p.items.length - p.next;
    this.queuedTokens -= p.remainingTokens;
    p.remainingTokens = 0;
    p.next = p.items.length;
    this.removeIfDrained(p);
    p.reject(err);
    for (const batch of this.running) {
      if (batch.owners.has(p) && [...batch.owners].every((o) => o.settled)) batch.stop.abort();
    }
    this.checkIdle();
  }

  private removeIfDrained(p: Pending<T, R>): void {
    if (p.next >= p.items.length) {
      const i = this.queue.indexOf(p);
      if (i >= 0) this.queue.splice(i, 1);
    }
  }

  private checkIdle(): void {
    if (this.queuedInputs === 0 && this.inFlight === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Padded tokens the devices may hold at once: a full batch each, plus a quarter batch in the pipe. */
  private get inFlightCap(): number {
    return this.options.maxBatchTokens * this.devices + this.smallLimit;
  }

  private pump(): void {
    while (this.freeSlots.length > 0 && this.queuedInputs > 0) {
      const room = this.inFlightCap - this.inFlightTokens;
      // A batch too small to be worth sending waits for a device to free up (unless none is busy).
      if (this.inFlight > 0 && room < Math.min(this.smallLimit, this.shortestQueued())) return;
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
      const budget =
        this.inFlight > 0 ? Math.min(this.options.maxBatchTokens, room) : this.options.maxBatchTokens;
      // The slot is taken only when a batch is formed: one that fits nothing stays free.
      const slot = this.freeSlots[0] as number;
      if (!this.runBatch(slot, budget)) return;
      this.freeSlots.shift();
    }
  }

  private shortestQueued(): number {
    let min = Number.POSITIVE_INFINITY;
    for (const p of this.queue) {
      const index = p.order[p.items.length - 1] as number;
      if (p.next < p.items.length) min = Math.min(min, (p.items[index] as T).ids.length);
    }
    return min;
  }

  /** Which requests fill the next batch, in order: small ones first, else the least served large one. */
  private pickOrder(): Pending<T, R>[] {
    const now = Date.now();
    const live = this.queue.filter((p) => p.next < p.items.length);
    const small = live.filter((p) => p.remainingTokens <= this.smallLimit);
    const large = live.filter((p) => p.remainingTokens > this.smallLimit);
    // Large requests are starved only when small ones have had the device to themselves for a while.
    const largeStarved =
      large.length > 0 && this.lastBatchSmall && now - this.lastLargeBatchAt >= this.options.starvationMs;
    if (small.length > 0 && !largeStarved) return small.sort((a, b) => a.enqueuedAt - b.enqueuedAt);
    return large.sort((a, b) => a.served - b.served || a.enqueuedAt - b.enqueuedAt);
  }

  /** Form a batch within `budget` padded tokens and send it; false if nothing fitted. */
  private runBatch(slot: number, budget: number): boolean {
    const { maxBatchSize } = this.options;
    const taken: { p: Pending<T, R>; index: number }[] = [];
    let longest = 0;
    let real = 0;
    const candidates = this.pickOrder();
    const large = candidates.length > 0 && (candidates[0] as Pending<T, R>).remainingTokens > this.smallLimit;
    // From each request in order, its longest remaining inputs for as long as they keep the
    // batch's padding efficiency above target (the first input always goes in). A request whose
    // next input would pad too much waits for a batch of its own length.
    for (const p of candidates) {
      while (p.next < p.items.length && taken.length < maxBatchSize) {
        const index = p.order[p.next] as number;
        const len = (p.items[index] as T).ids.length;
        const newLongest = Math.max(longest, len);
        const computed = (taken.length + 1) * newLongest;
        if (taken.length > 0) {
          if (computed > budget) break;
          // Padding among short inputs costs little in absolute terms; only a costly one is refused.
          const waste = computed - (real + len);
          if ((real + len) / computed < this.options.minPaddingEfficiency && waste > PADDING_SLACK_TOKENS)
            break;
        } else if (len > budget && this.inFlight > 0) {
          // Not even one input fits the room left: wait for a device.
          return false;
        }
        taken.push({ p, index });
        longest = newLongest;
        real += len;
        p.next++;
        p.remainingTokens -= len;
      }
      if (taken.length >= maxBatchSize) break;
    }
    if (taken.length === 0) return false;
    const padded = taken.length * longest;
    for (const { p } of taken) {
      p.served += padded / taken.length;
      this.removeIfDrained(p);
    }
    if (large) this.lastLargeBatchAt = Date.now();
    this.lastBatchSmall = !large;
    this.queuedInputs -= taken.length;
    this.queuedTokens -= real;
    if (this.inFlight === 0) this.busyMark = performance.now();
    this.inFlight++;
    this.inFlightTokens += padded;
    const items = taken.map(({ p, index }) => p.items[index] as T);
    const batch = { owners: new Set(taken.map((t) => t.p)), stop: new AbortController() };
    this.running.add(batch);
    const started = performance.now();
    const finished = () => {
      const now = performance.now();
      this.observer?.batch({
        rows: items.length,
        realTokens: real,
        paddedTokens: padded,
        requests: batch.owners.size,
        seconds: (now - started) / 1000,
      });
      // Device throughput: tokens over the time some batch was on a device, so pipelined or
      // parallel batches are not counted twice; tokens and seconds are smoothed separately.
      const busy = (now - this.busyMark) / 1000;
      this.busyMark = now;
      const first = this.rateSeconds === 0;
      this.rateTokens = first ? padded : 0.8 * this.rateTokens + 0.2 * padded;
      this.rateSeconds = first ? busy : 0.8 * this.rateSeconds + 0.2 * busy;
      this.inFlight--;
      this.inFlightTokens -= padded;
      this.running.delete(batch);
    };
    this.runner(items, slot, batch.stop.signal).then(
      (results) => {
        finished();
        taken.forEach(({ p, index }, i) => {
          if (p.settled) return;
          p.results[index] = results[i] as R;
          p.done++;
          if (p.done === p.items.length) {
            this.settle(p);
            p.resolve(p.results);
          }
        });
        this.finishBatch(slot);
      },
      (err: unknown) => {
        finished();
        const error = err instanceof Error ? err : new Error(String(err));
        for (const p of batch.owners) this.fail(p, error);
        this.finishBatch(slot);
      },
    );
    return true;
  }

  private finishBatch(slot: number): void {
    this.freeSlots.push(slot);
    this.checkIdle();
    this.pump();
  }
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new CancelledError();
}
