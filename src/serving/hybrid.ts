import { colbertScore, lexicalMatch, lexicalWeightsOf, type M3Raw, specialIds } from "../models/scoring.js";
import { FlagserveError } from "../runtime/errors.js";
import { dot, Float32Matrix, l2NormalizeInPlace } from "../runtime/matrix.js";
import type { TokenIds } from "./executor.js";
import type { ServedEmbedder } from "./served.js";

/** Weights of [dense, sparse, colbert], as FlagEmbedding's weights_for_different_modes. */
export type ModeWeights = [number, number, number];

/**
 * BGE-M3 hybrid relevance of documents to a query (encodings[0] is the query, the rest the
 * documents): dense cosine, lexical matching and ColBERT late interaction, combined like
 * compute_score's "colbert+sparse+dense" with the given weights.
 */
export function m3Hybrid(
  model: ServedEmbedder,
  encodings: TokenIds[],
  raws: M3Raw[],
  weights: ModeWeights,
): number[] {
  // The weights are relative (the score divides by their sum): scaled so the largest is 1, the
  // score is the same, and weights near the float limit cannot overflow it to infinity.
  const largest = Math.max(...weights);
  if (!(largest > 0)) throw new FlagserveError("invalid_input", "mode_weights must not all be zero");
  const w = weights.map((x) => x / largest) as ModeWeights;
  const total = w[0] + w[1] + w[2];
  const unused = specialIds(model.tokenizer);
  const dense = (r: M3Raw) => l2NormalizeInPlace((r.dense as Float32Array).slice());
  const sparse = (r: M3Raw, e: TokenIds) => lexicalWeightsOf(r.tokenWeights as Float32Array, e.ids, unused);
  const colbert = (r: M3Raw) =>
    Float32Matrix.fromRows(
      [...(r.colbert as Float32Matrix)],
      (r.colbert as Float32Matrix).dims,
    ).normalizeRows();
  const q = raws[0] as M3Raw;
  const qDense = dense(q);
  const qSparse = sparse(q, encodings[0] as TokenIds);
  const qColbert = colbert(q);
  return raws.slice(1).map((r, i) => {
    const d = dot(qDense, dense(r));
    const s = lexicalMatch(qSparse, sparse(r, encodings[i + 1] as TokenIds));
    const c = colbertScore(qColbert, colbert(r), false);
    return (d * w[0] + s * w[1] + c * w[2]) / total;
  });
}
