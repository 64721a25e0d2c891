import { readdir, stat } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { FlagserveError } from "./errors.js";
import { type JsonObject, readJsonFile } from "./files.js";

/** ONNX weight variants, named as optimum and transformers.js name their files. */
export const DTYPES = ["auto", "fp32", "fp16", "q8", "int8", "uint8", "q4", "q4f16", "bnb4"] as const;
export type Dtype = (typeof DTYPES)[number];

const DTYPE_SUFFIX: Record<Exclude<Dtype, "auto">, string> = {
  fp32: "",
  fp16: "_fp16",
  q8: "_quantized",
  int8: "_int8",
  uint8: "_uint8",
  q4: "_q4",
  q4f16: "_q4f16",
  bnb4: "_bnb4",
};

/** Accepts the aliases people type ("float32", "quantized", "fp16") and returns the canonical name. */
export function parseDtype(value: string): Dtype {
  const v = value.trim().toLowerCase();
  const alias: Record<string, Dtype> = { float32: "fp32", float16: "fp16", half: "fp16", quantized: "q8" };
  const d = (alias[v] ?? v) as Dtype;
  if (!DTYPES.includes(d)) {
    throw new FlagserveError(
      "invalid_input",
      `unknown dtype "${value}"; expected one of ${DTYPES.join(", ")}`,
    );
  }
  return d;
}

/** Where a model keeps its graph: `onnx/` (hub, optimum >= 1.x exports for transformers.js) or the root. */
const ONNX_DIRS = ["onnx/", ""];

export interface OnnxChoice {
  /** Path relative to the model directory, with forward slashes. */
  file: string;
  dtype: Exclude<Dtype, "auto">;
  /** External weight files that must sit beside the graph. */
  externalData: string[];
}

function candidates(dtype: Exclude<Dtype, "auto">): string[] {
  return ONNX_DIRS.map((d) => `${d}model${DTYPE_SUFFIX[dtype]}.onnx`);
}

/**
 * Pick the graph file for a dtype out of a repository's file list (local directory or hub tree).
 * `auto` prefers fp16 on CUDA and fp32 on CPU, then whatever else exists.
 */
export function chooseOnnxFile(
  files: string[],
  dtype: Dtype,
  device: "cpu" | "cuda",
  onnxFile?: string,
): OnnxChoice {
  const present = new Set(files);
  const withData = (file: string): string[] =>
    files.filter((f) => f !== file && (f.startsWith(`${file}_data`) || f.startsWith(`${file}.data`)));
  if (onnxFile) {
    if (!present.has(onnxFile)) {
      throw new FlagserveError(
        "model_files",
        `the model has no file ${onnxFile}; ONNX files: ${listOnnx(files)}`,
      );
    }
    return { file: onnxFile, dtype: dtype === "auto" ? "fp32" : dtype, externalData: withData(onnxFile) };
  }
  const order: Exclude<Dtype, "auto">[] =
    dtype !== "auto"
      ? [dtype]
      : device === "cuda"
        ? ["fp16", "fp32", "q8", "int8", "uint8"]
        : ["fp32", "q8", "int8", "uint8", "fp16"];
  for (const d of order) {
    const file = candidates(d).find((c) => present.has(c));
    if (file) return { file, dtype: d, externalData: withData(file) };
  }
  const wanted = dtype === "auto" ? "no ONNX graph" : `no ${dtype} graph (${candidates(dtype).join(" or ")})`;
  throw new FlagserveError("model_files", `the model has ${wanted}; ONNX files present: ${listOnnx(files)}`);
}

function listOnnx(files: string[]): string {
  const onnx = files.filter((f) => f.endsWith(".onnx"));
  return onnx.length ? onnx.join(", ") : "none";
}

/** Every file under a directory, relative, with forward slashes (symlinks followed, as in the HF cache). */
export async function listFilesRecursive(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string): Promise<void> {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = join(dir, entry.name);
      const info = entry.isSymbolicLink() ? await stat(full).catch(() => undefined) : entry;
      if (!info) continue;
      if (info.isDirectory()) await walk(full);
      else out.push(relative(root, full).split(sep).join("/"));
    }
  }
  await walk(root);
  return out.sort();
}

export type Pooling = "cls" | "mean" | "last_token";

