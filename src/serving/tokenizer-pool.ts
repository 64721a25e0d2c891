import { Worker } from "node:worker_threads";
import { type ErrorKind, FlagserveError } from "../runtime/errors.js";
import { type EncodeResult, type EncodeSpec, type EncodingView, unpackEncodings } from "./encode-ops.js";
import { InputTooLongError, RequestError } from "./errors.js";
import { CancelledError } from "./scheduler.js";
import type { ThreadError, ThreadTask } from "./tokenizer-thread.js";

/**
 * A request's texts are tokenized in pieces of at most this many characters, or this many texts:
 * small enough (tens of milliseconds) that a small request never waits long for a thread.
 */
const PIECE_CHARS = 16 * 1024;
const PIECE_TEXTS = 64;
/** A running piece whose request was abandoned is stopped (its thread restarted) after this long. */
const ABANDON_GRACE_MS = 50;

export interface PoolOptions {
  /** Tokenizer threads (at least one). */
  threads: number;
  /** Heap limit of each thread in MiB: a pathological input ends that thread, not the process. */
  heapMb: number;
  /** Told when a thread dies or is restarted, for the log. */
  onEvent?: (event: string, detail: Record<string, unknown>) => void;
  /** Told of every piece done and every thread restarted, for metrics. */
  observer?: { piece(): void; restart(): void };
}

/** Tokenized inputs: views into the threads' buffers, in input order. */
export interface Encoded {
  encodings: EncodingView[];
  /** Pairs: the document of each encoding. */
  owners: number[];
  /** LLM reranker rows: query part and prompt part lengths, two per encoding. */
  extras?: number[];
  chars: number;
}

interface Piece {
  id: number;
  dir: string;
  spec: EncodeSpec;
  texts: string[];
  request: RequestState;
  resolve: (r: EncodeResult) => void;
  reject: (e: Error) => void;
}

interface RequestState {
  pieces: Piece[];
  signal: AbortSignal | undefined;
  failed: boolean;
}

interface Thread {
  worker: Worker;
  running: (Piece & { startedAt: number }) | undefined;
  lastError: (Error & { code?: string }) | undefined;
  dead: boolean;
}

const FROM_SOURCE = import.meta.url.endsWith(".ts");
const THREAD_URL = new URL(`./tokenizer-thread${FROM_SOURCE ? ".ts" : ".js"}`, import.meta.url);

/**
 * Run from the TypeScript sources (tests, `node --import tsx`), a thread must register tsx's
 * loader itself: worker threads do not take `--import` from the parent. Built code loads as is.
 */
function threadEntry(): { file: URL | string; eval: boolean } {
  if (!FROM_SOURCE) return { file: THREAD_URL, eval: false };
  const code = `import("tsx/esm/api").then((tsx) => { tsx.register(); return import(${JSON.stringify(THREAD_URL.href)}); })`;
  return { file: code, eval: true };
}

/**
 * Tokenizing off the event loop: a pool of worker threads that each hold the served models'
 * tokenizers. Large requests are split into pieces so that several threads share them, and
 * pieces are taken from waiting requests in turn, so a small request is not queued behind a
 * large one. An abandoned request's pieces leave the queue at once; a piece already running for
 * it is stopped by restarting its thread. A thread that dies (out of its heap limit) is replaced.
 */
export class TokenizerPool {
  private readonly options: PoolOptions;
  private readonly threads: Thread[] = [];
  /** Requests with pieces waiting, served round-robin. */
  private readonly waiting: RequestState[] = [];
  private nextId = 1;
  private closed = false;

  constructor(options: PoolOptions) {
    this.options = options;
    for (let i = 0; i < Math.max(1, options.threads); i++) this.threads.push(this.spawn());
  }

  get size(): number {
    return this.threads.length;
  }

  /** Pieces waiting for a thread. */
  get queued(): number {
    return this.waiting.reduce((n, r) => n + r.pieces.length, 0);
  }

  private spawn(): Thread {
    const entry = threadEntry();
    const worker = new Worker(entry.file, {
      eval: entry.eval,
      resourceLimits: { maxOldGenerationSizeMb: this.options.heapMb },
    });
    const thread: Thread = { worker, running: undefined, lastError: undefined, dead: false };
    worker.on("message", (m: { id: number; result?: EncodeResult; error?: ThreadError }) => {
      const piece = thread.running;
      if (!piece || piece.id !== m.id) return;
      thread.running = undefined;
      this.options.observer?.piece();
      if (m.error) piece.reject(rebuild(m.error));
      else piece.resolve(m.result as EncodeResult);
      this.dispatch();
    });
    worker.on("error", (err) => {
      thread.lastError = err;
      this.options.onEvent?.("tokenizer thread failed", { error: err.message });
    });
    worker.on("exit", () => {
      thread.dead = true;
      const i = this.threads.indexOf(thread);
      const piece = thread.running;
      thread.running = undefined;
      if (piece) {
        const err = thread.lastError;
        piece.reject(
          piece.request.signal?.aborted
            ? abortReason(piece.request.signal)
            : err?.code === "ERR_WORKER_OUT_OF_MEMORY"
              ? new FlagserveError(
                  "invalid_input",
                  `tokenizing this request exhausted a tokenizer thread's memory (${this.options.heapMb} MiB); send shorter inputs`,
                )
              : new Error(`a tokenizer thread failed: ${err?.message ?? "it exited"}`),
        );
      }
      if (i >= 0 && !this.closed) {
        // A thread that cannot even start (a broken install) is retried slowly, not in a tight loop.
        const delay = piece || !thread.lastError ? 0 : 1000;
        setTimeout(() => {
          if (this.closed) return;
          this.threads[i] = this.spawn();
          this.options.observer?.restart();
          this.options.onEvent?.("tokenizer thread restarted", { thread: i });
          this.dispatch();
        }, delay);
      }
    });
    return thread;
  }

