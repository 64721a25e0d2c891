import { existsSync, readdirSync } from "node:fs";
import { access } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import * as ort from "onnxruntime-node";
import { type Device, deviceName } from "./device.js";
import { FlagserveError } from "./errors.js";
import { halfBitsToFloat32 } from "./float-format.js";

export { type Device, deviceName, parseDevice } from "./device.js";
export { halfBitsToFloat32 };

import type { Side } from "./tokenizer.js";

export interface SessionOptions {
  device?: Device;
  /** Threads inside one operator; defaults to ONNX Runtime's choice (all physical cores). */
  intraOpThreads?: number;
  /** Threads across independent operators. */
  interOpThreads?: number;
  /**
   * Let ONNX Runtime's idle threads spin for the next run (lower latency for back-to-back runs).
   * Default true; a server sharing its cores with an HTTP process turns it off so idle threads
   * do not take CPU from request handling.
   */
  spinning?: boolean;
  /**
   * Keep freed tensor memory in ONNX Runtime's CPU arena for reuse (default true). It never
   * shrinks: the server's device workers renew their sessions after a spike (OnnxSession.renew).
   */
  cpuMemArena?: boolean;
  /**
   * ONNX Runtime's memory pattern: one planned block per input shape (default true). With the
   * arena on and shapes that vary batch by batch it doubles the memory held and saves no time
   * (bge-small, 8 batch shapes: 2.26 vs 1.29 GB peak, same speed within 2%; int8 1.17 GB and 9% faster).
   */
  memPattern?: boolean;
}

/**
 * Whether the CUDA execution provider's library sits beside the onnxruntime-node binding: it is
 * not in the npm package; the package's install script downloads it (ONNXRUNTIME_NODE_INSTALL=cuda12).
 */
export function cudaAvailable(): boolean {
  if (ort.listSupportedBackends().some((b) => b.name === "cuda" && b.bundled)) return true;
  try {
    const pkg = dirname(createRequire(import.meta.url).resolve("onnxruntime-node/package.json"));
    const bin = join(pkg, "bin");
    return readdirSync(bin).some((napi) =>
      existsSync(join(bin, napi, process.platform, process.arch, "libonnxruntime_providers_cuda.so")),
    );
  } catch {
    return false;
  }
}

/** An ONNX Runtime inference session with the inputs and outputs of its graph. */
export class OnnxSession {
  readonly path: string;
  readonly device: Device;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  private session: ort.InferenceSession;
  private readonly sessionOptions: ort.InferenceSession.SessionOptions;

  private constructor(
    path: string,
    device: Device,
    session: ort.InferenceSession,
    sessionOptions: ort.InferenceSession.SessionOptions,
  ) {
    this.path = path;
    this.device = device;
    this.session = session;
    this.sessionOptions = sessionOptions;
    this.inputNames = session.inputNames;
    this.outputNames = session.outputNames;
  }

  static async create(path: string, options: SessionOptions = {}): Promise<OnnxSession> {
    const device = options.device ?? { kind: "cpu" };
    await access(path).catch(() => {
      throw new FlagserveError("model_files", `ONNX model ${path} does not exist`);
    });
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: "all",
      executionProviders:
        device.kind === "cuda"
          ? [{ name: "cuda", deviceId: device.id } as ort.InferenceSession.ExecutionProviderConfig]
          : ["cpu"],
    };
    if (options.intraOpThreads !== undefined) sessionOptions.intraOpNumThreads = options.intraOpThreads;
    if (options.cpuMemArena === false) sessionOptions.enableCpuMemArena = false;
    if (options.memPattern === false) sessionOptions.enableMemPattern = false;
    if (options.interOpThreads !== undefined) sessionOptions.interOpNumThreads = options.interOpThreads;
    if (options.spinning === false) {
      sessionOptions.extra = {
        session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } },
      };
    }
    if (device.kind === "cuda" && !cudaAvailable()) {
      throw new FlagserveError(
        "device",
        `device ${deviceName(device)} requested, but this onnxruntime-node install has no CUDA execution provider ` +
          "(libonnxruntime_providers_cuda.so is missing: it was installed with ONNXRUNTIME_NODE_INSTALL=skip); " +
          "fetch it with ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js " +
          "(needs network access and CUDA 12 + cuDNN 9), or use --devices cpu",
      );
    }
    try {
      const session = await ort.InferenceSession.create(path, sessionOptions);
      return new OnnxSession(path, device, session, sessionOptions);
    } catch (err) {
      const msg = (err as Error).message;
      if (device.kind === "cuda") {
        throw new FlagserveError(
          "device",
          `cannot create a CUDA session on ${deviceName(device)} for ${path}: ${msg}`,
        );
      }
      throw new FlagserveError("model_files", `cannot load ONNX model ${path}: ${msg}`);
    }
  }

  async run(feeds: Record<string, ort.Tensor>, outputs?: string[]): Promise<Record<string, ort.Tensor>> {
    const result = outputs ? await this.session.run(feeds, outputs) : await this.session.run(feeds);
    return result as Record<string, ort.Tensor>;
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  /**
   * Replace the ONNX Runtime session with a fresh one of the same graph and options, releasing
   * the old one: what its CPU memory arena grew to goes back to the system. The caller makes sure
   * no run is in progress.
   */
  async renew(): Promise<void> {
    const fresh = await ort.InferenceSession.create(this.path, this.sessionOptions);
    const old = this.session;
    this.session = fresh;
    await old.release();
  }
}

