import { setImmediate as nextTurn } from "node:timers/promises";
import { DeadlineError } from "./scheduler.js";

/** Longest stretch of synchronous work before the event loop gets a turn. */
const SLICE_MS = 4;

/**
 * Map items with a synchronous function, yielding to the event loop every few milliseconds, so
 * that tokenizing a large request never stalls the other connections (health checks included).
 */
export async function mapYielding<T, R>(
  items: readonly T[],
  fn: (item: T, index: number) => R,
  deadline = Number.POSITIVE_INFINITY,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let sliceStart = performance.now();
  for (let i = 0; i < items.length; i++) {
    out[i] = fn(items[i] as T, i);
    if (performance.now() - sliceStart > SLICE_MS) {
      await nextTurn();
      if (Date.now() > deadline) throw new DeadlineError("request deadline passed while tokenizing");
      sliceStart = performance.now();
    }
  }
  return out;
}
