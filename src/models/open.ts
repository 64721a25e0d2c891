import { FlagserveError } from "../runtime/errors.js";
import { ModelDir, modelFileSelector, parseDtype } from "../runtime/model-dir.js";
import type { RerankerOptions } from "./abs-reranker.js";
import { type AutoModelOptions, type Embedder, FlagAutoModel } from "./auto.js";
import { type AutoRerankerOptions, FlagAutoReranker, type Reranker } from "./auto-reranker.js";
import { readFlagserveJson } from "./decoder-only.js";
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

async function resolveDir(
  source: string,
  options: Pick<OpenOptions, "devices" | "dtype" | "onnxFile" | "hub">,
): Promise<ModelDir> {
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
  const exported = exportedClass(dir, "embedding", EMBEDDER_CLASSES);
  if (exported) {
    return FlagAutoModel.fromFinetuned(dir.path, {
      ...options,
      modelClass: exported.modelClass as EmbedderModelClass,
      // The export recorded the mapping's format for its model (FlagAutoModel would use "{}{}").
      ...(options.queryInstructionFormat === undefined && exported.queryFormat !== undefined
        ? { queryInstructionFormat: exported.queryFormat }
        : {}),
    });
  }
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
  const dir = await resolveDir(source, options);
  const exported = exportedClass(dir, "rerank", RERANKER_CLASSES);
  if (exported) {
    return FlagAutoReranker.fromFinetuned(dir.path, {
      ...options,
      modelClass: exported.modelClass as RerankerModelClass,
    });
  }
  const { modelClass: _mc, trustRemoteCode: _trc, ...rest } = options;
  return FlagReranker.load(dir.path, rest);
}

const RERANKER_CLASSES = Object.values(RerankerModelClass) as string[];
const EMBEDDER_CLASSES = Object.values(EmbedderModelClass) as string[];

/**
 * The kind and class a directory's flagserve.json (written by scripts/export) declares, so an
 * exported directory serves with no flags; undefined when it has none (or another kind's).
 */
function exportedClass(
  dir: ModelDir,
  kind?: "embedding" | "rerank",
  classes?: string[],
): { kind: "embedding" | "rerank"; modelClass: string; queryFormat: string | undefined } | undefined {
  const meta = readFlagserveJson(dir.path);
  const k = meta.kind;
  const modelClass = meta.model_class;
  if ((k !== "embedding" && k !== "rerank") || typeof modelClass !== "string") return undefined;
  if (kind !== undefined && k !== kind) return undefined;
  if (classes && !classes.includes(modelClass)) return undefined;
  const queryFormat =
    typeof meta.query_instruction_format === "string" ? meta.query_instruction_format : undefined;
  return { kind: k, modelClass, queryFormat };
}

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
  const exported = exportedClass(dir);
  if (exported?.kind === "rerank" && modelClass === undefined) {
    return { kind: "rerank", model: await openReranker(dir.path, rerankerOptions()) };
  }
  if (exported?.kind === "embedding") {
    return { kind: "embedding", model: await openEmbedder(dir.path, options as AutoModelOptions) };
  }
  const architectures = Array.isArray(dir.config.architectures) ? (dir.config.architectures as string[]) : [];
  if (architectures.some((a) => a.endsWith("ForSequenceClassification"))) {
    return { kind: "rerank", model: await openReranker(dir.path, rerankerOptions()) };
  }
  return { kind: "embedding", model: await openEmbedder(source, options as AutoModelOptions) };
}