/** Token ids of one input as a batch needs them: number arrays, or views into a packed buffer. */
export interface TokenIds {
  ids: ArrayLike<number>;
  typeIds: ArrayLike<number>;
}

/** A padded batch of token ids ready to become int64 tensors. */
export interface PaddedBatch {
  size: number;
  seqLen: number;
  inputIds: BigInt64Array;
  attentionMask: BigInt64Array;
  tokenTypeIds: BigInt64Array;
  /** Real (unpadded) length of every row. */
  lengths: number[];
  side: Side;
}

/** Pad encodings to the longest one, on the tokenizer's padding side. */
export function padBatch(encodings: readonly TokenIds[], padId: number, side: Side): PaddedBatch {
  const size = encodings.length;
  const seqLen = encodings.reduce((m, e) => Math.max(m, e.ids.length), 0);
  const inputIds = new BigInt64Array(size * seqLen).fill(BigInt(padId));
  const attentionMask = new BigInt64Array(size * seqLen);
  const tokenTypeIds = new BigInt64Array(size * seqLen);
  const lengths: number[] = [];
  encodings.forEach((e, r) => {
    const n = e.ids.length;
    lengths.push(n);
    const start = r * seqLen + (side === "left" ? seqLen - n : 0);
    for (let i = 0; i < n; i++) {
      inputIds[start + i] = BigInt(e.ids[i] as number);
      attentionMask[start + i] = 1n;
      tokenTypeIds[start + i] = BigInt(e.typeIds[i] ?? 0);
    }
  });
  return { size, seqLen, inputIds, attentionMask, tokenTypeIds, lengths, side };
}

/**
 * Map a padded batch onto the graph's input names (BERT, RoBERTa, and decoder position ids);
 * `extra` feeds the inputs particular to a model class (e.g. the lightweight reranker's lengths).
 */
export function batchFeeds(
  session: OnnxSession,
  batch: PaddedBatch,
  extra: Record<string, () => ort.Tensor> = {},
): Record<string, ort.Tensor> {
  const dims = [batch.size, batch.seqLen];
  const feeds: Record<string, ort.Tensor> = {};
  for (const name of session.inputNames) {
    switch (name) {
      case "input_ids":
        feeds[name] = new ort.Tensor("int64", batch.inputIds, dims);
        break;
      case "attention_mask":
        feeds[name] = new ort.Tensor("int64", batch.attentionMask, dims);
        break;
      case "token_type_ids":
        feeds[name] = new ort.Tensor("int64", batch.tokenTypeIds, dims);
        break;
      case "position_ids":
        feeds[name] = new ort.Tensor("int64", positionIds(batch), dims);
        break;
      default:
        if (extra[name]) {
          feeds[name] = extra[name]();
          break;
        }
        throw new FlagserveError(
          "model_files",
          `${session.path} has an input "${name}" that flagserve cannot feed`,
        );
    }
  }
  return feeds;
}

/** Positions counted over real tokens only (left padding gets position 1, as transformers does). */
function positionIds(batch: PaddedBatch): BigInt64Array {
  const out = new BigInt64Array(batch.size * batch.seqLen);
  for (let r = 0; r < batch.size; r++) {
    let pos = 0;
    for (let t = 0; t < batch.seqLen; t++) {
      const i = r * batch.seqLen + t;
      if (batch.attentionMask[i] === 1n) out[i] = BigInt(pos++);
      else out[i] = 1n;
    }
  }
  return out;
}

/** Float values of an output tensor as float32, converting half precision outputs. */
export function tensorToFloat32(t: ort.Tensor): Float32Array {
  if (t.type === "float32") return t.data as Float32Array;
  if (t.type === "float16") {
    const raw = t.data as unknown as ArrayLike<number>;
    // Newer runtimes hand out a Float16Array (numbers); older ones the raw Uint16 bits.
    if (raw instanceof Uint16Array) return halfBitsToFloat32(raw);
    return Float32Array.from(raw);
  }
  if (t.type === "float64") return Float32Array.from(t.data as Float64Array);
  throw new FlagserveError("model_files", `unexpected ${t.type} output tensor; expected floating point`);
}
