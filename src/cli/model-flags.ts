import { readFileSync } from "node:fs";
import { DEFAULT_CONFIG } from "../config.js";
import type { AutoModelOptions } from "../models/auto.js";
import type { IclExample } from "../models/decoder-prompts.js";
import { defaultInstructions } from "../models/mapping.js";
import { EMBEDDER_DEFAULTS } from "../models/options.js";
import type { Pooling } from "../models/pooling.js";
import type { TaskInstructions } from "../serving/executor.js";
import { type FlagSpecs, type FlagValues, int, list, str, UsageError } from "./args.js";

/** Flags every command that loads a model shares. */
export const MODEL_FLAGS: FlagSpecs = {
  dtype: {
    type: "string",
    help: "ONNX variant: auto, fp32, fp16, q8, int8, uint8, q4, q4f16, bnb4",
    default: "auto",
  },
  devices: {
    type: "string",
    help: "cpu, cuda:0, or a comma-separated list; for serve: one worker process per entry, cpu:N for N CPU workers",
    default: DEFAULT_CONFIG.devices,
  },
  revision: {
    type: "string",
    help: "hub revision (branch, tag or commit) for hub model ids",
    default: "main",
  },
  "model-class": {
    type: "string",
    help: "embedder class for models the mapping does not know (encoder-only-base, ...)",
  },
  pooling: { type: "string", help: "pooling for models the mapping does not know: cls, mean" },
  "onnx-file": {
    type: "string",
    help: "graph file inside the model directory, instead of choosing by dtype",
  },
  threads: { type: "string", help: "ONNX Runtime intra-op threads per device (default: all cores)" },
  "batch-size": {
    type: "string",
    help: "inputs per forward pass (library use; the server batches by --max-batch-size)",
    default: String(EMBEDDER_DEFAULTS.batchSize),
  },
  "max-length": {
    type: "string",
    help: "token limit per input, capped by the model",
    default: String(EMBEDDER_DEFAULTS.maxLength),
  },
  "query-instruction": {
    type: "string",
    help: "instruction for queries (default: the model card's, if known)",
  },
  "passage-instruction": {
    type: "string",
    help: "instruction for passages (default: the model card's, if known)",
  },
  "instruction-format": { type: "string", help: 'Python-style template for instructions, e.g. "{}{}"' },
  "classification-instruction": {
    type: "string",
    help: "task instruction for input_type classification (default: the model card's, for instruction-tuned models)",
  },
  "clustering-instruction": {
    type: "string",
    help: "task instruction for input_type clustering (default: the model card's, for instruction-tuned models)",
  },
  "truncate-dim": { type: "string", help: "keep only the first N dimensions (Matryoshka)" },
  "icl-examples": {
    type: "string",
    help: 'ICL models (bge-en-icl): JSON file of default in-context examples, [{"instruct", "query", "response"}, ...]',
  },
  "no-normalize": { type: "boolean", help: "return unnormalised embeddings" },
};

const POOLINGS: Pooling[] = ["cls", "mean", "last_token"];

/** Translate the shared model flags into library options for one model source. */
export function modelOptions(values: FlagValues, source: string): AutoModelOptions {
  const pooling = str(values, "pooling");
  if (pooling !== undefined && !POOLINGS.includes(pooling as Pooling)) {
    throw new UsageError(`--pooling must be one of ${POOLINGS.join(", ")}`);
  }
  const defaults = defaultInstructions(source);
  const maxLength = int(values, "max-length");
  const threads = int(values, "threads");
  const batchSize = int(values, "batch-size");
  const truncateDim = int(values, "truncate-dim");
  const options: AutoModelOptions = {
    devices: list(values, "devices").length ? list(values, "devices").join(",") : DEFAULT_CONFIG.devices,
    hub: { revision: str(values, "revision") ?? "main" },
    normalizeEmbeddings: values["no-normalize"] !== true,
  };
  // Unset when neither a flag nor the model card gives one: an exported directory's flagserve.json
  // (or its mapped name) may still know the model's.
  const query = str(values, "query-instruction") ?? defaults.query;
  const passage = str(values, "passage-instruction") ?? defaults.passage;
  if (query !== undefined) options.queryInstructionForRetrieval = query;
  if (passage !== undefined) options.passageInstructionForRetrieval = passage;
  const examples = str(values, "icl-examples");
  if (examples !== undefined) options.examplesForTask = readIclExamples(examples);
  const set = <K extends keyof AutoModelOptions>(k: K, v: AutoModelOptions[K] | undefined) => {
    if (v !== undefined) options[k] = v;
  };
  set("dtype", str(values, "dtype"));
  set("modelClass", str(values, "model-class") as AutoModelOptions["modelClass"]);
  set("poolingMethod", pooling as Pooling | undefined);
  set("onnxFile", str(values, "onnx-file"));
  set("intraOpThreads", threads);
  set("batchSize", batchSize);
  set("queryMaxLength", maxLength);
  set("passageMaxLength", maxLength);
  set("truncateDim", truncateDim);
  const format = str(values, "instruction-format");
  if (format !== undefined) {
    options.queryInstructionFormat = format;
    options.passageInstructionFormat = format;
  }
  return options;
}

/** Read an --icl-examples file: a JSON list of {instruct?, query?, response?} (or {"examples": [...]}). */
export function readIclExamples(file: string): IclExample[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new UsageError(`--icl-examples ${file}: ${(err as Error).message}`);
  }
  const list = Array.isArray(parsed) ? parsed : (parsed as { examples?: unknown } | null)?.examples;
  const fields = ["instruct", "query", "response"];
  const valid =
    Array.isArray(list) &&
    list.every(
      (e) =>
        e !== null &&
        typeof e === "object" &&
        !Array.isArray(e) &&
        Object.entries(e).every(([k, v]) => fields.includes(k) && (typeof v === "string" || v === null)),
    );
  if (!valid) {
    throw new UsageError(
      `--icl-examples ${file}: expected a JSON list of {"instruct", "query", "response"} objects with string values`,
    );
  }
  return list as IclExample[];
}

/** Parse `ID_OR_DIR[=ALIAS]`. */
export function parseModelArg(arg: string): { source: string; alias?: string } {
  const eq = arg.lastIndexOf("=");
  if (eq > 0 && eq < arg.length - 1) return { source: arg.slice(0, eq), alias: arg.slice(eq + 1) };
  return { source: arg };
}

/** --classification-instruction / --clustering-instruction, when given. */
export function taskInstructions(values: FlagValues): { taskInstructions?: TaskInstructions } {
  const classification = str(values, "classification-instruction");
  const clustering = str(values, "clustering-instruction");
  if (classification === undefined && clustering === undefined) return {};
  return {
    taskInstructions: {
      ...(classification !== undefined ? { classification } : {}),
      ...(clustering !== undefined ? { clustering } : {}),
    },
  };
}
