// Scoring arithmetic shared by the library classes and the server: no ONNX Runtime here, so the
// HTTP process can score (M3 hybrid, lexical weights, sigmoid) without loading the native library.
import { dot, type Float32Matrix } from "../runtime/matrix.js";
import type { TextTokenizer } from "../runtime/tokenizer.js";

/** Token id (as a decimal string, as FlagEmbedding keys it) -> weight. */
export type LexicalWeights = Record<string, number>;

/** Raw per-input outputs of one forward pass, before truncation and normalisation. */
export interface M3Raw {
  dense?: Float32Array;
  /** One weight per real token (special tokens included), aligned with the input ids. */
  tokenWeights?: Float32Array;
  /** Rows for tokens 1..n-1 (the cls position dropped). */
  colbert?: Float32Matrix;
}

/** Lexical weights of one input from its per-token weights (see BGEM3FlagModel.lexicalWeights). */
export function lexicalWeightsOf(
  tokenWeights: ArrayLike<number>,
  ids: ArrayLike<number>,
  unused: ReadonlySet<number>,
): LexicalWeights {
  const out: LexicalWeights = {};
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i] as number;
    const w = tokenWeights[i] as number;
    if (unused.has(id) || !(w > 0)) continue;
    const key = String(id);
    if (!(key in out) || w > (out[key] as number)) out[key] = w;
  }
  return out;
}

/** cls, eos, pad and unk ids: the tokens M3 never gives lexical weight to. */
export function specialIds(tok: TextTokenizer): Set<number> {
  const out = new Set<number>();
  for (const key of ["cls_token", "eos_token", "pad_token", "unk_token"]) {
    const v = tok.config[key];
    const content = typeof v === "string" ? v : (v as { content?: string } | undefined)?.content;
    const id = content === undefined ? undefined : tok.tokenToId(content);
    if (id !== undefined) out.add(id);
  }
  return out;
}

export function lexicalMatch(a: LexicalWeights, b: LexicalWeights): number {
  let s = 0;
  for (const [k, v] of Object.entries(a)) {
    const o = b[k];
    if (o !== undefined) s += v * o;
  }
  return s;
}

/**
 * Σ_i max_j q_i·p_j / rows(q). FlagEmbedding's compute_score pads the passages of a chunk to the
 * longest with zero vectors, so for a shorter passage every max also sees a 0: `padded` reproduces it.
 */
export function colbertScore(q: Float32Matrix, p: Float32Matrix, padded: boolean): number {
  if (q.rows === 0) return 0;
  let total = 0;
  for (const qi of q) {
    let best = padded ? 0 : Number.NEGATIVE_INFINITY;
    for (const pj of p) best = Math.max(best, dot(qi, pj));
    total += p.rows === 0 && !padded ? 0 : best;
  }
  return total / q.rows;
}

export function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}