  /**
   * Tokenize `texts` of the model in `dir` as `spec` says. TEI tokenize work is one piece; other
   * work is split. Rejects with the signal's reason when it aborts (deadline or client gone).
   */
  async encode(dir: string, spec: EncodeSpec, texts: string[], signal?: AbortSignal): Promise<Encoded> {
    const results = await this.run(dir, spec, texts, signal);
    const encodings: EncodingView[] = [];
    const owners: number[] = [];
    const extras: number[] = [];
    let chars = 0;
    for (const r of results) {
      if (r.kind !== "encodings") throw new Error("expected encodings");
      encodings.push(...unpackEncodings(r.packed));
      if (r.packed.owners) owners.push(...r.packed.owners);
      if (r.packed.extras) extras.push(...r.packed.extras);
      chars += r.packed.chars;
    }
    return { encodings, owners, chars, ...(extras.length > 0 ? { extras } : {}) };
  }

  /** TEI /tokenize: the JSON body, rendered in a thread. */
  async teiTokenize(
    dir: string,
    spec: EncodeSpec,
    texts: string[],
    signal?: AbortSignal,
  ): Promise<Uint8Array> {
    const [r] = await this.run(dir, spec, texts, signal);
    if (r?.kind !== "json") throw new Error("expected JSON");
    return r.bytes;
  }

  private async run(
    dir: string,
    spec: EncodeSpec,
    texts: string[],
    signal?: AbortSignal,
  ): Promise<EncodeResult[]> {
    if (this.closed) throw new Error("the tokenizer pool is closed");
    if (signal?.aborted) throw abortReason(signal);
    const groups = spec.kind === "tei-tokenize" ? [texts] : split(texts);
    const request: RequestState = { pieces: [], signal, failed: false };
    let offset = "offset" in spec ? spec.offset : 0;
    const promises = groups.map((group) => {
      const pieceSpec = "offset" in spec ? { ...spec, offset } : spec;
      offset += group.length;
      return new Promise<EncodeResult>((resolve, reject) => {
        request.pieces.push({
          id: this.nextId++,
          dir,
          spec: pieceSpec,
          texts: group,
          request,
          resolve,
          reject,
        });
      });
    });
    const onAbort = () => this.abandon(request);
    signal?.addEventListener("abort", onAbort, { once: true });
    this.waiting.push(request);
    this.dispatch();
    try {
      return await Promise.all(promises);
    } catch (err) {
      // The first failure ends the request: its other pieces are not worth computing.
      this.abandon(request);
      throw err;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Drop a request's waiting pieces; stop a piece of it that is running. */
  private abandon(request: RequestState): void {
    if (request.failed) return;
    request.failed = true;
    const reason = request.signal?.aborted
      ? abortReason(request.signal)
      : new CancelledError("request abandoned");
    for (const p of request.pieces.splice(0)) p.reject(reason);
    const i = this.waiting.indexOf(request);
    if (i >= 0) this.waiting.splice(i, 1);
    for (const t of this.threads) {
      const running = t.running;
      if (running?.request !== request) continue;
      const elapsed = Date.now() - running.startedAt;
      const stop = () => {
        if (t.running === running) void t.worker.terminate();
      };
      if (elapsed >= ABANDON_GRACE_MS) stop();
      else setTimeout(stop, ABANDON_GRACE_MS - elapsed).unref();
    }
  }

  private dispatch(): void {
    for (const t of this.threads) {
      if (t.dead || t.running || this.waiting.length === 0) continue;
      // The request with the least work left goes first (a query is never behind a bulk request);
      // among equals, round-robin: the one served moves to the back.
      let best = 0;
      for (let i = 1; i < this.waiting.length; i++) {
        if (
          (this.waiting[i] as RequestState).pieces.length < (this.waiting[best] as RequestState).pieces.length
        )
          best = i;
      }
      const request = this.waiting.splice(best, 1)[0] as RequestState;
      const piece = request.pieces.shift() as Piece;
      if (request.pieces.length > 0) this.waiting.push(request);
      t.running = { ...piece, startedAt: Date.now() };
      const task: ThreadTask = { id: piece.id, dir: piece.dir, spec: piece.spec, texts: piece.texts };
      t.worker.postMessage(task);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const r of this.waiting.splice(0))
      for (const p of r.pieces.splice(0)) p.reject(new CancelledError("shutting down"));
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}

/** Split texts into pieces of bounded size, keeping order. */
function split(texts: string[]): string[][] {
  const groups: string[][] = [];
  let current: string[] = [];
  let chars = 0;
  for (const t of texts) {
    if (current.length > 0 && (chars + t.length > PIECE_CHARS || current.length >= PIECE_TEXTS)) {
      groups.push(current);
      current = [];
      chars = 0;
    }
    current.push(t);
    chars += t.length;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);
  return groups;
}

function rebuild(e: ThreadError): Error {
  switch (e.kind) {
    case "too_long":
      return new InputTooLongError(e.index, e.tokens, e.limit);
    case "request":
      return new RequestError("invalid", e.message, { param: e.param, code: e.code });
    case "flagserve":
      return new FlagserveError(e.errorKind as ErrorKind, e.message);
    case "other":
      return new Error(e.message);
  }
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new CancelledError();
}
