import { float32Json } from "../runtime/float-format.js";
import { npyHeader, toFloat16 } from "./npy.js";
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

  /** JSONL: {"index", "embedding"} per input, in input order. */
  async *jsonl(job: JobRecord): AsyncGenerator<string> {
    let index = 0;
    for await (const data of this.vectorChunks(job)) {
      const rows = data.length / job.dims;
      let text = "";
      for (let r = 0; r < rows; r++) {
        text += `{"index":${index++},"embedding":${float32Json(data.subarray(r * job.dims, (r + 1) * job.dims))}}\n`;
      }
      yield text;
    }
  }

  /** A NumPy .npy file of shape (inputs, dims), float32 or float16. */
  async *npy(job: JobRecord, dtype: "float32" | "float16"): AsyncGenerator<Buffer> {
    yield npyHeader(dtype === "float16" ? "<f2" : "<f4", [job.total, job.dims]);
    for await (const data of this.vectorChunks(job)) {
      yield dtype === "float16"
        ? Buffer.from(toFloat16(data).buffer)
        : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
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
