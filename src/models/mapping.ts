import { FlagserveError } from "../runtime/errors.js";
import type { Pooling } from "./pooling.js";

/** FlagEmbedding's EmbedderModelClass values. */
export const EmbedderModelClass = {
  ENCODER_ONLY_BASE: "encoder-only-base",
  ENCODER_ONLY_M3: "encoder-only-m3",
  DECODER_ONLY_BASE: "decoder-only-base",
  DECODER_ONLY_ICL: "decoder-only-icl",
  DECODER_ONLY_PSEUDO_MOE: "decoder-only-pseudo_moe",
} as const;
export type EmbedderModelClass = (typeof EmbedderModelClass)[keyof typeof EmbedderModelClass];

/** FlagEmbedding's RerankerModelClass values. */
export const RerankerModelClass = {
  ENCODER_ONLY_BASE: "encoder-only-base",
  DECODER_ONLY_BASE: "decoder-only-base",
  DECODER_ONLY_LAYERWISE: "decoder-only-layerwise",
  DECODER_ONLY_LIGHTWEIGHT: "decoder-only-lightweight",
} as const;
export type RerankerModelClass = (typeof RerankerModelClass)[keyof typeof RerankerModelClass];

export interface EmbedderConfig {
  modelClass: EmbedderModelClass;
  poolingMethod: Pooling;
  trustRemoteCode: boolean;
  queryInstructionFormat: string;
  /** Hub organisation the bare name lives under, so "bge-m3" can be fetched as "BAAI/bge-m3". */
  org: string;
}

export interface RerankerConfig {
  modelClass: RerankerModelClass;
  trustRemoteCode: boolean;
  org: string;
}

const E = EmbedderModelClass;
const INSTRUCT_QUERY = "Instruct: {}\nQuery: {}";
const BGE_INSTRUCT = "<instruct>{}\n<query>{}";

function emb(
  org: string,
  modelClass: EmbedderModelClass,
  poolingMethod: Pooling,
  queryInstructionFormat = "{}{}",
  trustRemoteCode = false,
): EmbedderConfig {
  return { org, modelClass, poolingMethod, queryInstructionFormat, trustRemoteCode };
}

