// A tokenizer thread: loads the tokenizers of the models it is asked about (once each) and runs
// tokenizing work for the pool in tokenizer-pool.ts, so the event loop never tokenizes.
import { parentPort } from "node:worker_threads";
import { isFlagserveError } from "../runtime/errors.js";
import { TextTokenizer } from "../runtime/tokenizer.js";
import { type EncodeSpec, runEncode } from "./encode-ops.js";
import { InputTooLongError, RequestError } from "./errors.js";

export interface ThreadTask {
  id: number;
  /** Model directory holding tokenizer.json. */
  dir: string;
  spec: EncodeSpec;
  texts: string[];
}

/** A failure, with what the pool needs to rebuild the error on the other side. */
export type ThreadError =
  | { kind: "too_long"; index: number; tokens: number; limit: number }
  | { kind: "request"; message: string; param: string | null; code: string | null }
  | { kind: "flagserve"; errorKind: string; message: string }
  | { kind: "other"; message: string };

const tokenizers = new Map<string, Promise<TextTokenizer>>();

function tokenizerFor(dir: string): Promise<TextTokenizer> {
  let t = tokenizers.get(dir);
  if (!t) {
    t = TextTokenizer.fromDir(dir);
    tokenizers.set(dir, t);
  }
  return t;
}

function describe(err: unknown): ThreadError {
  if (err instanceof InputTooLongError)
    return { kind: "too_long", index: err.index, tokens: err.tokens, limit: err.limit };
  if (err instanceof RequestError)
    return { kind: "request", message: err.message, param: err.param, code: err.code };
  if (isFlagserveError(err)) return { kind: "flagserve", errorKind: err.kind, message: err.message };
  return { kind: "other", message: err instanceof Error ? err.message : String(err) };
}

parentPort?.on("message", async (task: ThreadTask) => {
  try {
    const tok = await tokenizerFor(task.dir);
    const result = runEncode(tok, task.spec, task.texts);
    const transfer =
      result.kind === "json"
        ? [result.bytes.buffer]
        : [
            result.packed.ids.buffer,
            result.packed.typeIds.buffer,
            result.packed.lengths.buffer,
            ...(result.packed.owners ? [result.packed.owners.buffer] : []),
            ...(result.packed.extras ? [result.packed.extras.buffer] : []),
          ];
    parentPort?.postMessage({ id: task.id, result }, transfer as ArrayBuffer[]);
  } catch (err) {
    parentPort?.postMessage({ id: task.id, error: describe(err) });
  }
});
