// What the HTTP process knows of models and of where batches run. Types only: the process that
// parses and schedules never loads the model classes or ONNX Runtime (see local-executor.ts).
import type { OpenOptions } from "../models/open.js";
import type { M3Raw } from "../models/scoring.js";
import type { Encoding } from "../runtime/tokenizer.js";

export type ModelKind = "embedding" | "rerank";
export type InputType = "query" | "passage";

/** One `--model` entry: where the model comes from, its public name, and per-model defaults. */
export interface ModelSpec {
  source: string;
  /** Public name clients use; defaults to the hub id, or the directory's name for local paths. */
  alias?: string;
  options: OpenOptions;
  /** Applied when a request gives no input_type. Default "passage" (no query instruction). */
  defaultInputType?: InputType;
}

/** What the HTTP process needs to know of a loaded model (it never holds the weights itself). */
export interface ModelInfo {
  id: string;
  source: string;
  kind: ModelKind;
  /** Local directory with the tokenizer files (a hub snapshot for hub ids). */
  dir: string;
  onnxFile: string;
  dtype: string;
  /** Longest input in tokens the model accepts (configured max, capped by the model's own). */
  maxLength: number;
  /** Dense width (embedding models). */
  dimension: number;
  /** BGE-M3: sparse and ColBERT heads available. */
  m3: boolean;
  colbertDimension: number;
  pooling: string;
  normalize: boolean;
  truncateDim: number | null;
  queryInstruction: string | null;
  passageInstruction: string | null;
  queryFormat: string;
  passageFormat: string;
}

/**
 * Which outputs an input needs. sparse and colbert are BGE-M3 heads; tokens asks for every token's
 * vector (ColBERT vectors for M3, hidden states otherwise), returned in M3Raw.colbert.
 */
export interface Want {
  dense: boolean;
  sparse: boolean;
  colbert: boolean;
  tokens?: boolean;
}

export type EmbedItem = Encoding & { want: Want };

/** Where batches run: in this process (a worker's core) or in a pool of device workers. */
export interface Executor {
  /** Batches that may run at once (one per device, or per worker). */
  readonly slots: number;
  /** Load every model everywhere; the first batch of each runs during load (warm-up). */
  load(specs: ModelSpec[]): Promise<ModelInfo[]>;
  /** Embedding heads for a batch of inputs (raw: not truncated, not normalised). */
  embed(model: string, items: EmbedItem[], slot: number): Promise<M3Raw[]>;
  /** Raw logits for a batch of encoded (query, passage) pairs. */
  score(model: string, items: Encoding[], slot: number): Promise<Float32Array>;
  close(): Promise<void>;
}
