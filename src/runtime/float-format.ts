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

/** IEEE half-precision bit patterns as float32 values. */
export function halfBitsToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i] as number;
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const f = h & 0x3ff;
    if (e === 0) out[i] = s * 2 ** -14 * (f / 1024);
    else if (e === 31) out[i] = f ? Number.NaN : s * Number.POSITIVE_INFINITY;
    else out[i] = s * 2 ** (e - 15) * (1 + f / 1024);
  }
  return out;
}
