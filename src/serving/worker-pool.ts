import { type ChildProcess, fork } from "node:child_process";
import { cpus } from "node:os";
import { fileURLToPath } from "node:url";
import { DEFAULT_CONFIG } from "../config.js";
import type { M3Raw } from "../models/scoring.js";
import { parseDevice } from "../runtime/device.js";
import { FlagserveError } from "../runtime/errors.js";
import type { EmbedItem, Executor, ModelInfo, ModelSpec, ScoreBatchOptions, ScoreItem } from "./executor.js";
import { type FromWorker, packBatch, type ToWorker, unpackRaws } from "./protocol.js";
import { CancelledError, DeadlineError } from "./scheduler.js";

/** No device worker could run a batch (all down, or it crashed twice): answer 503, retry later. */
export class WorkerUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WorkerUnavailableError";
  }
}

export interface WorkerSlot {
  /** ONNX Runtime device: "cpu" or "cuda:N". */
  device: string;
  /** Intra-op threads for this worker (CPU workers split the cores). */
  threads?: number;
}

/**
 * `--devices`: "cpu" (one worker, all cores), "cpu:N" (N workers splitting the cores), or a list
 * of CUDA devices "cuda:0,cuda:1" (one worker each); lists may mix them.
 */
export function parseWorkerDevices(spec: string, cores = cpus().length): WorkerSlot[] {
  const out: WorkerSlot[] = [];
  for (const part of spec
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const many = /^cpu:(\d+)$/i.exec(part);
    if (many) {
      const n = Number(many[1]);
      if (n < 1) throw new FlagserveError("device", `"${part}": at least one CPU worker`);
      const threads = Math.max(1, Math.floor(cores / n));
      for (let i = 0; i < n; i++) out.push({ device: "cpu", threads });
      continue;
    }
    const d = parseDevice(part);
    out.push({ device: d.kind === "cpu" ? "cpu" : `cuda:${d.id}` });
  }
  if (out.length === 0) throw new FlagserveError("device", "no device given");
  return out;
}

export interface PoolOptions {
  /** Batches sent to one worker before it answers (keeps a device busy while results travel). */
  inflightPerWorker?: number;
  /** A batch taking longer than this kills its worker (it is stuck), which is then restarted. */
  batchTimeoutMs?: number;
  /** How long a batch waits for a worker to come back when none is alive. */
  waitForWorkerMs?: number;
  /** When a worker frees the memory its sessions grew to (see PoolConfig). */
  memoryReturnMib?: number;
  memoryReturnIdleMs?: number;
  /** Called on worker crashes and restarts, for the log. */
  onEvent?: (event: string, detail: Record<string, unknown>, level?: "info" | "warn") => void;
}

interface Pending {
  msg: ToWorker & { id: number };
  retried: boolean;
  timer: NodeJS.Timeout | undefined;
  resolve: (m: FromWorker) => void;
  reject: (e: Error) => void;
}

export interface WorkerStatus {
  device: string;
  pid: number | undefined;
  live: boolean;
  restarts: number;
  inflight: number;
}

/**
 * Send to a child without throwing: a child that has exited (or is exiting) cannot be written to,
 * and its 'exit' handler takes care of the work it held.
 */
function sendTo(proc: ChildProcess, msg: ToWorker): void {
  if (!proc.connected) return;
  // With a callback, a failed write is reported here instead of as an 'error' event; the child's
  // exit handler retries whatever it held.
  proc.send(msg, () => {});
}

const WORKER_URL = new URL(
  `./device-worker${import.meta.url.endsWith(".ts") ? ".ts" : ".js"}`,
  import.meta.url,
);

class DeviceWorker {
  proc: ChildProcess | undefined;
  live = false;
  /** Loaded its models at least once: a later death is a crash worth restarting after. */
  everLive = false;
  restarts = 0;
  readonly inflight = new Map<number, Pending>();
  private readyWaiters: ((ok: boolean) => void)[] = [];

