// What the HTTP process knows of models and of where batches run. Types only: the process that
// parses and schedules never loads the model classes or ONNX Runtime (see local-executor.ts).
import type { CompressSettings, DecoderServeInfo, LLMRerankInfo } from "../models/decoder-prompts.js";
import type { OpenOptions } from "../models/open.js";
import type { M3Raw } from "../models/scoring.js";
import type { TokenIds } from "../runtime/session.js";

export type ModelKind = "embedding" | "rerank";
/** Instructions for symmetric tasks, applied with the query format. */
export type TaskInstructions = Partial<Record<"classification" | "clustering", string>>;

/** Which side a text is on: it decides the instruction (classification / clustering: task instructions). */
export type InputType = "query" | "passage" | "classification" | "clustering";

/** One `--model` entry: where the model comes from, its public name, and per-model defaults. */
export interface ModelSpec {
  source: string;
  /** Public name clients use; defaults to the hub id, or the directory's name for local paths. */
  alias?: string;
  options: OpenOptions;
  /** Applied when a request gives no input_type. Default "passage" (no query instruction). */
  defaultInputType?: InputType;
  /** Instructions for input_type classification / clustering; default: the model card's. */
  taskInstructions?: TaskInstructions;
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
  /** Task instructions for input_type classification / clustering (instruction-tuned models). */
  taskInstructions?: TaskInstructions;
  /** FlagEmbedding's model class ("encoder-only-base", "decoder-only-icl", ...), if known. */
  modelClass?: string;
  /** Decoder-only embedders: query / passage limits, ICL examples, pseudo-MoE domains. */
  decoder?: DecoderServeInfo;
  /** LLM rerankers: the pair prompt, and the cutoff layers / compression the graph can serve. */
  llm?: LLMRerankInfo;
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

export type { TokenIds };

export type EmbedItem = TokenIds & { want: Want };

/** What an LLM reranker row carries besides its ids: part lengths, and the (layer, head) to return. */
export interface LLMRowExtras {
  queryLength: number;
  promptLength: number;
  layer: number;
  head: number;
}

/** A pair to score: a cross-encoder's ids, or an LLM reranker row with its extras. */
export type ScoreItem = TokenIds & { llm?: LLMRowExtras };

/** Options every row of one score batch shares (the lightweight graph's compression). */
export interface ScoreBatchOptions {
  compress?: CompressSettings;
}

/** Where batches run: in this process (a worker's core) or in a pool of device workers. */
export interface Executor {
  /** Batches that may run at once (one per device, or per worker). */
  readonly slots: number;
  /** Load every model everywhere; the first batch of each runs during load (warm-up). */
  load(specs: ModelSpec[]): Promise<ModelInfo[]>;
  /** Embedding heads for a batch of inputs (raw: not truncated, not normalised). */
  /** `signal` aborts when nobody waits for the batch any more (it is then skipped if not started). */
  embed(model: string, items: EmbedItem[], slot: number, signal?: AbortSignal): Promise<M3Raw[]>;
  /** Raw logits for a batch of encoded (query, passage) pairs. */
  score(
    model: string,
    items: ScoreItem[],
    slot: number,
    signal?: AbortSignal,
    options?: ScoreBatchOptions,
  ): Promise<Float32Array>;
  close(): Promise<void>;
}
