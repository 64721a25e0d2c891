import { float32Json, halfBitsToFloat32 } from "../runtime/float-format.js";
import { type EmbeddingType, quantizeRow, rowBytes } from "../serving/quantize.js";
import { npyHeader, toFloat16 } from "./npy.js";

/** What a job's npy results may hold. */
export type NpyType = "float32" | "float16" | Exclude<EmbeddingType, "float">;

import type { BlobStore } from "./store.js";
import { type JobRecord, keys } from "./types.js";

/** A finished job's stored results in the formats clients download, streamed chunk by chunk. */
export class JobResults {
  constructor(private readonly blobs: BlobStore) {}

  /** The vectors of a completed embed job, chunk by chunk (memory holds one chunk). */
  async *vectorChunks(job: JobRecord): AsyncGenerator<Float32Array> {
    for (let c = 0; c < job.chunks; c++) {
      const buf = await this.blobs.get(keys.output(job.id, c));
      if (!buf) throw new Error(`the results of chunk ${c} are missing (expired?)`);
      const copy = new Uint8Array(buf.byteLength);
      copy.set(buf);
      yield new Float32Array(copy.buffer);
    }
  }

  /**
   * JSONL: {"index", "embedding"} per input, in input order; quantized types as integers, float16
   * as the floats half precision keeps.
   */
  async *jsonl(job: JobRecord, type: EmbeddingType | "float16" = "float"): AsyncGenerator<string> {
    let index = 0;
    for await (const data of this.vectorChunks(job)) {
      const rows = data.length / job.dims;
      let text = "";
      for (let r = 0; r < rows; r++) {
        const row = data.subarray(r * job.dims, (r + 1) * job.dims);
        const embedding =
          type === "float"
            ? float32Json(row)
            : type === "float16"
              ? float32Json(halfBitsToFloat32(toFloat16(row)))
              : `[${quantizeRow(row, type).join(",")}]`;
        text += `{"index":${index++},"embedding":${embedding}}\n`;
      }
      yield text;
    }
  }

  /**
   * A NumPy .npy file of shape (inputs, dims): float32 or float16, int8 / uint8, or
   * (inputs, ceil(dims / 8)) packed bits for binary (int8) / ubinary (uint8); see serving/quantize.ts.
   */
  async *npy(job: JobRecord, dtype: NpyType): AsyncGenerator<Buffer> {
    const packed = dtype === "binary" || dtype === "ubinary";
    const descr = (
      { float32: "<f4", float16: "<f2", int8: "|i1", uint8: "|u1", binary: "|i1", ubinary: "|u1" } as const
    )[dtype];
    yield npyHeader(descr, [job.total, packed ? Math.ceil(job.dims / 8) : job.dims]);
    for await (const data of this.vectorChunks(job)) {
      if (dtype === "float32") yield Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      else if (dtype === "float16") yield Buffer.from(toFloat16(data).buffer);
      else {
        const rows: Buffer[] = [];
        for (let r = 0; r < data.length / job.dims; r++) {
          rows.push(rowBytes(quantizeRow(data.subarray(r * job.dims, (r + 1) * job.dims), dtype)));
        }
        yield Buffer.concat(rows);
      }
    }
  }

  /** A batch's output or error lines, in request order. */
  async *batchLines(job: JobRecord, which: "output" | "errors"): AsyncGenerator<Buffer> {
    for (let c = 0; c < job.chunks; c++) {
      const buf = await this.blobs.get(which === "output" ? keys.output(job.id, c) : keys.errors(job.id, c));
      if (buf?.length) yield buf;
    }
  }
}