/** A model directory in the hub / optimum layout, with what its config files say. */
export class ModelDir {
  readonly path: string;
  readonly files: string[];
  readonly config: JsonObject;

  private constructor(path: string, files: string[], config: JsonObject) {
    this.path = path;
    this.files = files;
    this.config = config;
  }

  static async open(path: string): Promise<ModelDir> {
    const info = await stat(path).catch(() => undefined);
    if (!info?.isDirectory())
      throw new FlagserveError("model_files", `model directory ${path} does not exist`);
    const files = await listFilesRecursive(path);
    if (!files.includes("tokenizer.json")) {
      throw new FlagserveError(
        "model_files",
        `${join(path, "tokenizer.json")} is missing (a fast tokenizer is required)`,
      );
    }
    const config = files.includes("config.json") ? await readJsonFile(join(path, "config.json")) : {};
    return new ModelDir(path, files, config);
  }

  has(file: string): boolean {
    return this.files.includes(file);
  }

  resolve(file: string): string {
    return join(this.path, file);
  }

  onnx(dtype: Dtype, device: "cpu" | "cuda", onnxFile?: string): OnnxChoice {
    return chooseOnnxFile(this.files, dtype, device, onnxFile);
  }

  async readJson(file: string): Promise<JsonObject | undefined> {
    return this.has(file) ? readJsonFile(this.resolve(file)) : undefined;
  }

  get modelType(): string | undefined {
    return typeof this.config.model_type === "string" ? this.config.model_type : undefined;
  }

  /**
   * How many positions the network accepts: `max_position_embeddings`, less the padding offset
   * RoBERTa-family models reserve at the start of their position table.
   */
  get maxPositions(): number | undefined {
    const n = this.config.max_position_embeddings ?? this.config.n_positions ?? this.config.max_seq_len;
    if (typeof n !== "number") return undefined;
    const offsetFamilies = [
      "roberta",
      "xlm-roberta",
      "camembert",
      "xlm-roberta-xl",
      "longformer",
      "bart",
      "mbart",
    ];
    if (this.modelType && offsetFamilies.includes(this.modelType)) {
      const pad = typeof this.config.pad_token_id === "number" ? this.config.pad_token_id : 1;
      return n - pad - 1;
    }
    return n;
  }

  /** Pooling declared by a sentence-transformers export (`modules.json` -> `1_Pooling/config.json`). */
  async sentenceTransformersPooling(): Promise<Pooling | undefined> {
    const modules = this.has("modules.json") ? await readJsonFile(this.resolve("modules.json")) : undefined;
    const list = Array.isArray(modules) ? (modules as JsonObject[]) : [];
    const poolingModule = list.find((m) => typeof m.type === "string" && m.type.endsWith("Pooling"));
    const dir = typeof poolingModule?.path === "string" ? poolingModule.path : "1_Pooling";
    const cfg = await this.readJson(`${dir}/config.json`);
    if (!cfg) return undefined;
    if (cfg.pooling_mode_cls_token) return "cls";
    if (cfg.pooling_mode_lasttoken) return "last_token";
    if (cfg.pooling_mode_mean_tokens) return "mean";
    return undefined;
  }
}

/** Config and tokenizer files worth having beside the graph (sentence-transformers pooling included). */
const SIDE_FILES = [
  "config.json",
  // What scripts/export wrote: model class, formats, options fixed at export.
  "flagserve.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "modules.json",
  "config_sentence_transformers.json",
  "sentence_bert_config.json",
];

/**
 * The files of a repository that loading a model reads: config and tokenizer files, the chosen
 * ONNX graph with its external data, and any extra files a model class asks for.
 */
export function modelFileSelector(
  dtype: Dtype,
  device: "cpu" | "cuda",
  onnxFile?: string,
  extraFiles: string[] = [],
): (files: string[]) => string[] {
  return (files) => {
    const present = new Set(files);
    const onnx = chooseOnnxFile(files, dtype, device, onnxFile);
    const pooling = files.filter((f) => /^\d+_Pooling\/config\.json$/.test(f));
    const wanted = [...SIDE_FILES, ...pooling, ...extraFiles].filter((f) => present.has(f));
    return [...wanted, onnx.file, ...onnx.externalData];
  };
}
