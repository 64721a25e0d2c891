// A device worker: one child process that owns one device and runs every served model on it.
// It is the LocalExecutor behind an IPC channel; the HTTP process never holds model weights.
import { isFlagserveError } from "../runtime/errors.js";
import { LocalExecutor } from "./local-executor.js";
import { type FromWorker, packRaws, type ToWorker, unpackBatch, unpackScoreBatch } from "./protocol.js";

const executor = new LocalExecutor();

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
        send({ type: "loaded", infos: await executor.load(msg.specs) });
      } catch (err) {
        send({ type: "load_error", message: (err as Error).message });
      }
      return;
    case "embed":
      try {
        const raws = await executor.embed(msg.model, unpackBatch(msg.batch), 0);
        send({ type: "embedded", id: msg.id, raws: packRaws(raws) });
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
