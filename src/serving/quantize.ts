import type { Float32Matrix } from "../runtime/matrix.js";

/** The embedding types Cohere's embed API and vector databases use. */
export const EMBEDDING_TYPES = ["float", "int8", "uint8", "binary", "ubinary"] as const;
export type EmbeddingType = (typeof EMBEDDING_TYPES)[number];

/**
 * One vector in an embedding type. The rules (the same on every route and in bulk-job results):
 * - int8: each vector is scaled by 127 / (its largest absolute value) and rounded, so it uses the
 *   whole range [-127, 127]; cosine similarity is kept (up to rounding), not the vector's length.
 * - uint8: the int8 value + 128, in [1, 255].
 * - ubinary: one bit per dimension, 1 where the value is > 0, packed eight to a byte with the
 *   first dimension in the highest bit (numpy.packbits); the last byte is padded with 0 bits.
 * - binary: the ubinary byte - 128, as int8 (Cohere's convention).
 */
export function quantizeRow(
  row: Float32Array,
  type: Exclude<EmbeddingType, "float">,
): Int8Array | Uint8Array {
  if (type === "binary" || type === "ubinary") {
    const bytes = new Uint8Array(Math.ceil(row.length / 8));
    for (let i = 0; i < row.length; i++) {
      if ((row[i] as number) > 0) bytes[i >> 3] = (bytes[i >> 3] as number) | (0x80 >> (i & 7));
    }
    if (type === "ubinary") return bytes;
    const signed = new Int8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) signed[i] = (bytes[i] as number) - 128;
    return signed;
  }
  let max = 0;
  for (let i = 0; i < row.length; i++) max = Math.max(max, Math.abs(row[i] as number));
  const scale = max > 0 ? 127 / max : 0;
  const out = type === "int8" ? new Int8Array(row.length) : new Uint8Array(row.length);
  const offset = type === "int8" ? 0 : 128;
  for (let i = 0; i < row.length; i++) {
    out[i] = Math.max(-127, Math.min(127, Math.round((row[i] as number) * scale))) + offset;
  }
  return out;
}

/** Every row of a matrix in an embedding type: float rows as they are, others quantized. */
export function quantizeRows(
  m: Float32Matrix,
  type: EmbeddingType,
): (Float32Array | Int8Array | Uint8Array)[] {
  return [...m].map((row) => (type === "float" ? row : quantizeRow(row, type)));
}

/** The bytes of a quantized row, for base64 or npy output. */
export function rowBytes(row: Int8Array | Uint8Array | Float32Array): Buffer {
  return Buffer.from(row.buffer, row.byteOffset, row.byteLength);
}
