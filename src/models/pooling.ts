import { Float32Matrix } from "../runtime/matrix.js";
import type { Pooling } from "../runtime/model-dir.js";
import type { PaddedBatch } from "../runtime/session.js";

export type { Pooling };

/** Index of the first and last real token of row r, whichever side the batch was padded on. */
export function realSpan(batch: PaddedBatch, r: number): { first: number; last: number } {
  const len = batch.lengths[r] as number;
  const first = batch.side === "left" ? batch.seqLen - len : 0;
  return { first, last: first + len - 1 };
}

/**
 * Pool a [batch, seq, hidden] hidden-state tensor into one vector per row, as FlagEmbedding does:
 * cls = the first token, mean = average over the attention mask, last_token = the last real token.
 */
export function poolHidden(hidden: Float32Array, batch: PaddedBatch, method: Pooling): Float32Matrix {
  const { size, seqLen } = batch;
  const dims = hidden.length / (size * seqLen);
  const out = Float32Matrix.zeros(size, dims);
  for (let r = 0; r < size; r++) {
    const row = out.row(r);
    const { first, last } = realSpan(batch, r);
    const base = r * seqLen * dims;
    if (method === "cls" || method === "last_token") {
      const t = method === "cls" ? first : last;
      row.set(hidden.subarray(base + t * dims, base + (t + 1) * dims));
      continue;
    }
    // mean: sum in float64, divide by the count of real tokens
    const acc = new Float64Array(dims);
    for (let t = first; t <= last; t++) {
      const off = base + t * dims;
      for (let d = 0; d < dims; d++) acc[d] = (acc[d] as number) + (hidden[off + d] as number);
    }
    const n = last - first + 1;
    for (let d = 0; d < dims; d++) row[d] = (acc[d] as number) / n;
  }
  return out;
}

/** Stable order of indices by descending length: long inputs batch together, padding stays low. */
export function lengthSortedOrder(lengths: number[]): number[] {
  return lengths.map((_, i) => i).sort((a, b) => (lengths[b] as number) - (lengths[a] as number) || a - b);
}
