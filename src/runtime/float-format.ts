import { endianness } from "node:os";

const LITTLE_ENDIAN = endianness() === "LE";

/** Standard base64 of little-endian float32 bytes, as OpenAI's encoding_format=base64 defines it. */
export function float32Base64(row: Float32Array): string {
  if (LITTLE_ENDIAN) return Buffer.from(row.buffer, row.byteOffset, row.byteLength).toString("base64");
  const buf = Buffer.alloc(row.length * 4);
  row.forEach((v, i) => {
    buf.writeFloatLE(v, i * 4);
  });
  return buf.toString("base64");
}

/**
 * A JSON array of floats with 9 significant digits: enough to restore every float32 exactly.
 * JSON has no NaN or infinity; callers check outputs first (serving/errors.ts checkFinite), so a
 * non-finite value here is a bug, never written as a silent 0.
 */
export function float32Json(row: ArrayLike<number>): string {
  let s = "[";
  for (let i = 0; i < row.length; i++) {
    const v = row[i] as number;
    if (!Number.isFinite(v)) throw new RangeError(`non-finite value ${v} cannot be written as JSON`);
    if (i > 0) s += ",";
    s += String(+v.toPrecision(9));
  }
  return `${s}]`;
}
