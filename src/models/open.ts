import { FlagserveError } from "../runtime/errors.js";
import { ModelDir, modelFileSelector, parseDtype } from "../runtime/model-dir.js";
import type { RerankerOptions } from "./abs-reranker.js";
import { type AutoModelOptions, type Embedder, FlagAutoModel } from "./auto.js";
import { type AutoRerankerOptions, FlagAutoReranker, type Reranker } from "./auto-reranker.js";
import { FlagModel } from "./encoder-only.js";
import { parseDevices, resolveModelDir } from "./loader.js";
import {
  AUTO_EMBEDDER_MAPPING,
  AUTO_RERANKER_MAPPING,
  EmbedderModelClass,
  mappingKey,
  RerankerModelClass,
} from "./mapping.js";
import { FlagReranker } from "./reranker.js";

/** Options for opening either kind of model; rerankers read maxLength, embedders their own names. */
export type OpenOptions = AutoModelOptions &
  Omit<AutoRerankerOptions, "modelClass"> & {
    /** Embedder or reranker class; decides the kind for models the mappings do not know. */
    modelClass?: string;
  };

export type OpenedModel = { kind: "embedding"; model: Embedder } | { kind: "rerank"; model: Reranker };

async function resolveDir(source: string, options: OpenOptions): Promise<ModelDir> {
  const onCuda = parseDevices(options.devices).some((d) => d.kind === "cuda");
  const dtype = options.dtype === undefined ? "auto" : parseDtype(options.dtype);
  const select = modelFileSelector(dtype, onCuda ? "cuda" : "cpu", options.onnxFile);
  return ModelDir.open(await resolveModelDir(source, select, options.hub));
}

/**
 * Open any embedding model the way the CLI and the server do: FlagAutoModel's mapping first
 * (or an explicit modelClass); for other models, the pooling their sentence-transformers config
 * declares or the one given. Only when none of these tells the pooling is it an error.
 */
export async function openEmbedder(source: string, options: AutoModelOptions = {}): Promise<Embedder> {
  if (options.modelClass !== undefined || AUTO_EMBEDDER_MAPPING.has(mappingKey(source))) {
    return FlagAutoModel.fromFinetuned(source, options);
  }
  const dir = await resolveDir(source, options);
  const pooling = options.poolingMethod ?? (await dir.sentenceTransformersPooling());
  if (!pooling) {
    throw new FlagserveError(
      "unknown_model",
      `"${mappingKey(source)}" is not in the model mapping and declares no pooling; give a pooling method (cls, mean) ` +
        `or a model class (${Object.values(EmbedderModelClass).join(", ")})`,
    );
  }
  const { modelClass: _mc, trustRemoteCode: _trc, ...rest } = options;
  return FlagModel.load(dir.path, { ...rest, poolingMethod: pooling });
}

/** Open a cross-encoder: FlagAutoReranker's mapping, an explicit class, or any sequence classifier. */
export async function openReranker(source: string, options: AutoRerankerOptions = {}): Promise<Reranker> {
  if (options.modelClass !== undefined || AUTO_RERANKER_MAPPING.has(mappingKey(source))) {
    return FlagAutoReranker.fromFinetuned(source, options);
  }
  const { modelClass: _mc, trustRemoteCode: _trc, ...rest } = options;
  return FlagReranker.load(source, rest);
}

const RERANKER_CLASSES = Object.values(RerankerModelClass) as string[];
const EMBEDDER_CLASSES = Object.values(EmbedderModelClass) as string[];

/**
 * Open a model of either kind. The kind comes from the mappings, then from an explicit class
 * ("encoder-only-base" is both an embedder and a reranker class: it means an embedder unless the
 * model is a sequence classifier), then from config.json (…ForSequenceClassification = reranker).
 */
export async function openModel(source: string, options: OpenOptions = {}): Promise<OpenedModel> {
  const key = mappingKey(source);
  const { modelClass, ...rest } = options;
  const rerankerOptions = (): AutoRerankerOptions => {
    const o: RerankerOptions & { modelClass?: RerankerModelClass } = {
      ...rest,
      ...(options.passageMaxLength !== undefined && options.maxLength === undefined
        ? { maxLength: options.passageMaxLength }
        : {}),
    };
    if (modelClass !== undefined && RERANKER_CLASSES.includes(modelClass))
      o.modelClass = modelClass as RerankerModelClass;
    return o;
  };
  if (AUTO_RERANKER_MAPPING.has(key))
    return { kind: "rerank", model: await openReranker(source, rerankerOptions()) };
  if (AUTO_EMBEDDER_MAPPING.has(key)) {
    return { kind: "embedding", model: await openEmbedder(source, options as AutoModelOptions) };
  }
  if (
    modelClass !== undefined &&
    RERANKER_CLASSES.includes(modelClass) &&
    !EMBEDDER_CLASSES.includes(modelClass)
  ) {
    return { kind: "rerank", model: await openReranker(source, rerankerOptions()) };
  }
  const dir = await resolveDir(source, options);
  const architectures = Array.isArray(dir.config.architectures) ? (dir.config.architectures as string[]) : [];
  if (architectures.some((a) => a.endsWith("ForSequenceClassification"))) {
    return { kind: "rerank", model: await openReranker(dir.path, rerankerOptions()) };
  }
  return { kind: "embedding", model: await openEmbedder(source, options as AutoModelOptions) };
}
