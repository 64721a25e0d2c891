import { FlagserveError } from "../runtime/errors.js";
import { ModelDir, modelFileSelector, parseDtype } from "../runtime/model-dir.js";
import { type AutoModelOptions, type Embedder, FlagAutoModel } from "./auto.js";
import { FlagModel } from "./encoder-only.js";
import { parseDevices, resolveModelDir } from "./loader.js";
import { AUTO_EMBEDDER_MAPPING, EmbedderModelClass, mappingKey } from "./mapping.js";

/**
 * Open any embedding model the way the CLI and the server do: FlagAutoModel's mapping first
 * (or an explicit modelClass); for other models, the pooling their sentence-transformers config
 * declares or the one given. Only when none of these tells the pooling is it an error.
 */
export async function openEmbedder(source: string, options: AutoModelOptions = {}): Promise<Embedder> {
  if (options.modelClass !== undefined || AUTO_EMBEDDER_MAPPING.has(mappingKey(source))) {
    return FlagAutoModel.fromFinetuned(source, options);
  }
  const onCuda = parseDevices(options.devices).some((d) => d.kind === "cuda");
  const dtype = options.dtype === undefined ? "auto" : parseDtype(options.dtype);
  const path = await resolveModelDir(
    source,
    modelFileSelector(dtype, onCuda ? "cuda" : "cpu", options.onnxFile),
    options.hub,
  );
  const pooling = options.poolingMethod ?? (await (await ModelDir.open(path)).sentenceTransformersPooling());
  if (!pooling) {
    throw new FlagserveError(
      "unknown_model",
      `"${mappingKey(source)}" is not in the model mapping and declares no pooling; give a pooling method (cls, mean) ` +
        `or a model class (${Object.values(EmbedderModelClass).join(", ")})`,
    );
  }
  const { modelClass: _mc, trustRemoteCode: _trc, ...rest } = options;
  return FlagModel.load(path, { ...rest, poolingMethod: pooling });
}