  constructor(readonly slot: WorkerSlot) {}

  status(): WorkerStatus {
    return {
      device: this.slot.device,
      pid: this.proc?.pid,
      live: this.live,
      restarts: this.restarts,
      inflight: this.inflight.size,
    };
  }

  whenLive(): Promise<boolean> {
    if (this.live) return Promise.resolve(true);
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  setLive(live: boolean): void {
    this.live = live;
    if (live) {
      this.everLive = true;
      for (const w of this.readyWaiters.splice(0)) w(true);
    }
  }

  failWaiters(): void {
    for (const w of this.readyWaiters.splice(0)) w(false);
  }
}

/**
 * One child process per device, each loading every served model; batches go to the least busy
 * live worker. A worker that dies (kill -9, out of memory) is restarted with backoff; the batches
 * it was running are retried once on a live worker, else answered with WorkerUnavailableError.
 */
export class WorkerPoolExecutor implements Executor {
  private readonly workers: DeviceWorker[];
  private readonly options: Required<Omit<PoolOptions, "onEvent">> & Pick<PoolOptions, "onEvent">;
  private specs: ModelSpec[] = [];
  private nextId = 1;
  private closing = false;

  constructor(slots: WorkerSlot[], options: PoolOptions = {}) {
    this.workers = slots.map((s) => new DeviceWorker(s));
    this.options = {
      inflightPerWorker: options.inflightPerWorker ?? DEFAULT_CONFIG.pool.inflightPerWorker,
      batchTimeoutMs: options.batchTimeoutMs ?? DEFAULT_CONFIG.limits.requestTimeoutMs,
      waitForWorkerMs: options.waitForWorkerMs ?? DEFAULT_CONFIG.limits.requestTimeoutMs,
      memoryReturnMib: options.memoryReturnMib ?? DEFAULT_CONFIG.pool.memoryReturnMib,
      memoryReturnIdleMs: options.memoryReturnIdleMs ?? DEFAULT_CONFIG.pool.memoryReturnIdleMs,
      onEvent: options.onEvent,
    };
  }

  get slots(): number {
    return this.workers.length * this.options.inflightPerWorker;
  }

  /** Device worker processes (one per device). */
  get deviceCount(): number {
    return this.workers.length;
  }

  status(): WorkerStatus[] {
    return this.workers.map((w) => w.status());
  }

  get liveWorkers(): number {
    return this.workers.filter((w) => w.live).length;
  }

  async load(specs: ModelSpec[]): Promise<ModelInfo[]> {
    this.specs = specs;
    const results = await Promise.all(this.workers.map((w) => this.start(w)));
    return results[0] as ModelInfo[];
  }