// Same names, order, classes, pooling and formats as FlagEmbedding 1.4.2's model_mapping.py.
const BGE_MAPPING: [string, EmbedderConfig][] = [
  ["bge-reasoner-embed-qwen3-8b-0923", emb("BAAI", E.DECODER_ONLY_BASE, "last_token", INSTRUCT_QUERY)],
  ["bge-code-v1", emb("BAAI", E.DECODER_ONLY_BASE, "last_token", BGE_INSTRUCT, true)],
  ["bge-en-icl", emb("BAAI", E.DECODER_ONLY_ICL, "last_token", BGE_INSTRUCT)],
  ["bge-multilingual-gemma2", emb("BAAI", E.DECODER_ONLY_BASE, "last_token", BGE_INSTRUCT)],
  ["bge-m3", emb("BAAI", E.ENCODER_ONLY_M3, "cls")],
  ["bge-large-en-v1.5", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-base-en-v1.5", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-small-en-v1.5", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-large-zh-v1.5", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-base-zh-v1.5", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-small-zh-v1.5", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-large-en", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-base-en", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-small-en", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-large-zh", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-base-zh", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
  ["bge-small-zh", emb("BAAI", E.ENCODER_ONLY_BASE, "cls")],
];

const OTHER_EMBEDDERS: [string, EmbedderConfig][] = [
  // Qwen3-Embedding
  ["Qwen3-Embedding-0.6B", emb("Qwen", E.DECODER_ONLY_BASE, "last_token", "Instruct: {}\nQuery:{}")],
  ["Qwen3-Embedding-4B", emb("Qwen", E.DECODER_ONLY_BASE, "last_token", "Instruct: {}\nQuery:{}")],
  ["Qwen3-Embedding-8B", emb("Qwen", E.DECODER_ONLY_BASE, "last_token", "Instruct: {}\nQuery:{}")],
  // E5
  ["e5-mistral-7b-instruct", emb("intfloat", E.DECODER_ONLY_BASE, "last_token", INSTRUCT_QUERY)],
  ["e5-large-v2", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  ["e5-base-v2", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  ["e5-small-v2", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  ["multilingual-e5-large-instruct", emb("intfloat", E.ENCODER_ONLY_BASE, "mean", INSTRUCT_QUERY)],
  ["multilingual-e5-large", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  ["multilingual-e5-base", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  ["multilingual-e5-small", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  ["e5-large", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  ["e5-base", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  ["e5-small", emb("intfloat", E.ENCODER_ONLY_BASE, "mean")],
  // GTE
  ["gte-Qwen2-7B-instruct", emb("Alibaba-NLP", E.DECODER_ONLY_BASE, "last_token", INSTRUCT_QUERY, true)],
  ["gte-Qwen2-1.5B-instruct", emb("Alibaba-NLP", E.DECODER_ONLY_BASE, "last_token", INSTRUCT_QUERY, true)],
  ["gte-Qwen1.5-7B-instruct", emb("Alibaba-NLP", E.DECODER_ONLY_BASE, "last_token", INSTRUCT_QUERY, true)],
  ["gte-multilingual-base", emb("Alibaba-NLP", E.ENCODER_ONLY_BASE, "cls", "{}{}", true)],
  ["gte-large-en-v1.5", emb("Alibaba-NLP", E.ENCODER_ONLY_BASE, "cls", "{}{}", true)],
  ["gte-base-en-v1.5", emb("Alibaba-NLP", E.ENCODER_ONLY_BASE, "cls", "{}{}", true)],
  ["gte-large", emb("thenlper", E.ENCODER_ONLY_BASE, "mean")],
  ["gte-base", emb("thenlper", E.ENCODER_ONLY_BASE, "mean")],
  ["gte-small", emb("thenlper", E.ENCODER_ONLY_BASE, "mean")],
  ["gte-large-zh", emb("thenlper", E.ENCODER_ONLY_BASE, "cls")],
  ["gte-base-zh", emb("thenlper", E.ENCODER_ONLY_BASE, "cls")],
  ["gte-small-zh", emb("thenlper", E.ENCODER_ONLY_BASE, "cls")],
  // SFR
  ["SFR-Embedding-2_R", emb("Salesforce", E.DECODER_ONLY_BASE, "last_token", INSTRUCT_QUERY)],
  ["SFR-Embedding-Mistral", emb("Salesforce", E.DECODER_ONLY_BASE, "last_token", INSTRUCT_QUERY)],
  // Linq
  ["Linq-Embed-Mistral", emb("Linq-AI-Research", E.DECODER_ONLY_BASE, "last_token", INSTRUCT_QUERY)],
  // BCE
  ["bce-embedding-base_v1", emb("maidalun1020", E.ENCODER_ONLY_BASE, "cls")],
];

export const AUTO_EMBEDDER_MAPPING: ReadonlyMap<string, EmbedderConfig> = new Map([
  ...BGE_MAPPING,
  ...OTHER_EMBEDDERS,
]);

const R = RerankerModelClass;
export const AUTO_RERANKER_MAPPING: ReadonlyMap<string, RerankerConfig> = new Map<string, RerankerConfig>([
  ["bge-reranker-base", { modelClass: R.ENCODER_ONLY_BASE, trustRemoteCode: false, org: "BAAI" }],
  ["bge-reranker-large", { modelClass: R.ENCODER_ONLY_BASE, trustRemoteCode: false, org: "BAAI" }],
  ["bge-reranker-v2-m3", { modelClass: R.ENCODER_ONLY_BASE, trustRemoteCode: false, org: "BAAI" }],
  ["bge-reranker-v2-gemma", { modelClass: R.DECODER_ONLY_BASE, trustRemoteCode: false, org: "BAAI" }],
  [
    "bge-reranker-v2-minicpm-layerwise",
    { modelClass: R.DECODER_ONLY_LAYERWISE, trustRemoteCode: false, org: "BAAI" },
  ],
  [
    "bge-reranker-v2.5-gemma2-lightweight",
    { modelClass: R.DECODER_ONLY_LIGHTWEIGHT, trustRemoteCode: false, org: "BAAI" },
  ],
  [
    "jina-reranker-v2-base-multilingual",
    { modelClass: R.ENCODER_ONLY_BASE, trustRemoteCode: false, org: "jinaai" },
  ],
  [
    "gte-multilingual-reranker-base",
    { modelClass: R.ENCODER_ONLY_BASE, trustRemoteCode: false, org: "Alibaba-NLP" },
  ],
  ["bce-reranker-base_v1", { modelClass: R.ENCODER_ONLY_BASE, trustRemoteCode: false, org: "maidalun1020" }],
  ["jina-reranker-v1-turbo-en", { modelClass: R.ENCODER_ONLY_BASE, trustRemoteCode: false, org: "jinaai" }],
]);

/** Every name FlagAutoModel maps. */
export function supportModelList(): string[] {
  return [...AUTO_EMBEDDER_MAPPING.keys()];
}

/** The BAAI-native embedding models FlagAutoModel maps. */
export function supportNativeBgeModelList(): string[] {
  return BGE_MAPPING.map(([name]) => name);
}

/** Every name FlagAutoReranker maps. */
export function supportRerankerModelList(): string[] {
  return [...AUTO_RERANKER_MAPPING.keys()];
}

/**
 * FlagEmbedding keys the mapping on the path's base name (the parent's for "checkpoint-N"
 * directories), so "BAAI/bge-m3", "./models/bge-m3" and "bge-m3" all map the same.
 */
export function mappingKey(nameOrPath: string): string {
  const parts = nameOrPath.replace(/[\\/]+$/, "").split(/[\\/]/);
  const base = parts[parts.length - 1] ?? nameOrPath;
  if (base.startsWith("checkpoint-") && parts.length > 1) return parts[parts.length - 2] as string;
  return base;
}

/** The hub repository a bare mapped name lives in ("bge-m3" -> "BAAI/bge-m3"); ids with an org pass through. */
export function hubRepoFor(name: string): string | undefined {
  if (name.includes("/")) return name;
  const org = AUTO_EMBEDDER_MAPPING.get(name)?.org ?? AUTO_RERANKER_MAPPING.get(name)?.org;
  return org ? `${org}/${name}` : undefined;
}

/**
 * Query / passage instructions the model cards recommend, applied by the server and the CLI when
 * the user gives none (a flagserve default: FlagEmbedding's classes themselves add no instruction).
 */
export interface DefaultInstructions {
  query?: string;
  passage?: string;
  /** Symmetric tasks (Cohere's input_type classification / clustering), written like a query's. */
  tasks?: { classification?: string; clustering?: string };
}

const WEB_SEARCH = "Given a web search query, retrieve relevant passages that answer the query";
/** Generic task descriptions for instruction-tuned models, in the style of their model cards. */
const TASKS = {
  classification: "Classify the given text into the category it belongs to",
  clustering: "Identify the main topic or theme of the given text",
};

/**
 * `modelClass` decides for directories the mapping does not know: an instruction-tuned decoder
 * (decoder-only-*) gets the task descriptions too.
 */
export function defaultInstructions(name: string, modelClass?: string): DefaultInstructions {
  const key = mappingKey(name);
  if (/^bge-(small|base|large)-en(-v1\.5)?$/.test(key)) {
    return { query: "Represent this sentence for searching relevant passages: " };
  }
  if (/^bge-(small|base|large)-zh(-v1\.5)?$/.test(key))
    return { query: "为这个句子生成表示以用于检索相关文章：" };
  // E5's card: "query: " also for symmetric tasks (similarity, classification, clustering).
  if (/^(multilingual-)?e5-(small|base|large)(-v2)?$/.test(key))
    return {
      query: "query: ",
      passage: "passage: ",
      tasks: { classification: "query: ", clustering: "query: " },
    };
  const config = AUTO_EMBEDDER_MAPPING.get(key);
  // Instruction-tuned decoder and e5-instruct models expect a task description with every query.
  if (config && config.queryInstructionFormat !== "{}{}") return { query: WEB_SEARCH, tasks: TASKS };
  if (modelClass?.startsWith("decoder-only")) return { tasks: TASKS };
  return {};
}

/** Check a modelClass option against one of the class enums above. */
export function parseModelClass<T extends string>(value: string, classes: Record<string, T>): T {
  const known = Object.values(classes) as string[];
  if (!known.includes(value)) {
    throw new FlagserveError(
      "invalid_input",
      `unknown modelClass "${value}"; expected one of ${known.join(", ")}`,
    );
  }
  return value as T;
}
