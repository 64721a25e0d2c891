import { stat } from "node:fs/promises";
import { FlagserveError } from "../runtime/errors.js";
import { type HubOptions, looksLikeRepoId, snapshotModel } from "../runtime/hub.js";
import {
  type Dtype,
  ModelDir,
  modelFileSelector,
  type OnnxChoice,
  parseDtype,
} from "../runtime/model-dir.js";
import { type Device, OnnxSession, parseDevice, type SessionOptions } from "../runtime/session.js";
import { TextTokenizer } from "../runtime/tokenizer.js";

/** How a model is found and run: shared by every embedder and reranker class. */
export interface RuntimeOptions {
  /** One entry per ONNX session: "cpu", "cuda:0", ... Default "cpu". Several entries split encode() calls. */
  devices?: string | string[];
  /** ONNX weight variant. Default "auto" (fp32 on CPU, fp16 on CUDA when the model ships one). */
  dtype?: Dtype | string;
  /** FlagEmbedding's switch: half precision on GPUs, ignored on CPU (as FlagEmbedding does). */
  useFp16?: boolean;
  /** A graph file inside the model directory to use instead of choosing by dtype. */
  onnxFile?: string;
  intraOpThreads?: number;
  interOpThreads?: number;
  /** ONNX Runtime thread spinning between runs (see SessionOptions.spinning). */
  spinning?: boolean;
  /** ONNX Runtime's CPU memory arena (see SessionOptions.cpuMemArena). */
  cpuMemArena?: boolean;
  /** ONNX Runtime's memory pattern (see SessionOptions.memPattern). */
  memPattern?: boolean;
  /** Hub access for model ids (revision, cache, endpoint, token, offline); defaults from HF_* env vars. */
  hub?: HubOptions;
}

/** A loaded model directory: tokenizer, one session per device, and what limits it has. */
export interface LoadedModel {
  dir: ModelDir;
  tokenizer: TextTokenizer;
  sessions: OnnxSession[];
  devices: Device[];
  onnx: OnnxChoice;
  /** The longest input the network accepts (tokenizer's model_max_length and position table). */
  maxLength: number | undefined;
}

export function parseDevices(devices: string | string[] | undefined): Device[] {
  const list = devices === undefined ? ["cpu"] : Array.isArray(devices) ? devices : devices.split(",");
  const parsed = list
    .map((d) => d.trim())
    .filter(Boolean)
    .map(parseDevice);
  if (parsed.length === 0) throw new FlagserveError("device", "no device given");
  return parsed;
}

async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isDirectory() ?? false;
}

function looksLikePath(s: string): boolean {
  return s.startsWith("/") || s.startsWith("./") || s.startsWith("../") || s.startsWith("~") || s === ".";
}

/**
 * Resolve a local directory or a hub id to a directory holding the files the model needs.
 * `hubRepo` replaces a bare known name (e.g. "bge-small-en-v1.5" -> "BAAI/bge-small-en-v1.5").
 */
export async function resolveModelDir(
  nameOrPath: string,
  select: (files: string[]) => string[],
  hub: HubOptions | undefined,
  hubRepo?: string,
): Promise<string> {
  if (await isDirectory(nameOrPath)) return nameOrPath;
  if (looksLikePath(nameOrPath) || !looksLikeRepoId(nameOrPath)) {
    throw new FlagserveError("model_files", `model directory ${nameOrPath} does not exist`);
  }
  const repo = nameOrPath.includes("/") ? nameOrPath : (hubRepo ?? nameOrPath);
  return snapshotModel(repo, select, hub);
}

export async function loadModel(
  nameOrPath: string,
  options: RuntimeOptions,
  extra: { hubRepo?: string; extraFiles?: string[] } = {},
): Promise<LoadedModel> {
  const devices = parseDevices(options.devices);
  const onCuda = devices.some((d) => d.kind === "cuda");
  const dtype: Dtype =
    options.dtype !== undefined
      ? parseDtype(options.dtype)
      : onCuda && options.useFp16 === false
        ? "fp32"
        : "auto";
  const select = modelFileSelector(dtype, onCuda ? "cuda" : "cpu", options.onnxFile, extra.extraFiles);
  const path = await resolveModelDir(nameOrPath, select, options.hub, extra.hubRepo);
  const dir = await ModelDir.open(path);
  const onnx = dir.onnx(dtype, onCuda ? "cuda" : "cpu", options.onnxFile);
  const tokenizer = await TextTokenizer.fromDir(path);
  const sessions: OnnxSession[] = [];
  for (const device of devices) {
    sessions.push(await OnnxSession.create(dir.resolve(onnx.file), sessionOptions(options, device)));
  }
  const limits = [tokenizer.modelMaxLength, dir.maxPositions].filter(
    (n): n is number => typeof n === "number",
  );
  const maxLength = limits.length ? Math.min(...limits) : undefined;
  return { dir, tokenizer, sessions, devices, onnx, maxLength };
}

/** Release every ONNX session of a loaded model. */
/** The ONNX session settings of a model's runtime options, for one device. */
export function sessionOptions(options: RuntimeOptions, device: Device): SessionOptions {
  return {
    device,
    ...(options.intraOpThreads !== undefined ? { intraOpThreads: options.intraOpThreads } : {}),
    ...(options.interOpThreads !== undefined ? { interOpThreads: options.interOpThreads } : {}),
    ...(options.spinning !== undefined ? { spinning: options.spinning } : {}),
    ...(options.cpuMemArena !== undefined ? { cpuMemArena: options.cpuMemArena } : {}),
    ...(options.memPattern !== undefined ? { memPattern: options.memPattern } : {}),
  };
}

export async function releaseModel(model: LoadedModel): Promise<void> {
  await Promise.all(model.sessions.map((s) => s.release()));
}