  /** Start (or restart) a worker and load every model in it. */
  private async start(w: DeviceWorker): Promise<ModelInfo[]> {
    const proc = fork(fileURLToPath(WORKER_URL), [], {
      serialization: "advanced",
      execArgv: process.execArgv,
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    w.proc = proc;
    proc.on("message", (m: FromWorker) => this.onMessage(w, m));
    proc.on("exit", (code, signal) => this.onExit(w, proc, code, signal));
    // A failed send or spawn (EPIPE to a child that just died) surfaces here; the child's exit,
    // which always follows, is what retries its batches. Unhandled, it would end this process.
    proc.on("error", (err) =>
      this.options.onEvent?.("worker channel error", { device: w.slot.device, error: err.message }),
    );
    const specs = this.specs.map((s) => ({
      ...s,
      options: {
        ...s.options,
        devices: w.slot.device,
        // Idle ONNX Runtime threads must not spin on cores the HTTP process needs.
        spinning: s.options.spinning ?? false,
        // The arena keeps runs free of page faults (int8 graphs run ~30% faster with it); the
        // worker recreates its sessions after a spike to give the memory back (device-worker.ts).
        cpuMemArena: s.options.cpuMemArena ?? true,
        // Batch shapes vary: per-shape planned blocks would double what the arena holds.
        memPattern: s.options.memPattern ?? false,
        ...(w.slot.threads !== undefined && s.options.intraOpThreads === undefined
          ? { intraOpThreads: w.slot.threads }
          : {}),
      },
    }));
    const loaded = new Promise<ModelInfo[]>((resolve, reject) => {
      const onMsg = (m: FromWorker) => {
        if (m.type === "loaded") {
          proc.off("message", onMsg);
          proc.off("exit", onEarlyExit);
          resolve(m.infos);
        } else if (m.type === "load_error") {
          proc.off("message", onMsg);
          proc.off("exit", onEarlyExit);
          reject(new FlagserveError("model_files", m.message));
        }
      };
      const onEarlyExit = (code: number | null, signal: string | null) =>
        reject(
          new WorkerUnavailableError(`the ${w.slot.device} worker exited while loading (${signal ?? code})`),
        );
      proc.on("message", onMsg);
      proc.once("exit", onEarlyExit);
    });
    sendTo(proc, {
      type: "load",
      specs,
      memory: { growthMib: this.options.memoryReturnMib, idleMs: this.options.memoryReturnIdleMs },
    });
    try {
      const infos = await loaded;
      w.setLive(true);
      return infos;
    } catch (err) {
      // A worker that cannot load its models is of no use; its exit drives any restart.
      proc.kill("SIGKILL");
      throw err;
    }
  }

  private onMessage(w: DeviceWorker, m: FromWorker): void {
    if (m.type === "loaded" || m.type === "load_error") return;
    if (m.type === "memory_returned") {
      const { beforeMib, afterMib, ms, error } = m;
      const detail = { device: w.slot.device, beforeMib, afterMib, ms };
      if (error === undefined)
        this.options.onEvent?.("device worker freed its sessions' memory", detail, "info");
      else
        this.options.onEvent?.(
          "device worker could not recreate its sessions; it keeps them and stops trying",
          { ...detail, error },
          "warn",
        );
      return;
    }
    const p = w.inflight.get(m.id);
    if (!p) return;
    w.inflight.delete(m.id);
    if (p.timer) clearTimeout(p.timer);
    if (m.type === "failed") p.reject(m.kind ? new FlagserveError(m.kind, m.message) : new Error(m.message));
    else p.resolve(m);
  }

  private onExit(w: DeviceWorker, proc: ChildProcess, code: number | null, signal: string | null): void {
    if (w.proc !== proc) return;
    w.setLive(false);
    w.proc = undefined;
    const orphans = [...w.inflight.values()];
    w.inflight.clear();
    if (this.closing) {
      for (const p of orphans) p.reject(new WorkerUnavailableError("the server is shutting down"));
      return;
    }
    this.options.onEvent?.("worker exited", {
      device: w.slot.device,
      code,
      signal,
      inflight: orphans.length,
    });
    if (!w.everLive) {
      // It never loaded: the load error has been reported to whoever started it.
      for (const p of orphans)
        p.reject(new WorkerUnavailableError(`the ${w.slot.device} worker is not running`));
      w.failWaiters();
      return;
    }
    for (const p of orphans) {
      if (p.timer) clearTimeout(p.timer);
      if (p.retried) {
        p.reject(new WorkerUnavailableError(`the ${w.slot.device} worker crashed twice on this batch`));
      } else {
        p.retried = true;
        this.dispatch(p).catch(p.reject);
      }
    }
    // Restart with backoff: 0.5 s, 1 s, 2 s ... up to 10 s.
    const delay = Math.min(10_000, 500 * 2 ** Math.min(w.restarts, 5));
    w.restarts++;
    setTimeout(() => {
      if (this.closing) return;
      // A failed restart kills its process, whose exit schedules the next attempt.
      this.start(w).then(
        () => this.options.onEvent?.("worker restarted", { device: w.slot.device, restarts: w.restarts }),
        (err) =>
          this.options.onEvent?.("worker restart failed", {
            device: w.slot.device,
            error: (err as Error).message,
          }),
      );
    }, delay).unref();
  }

  /** Send a batch to the least busy live worker, waiting briefly for one if all are restarting. */
  private async dispatch(p: Pending): Promise<void> {
    let target = this.leastBusy();
    if (!target) {
      const waiting = this.workers.map((w) => w.whenLive());
      const timeout = new Promise<boolean>((r) =>
        setTimeout(() => r(false), this.options.waitForWorkerMs).unref(),
      );
      await Promise.race([Promise.race(waiting), timeout]);
      target = this.leastBusy();
      if (!target) throw new WorkerUnavailableError("no device worker is alive; retry shortly");
    }
    const w = target;
    w.inflight.set(p.msg.id, p);
    p.timer = setTimeout(() => {
      // The batch itself is the problem: answer it now instead of retrying it on another worker
      // (which it would stall too). Its worker is stuck in it, so it is restarted.
      w.inflight.delete(p.msg.id);
      const seconds = Math.round(this.options.batchTimeoutMs / 100) / 10;
      p.reject(
        new DeadlineError(
          `a batch ran longer than ${seconds} s on ${w.slot.device}; its worker was restarted`,
        ),
      );
      this.options.onEvent?.("batch timed out: restarting its worker", { device: w.slot.device });
      w.proc?.kill("SIGKILL");
    }, this.options.batchTimeoutMs);
    p.timer.unref();
    if (w.proc) sendTo(w.proc, p.msg);
  }

  private leastBusy(): DeviceWorker | undefined {
    let best: DeviceWorker | undefined;
    for (const w of this.workers) {
      if (!w.live || !w.proc) continue;
      if (!best || w.inflight.size < best.inflight.size) best = w;
    }
    return best;
  }

  private request(msg: ToWorker & { id: number }, signal?: AbortSignal): Promise<FromWorker> {
    if (this.closing) return Promise.reject(new WorkerUnavailableError("the server is shutting down"));
    return new Promise((resolve, reject) => {
      const p: Pending = { msg, retried: false, timer: undefined, resolve, reject };
      // Nobody waits for this batch any more: if it has not started, its worker skips it.
      signal?.addEventListener(
        "abort",
        () => {
          for (const w of this.workers) {
            if (w.inflight.get(msg.id) !== p) continue;
            w.inflight.delete(msg.id);
            if (p.timer) clearTimeout(p.timer);
            if (w.proc) sendTo(w.proc, { type: "cancel", id: msg.id });
          }
          reject(new CancelledError("every request of this batch was abandoned"));
        },
        { once: true },
      );
      this.dispatch(p).catch(reject);
    });
  }

  async embed(model: string, items: EmbedItem[], _slot: number, signal?: AbortSignal): Promise<M3Raw[]> {
    const reply = await this.request(
      { type: "embed", id: this.nextId++, model, batch: packBatch(items) },
      signal,
    );
    if (reply.type !== "embedded") throw new Error(`unexpected reply ${reply.type}`);
    return unpackRaws(reply.raws, items.length);
  }

  async score(
    model: string,
    items: ScoreItem[],
    _slot: number,
    signal?: AbortSignal,
    options?: ScoreBatchOptions,
  ): Promise<Float32Array> {
    const reply = await this.request(
      { type: "score", id: this.nextId++, model, batch: packBatch(items), ...(options ? { options } : {}) },
      signal,
    );
    if (reply.type !== "scored") throw new Error(`unexpected reply ${reply.type}`);
    return reply.scores;
  }

  /** Ask every worker to exit; kill those that do not within a few seconds. */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(
      this.workers.map(async (w) => {
        const proc = w.proc;
        if (!proc || proc.exitCode !== null) return;
        const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
        sendTo(proc, { type: "shutdown" });
        const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}
