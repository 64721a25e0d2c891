// A device worker: one child process that owns one device and runs every served model on it.
// It is the LocalExecutor behind an IPC channel; the HTTP process never holds model weights.
import { isFlagserveError } from "../runtime/errors.js";
import { LocalExecutor } from "./local-executor.js";
import {
  type FromWorker,
  type MemoryReturn,
  packRaws,
  type ToWorker,
  unpackBatch,
  unpackScoreBatch,
} from "./protocol.js";

const executor = new LocalExecutor();

// ONNX Runtime's CPU arena keeps runs free of page faults, but never shrinks: after a spike of
// long inputs it holds the spike's memory for good. So once the worker has been quiet for a while
// and has grown well past its size after loading, it recreates its sessions (the old arenas are
// freed). The wait is at least 20 times what recreating took, so it stays rare and cheap.
const memory = {
  policy: { growthMib: 0, idleMs: 0 } as MemoryReturn,
  floorMib: 0,
  renewMs: 0,
  timer: undefined as NodeJS.Timeout | undefined,
};
const rssMib = () => process.memoryUsage.rss() / 2 ** 20;

function watchMemory(): void {
  if (memory.policy.growthMib <= 0) return;
  clearTimeout(memory.timer);
  memory.timer = setTimeout(
    () => {
      if (rssMib() - memory.floorMib <= memory.policy.growthMib) return;
      queue = queue.then(async () => {
        const started = performance.now();
        const before = rssMib();
        // A failure must not reject the queue (every later batch would be skipped); a session
        // that could not be recreated keeps its old one, and the worker stops trying.
        let error: string | undefined;
        try {
          await executor.renewSessions();
        } catch (err) {
          error = err instanceof Error ? err.message : String(err);
          memory.policy = { ...memory.policy, growthMib: 0 };
        }
        memory.renewMs = performance.now() - started;
        memory.floorMib = rssMib();
        send({
          type: "memory_returned",
          beforeMib: Math.round(before),
          afterMib: Math.round(memory.floorMib),
          ms: Math.round(memory.renewMs),
          ...(error !== undefined ? { error } : {}),
        });
      });
    },
    Math.max(memory.policy.idleMs, 20 * memory.renewMs),
  );
  memory.timer.unref();
}

function send(msg: FromWorker): void {
  process.send?.(msg);
}

/** A failure as a message: the error's kind travels with it, so the HTTP side answers the right status. */
function failed(id: number, err: unknown): FromWorker {
  const message = err instanceof Error ? err.message : String(err);
  return isFlagserveError(err)
    ? { type: "failed", id, message, kind: err.kind }
    : { type: "failed", id, message };
}

async function handle(msg: ToWorker): Promise<void> {
  switch (msg.type) {
    case "load":
      try {
        const infos = await executor.load(msg.specs);
        if (msg.memory) memory.policy = msg.memory;
        memory.floorMib = rssMib();
        send({ type: "loaded", infos });
      } catch (err) {
        send({ type: "load_error", message: (err as Error).message });
      }
      return;
    case "embed":
      try {
        const raws = await executor.embed(msg.model, unpackBatch(msg.batch), 0);
        send({ type: "embedded", id: msg.id, raws: packRaws(raws) });
        watchMemory();
      } catch (err) {
        send(failed(msg.id, err));
      }
      return;
    case "score":
      try {
        const scores = await executor.score(
          msg.model,
          unpackScoreBatch(msg.batch),
          0,
          undefined,
          msg.options,
        );
        send({ type: "scored", id: msg.id, scores: scores.slice() });
        watchMemory();
      } catch (err) {
        send(failed(msg.id, err));
      }
      return;
    case "shutdown":
      await executor.close();
      process.exit(0);
      break;
    case "cancel":
      return;
  }
}

// One batch at a time: the device is busy anyway, and a batch that arrives meanwhile (the pool
// keeps two in flight) is already here when the current one finishes. A batch whose requests
// were all abandoned while it waited here is cancelled before it starts.
const cancelled = new Set<number>();
let queue: Promise<void> = Promise.resolve();
process.on("message", (msg: ToWorker) => {
  if (msg.type === "cancel") {
    cancelled.add(msg.id);
    return;
  }
  queue = queue.then(() => {
    if ((msg.type === "embed" || msg.type === "score") && cancelled.delete(msg.id)) return;
    return handle(msg);
  });
});
// The HTTP process is gone: nothing will ever ask for work again.
process.on("disconnect", () => process.exit(0));
