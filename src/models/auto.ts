import { FlagserveError } from "../runtime/errors.js";
import {
  FlagICLModel,
  FlagLLMModel,
  FlagPseudoMoEModel,
  type ICLModelOptions,
  type PseudoMoEOptions,
} from "./decoder-only.js";
import { FlagModel, type FlagModelOptions } from "./encoder-only.js";
import { BGEM3FlagModel, type M3Options } from "./m3.js";
import {
  AUTO_EMBEDDER_MAPPING,
  type EmbedderConfig,
  EmbedderModelClass,
  mappingKey,
  parseModelClass,
  supportModelList,
} from "./mapping.js";
import type { Pooling } from "./pooling.js";

export interface AutoModelOptions extends FlagModelOptions, M3Options, ICLModelOptions, PseudoMoEOptions {
  /** Pick the class yourself, for models the mapping does not know. */
  modelClass?: EmbedderModelClass | `${EmbedderModelClass}`;
  /** Accepted for FlagEmbedding compatibility; ONNX graphs run no repository code, so it changes nothing. */
  trustRemoteCode?: boolean;
}

/** The embedder classes this build can instantiate (the decoder-only ones are FlagModels too). */
export type Embedder = FlagModel | BGEM3FlagModel;

const DEFAULT_POOLING: Record<EmbedderModelClass, Pooling> = {
  "encoder-only-base": "cls",
  "encoder-only-m3": "cls",
  "decoder-only-base": "last_token",
  "decoder-only-icl": "last_token",
  "decoder-only-pseudo_moe": "last_token",
};

/** FlagEmbedding's FlagAutoModel: picks the embedder class, pooling and instruction format by model name. */
export class FlagAutoModel {
  private constructor() {
    throw new Error("FlagAutoModel is used through FlagAutoModel.fromFinetuned(nameOrPath)");
  }

  /** Resolve what class, pooling and instruction format a model gets, without loading it. */
  static resolveConfig(
    nameOrPath: string,
    options: AutoModelOptions = {},
  ): EmbedderConfig & { name: string } {
    const name = mappingKey(nameOrPath);
    if (options.modelClass !== undefined) {
      const modelClass = parseModelClass(options.modelClass, EmbedderModelClass);
      return {
        name,
        modelClass,
        poolingMethod: options.poolingMethod ?? DEFAULT_POOLING[modelClass],
        queryInstructionFormat: options.queryInstructionFormat ?? "{}{}",
        trustRemoteCode: options.trustRemoteCode ?? false,
        org: AUTO_EMBEDDER_MAPPING.get(name)?.org ?? "",
      };
    }
    const mapped = AUTO_EMBEDDER_MAPPING.get(name);
    if (!mapped) {
      throw new FlagserveError(
        "unknown_model",
        `model name "${name}" is not in the model mapping; pass modelClass (one of ${Object.values(EmbedderModelClass).join(", ")}) ` +
          `for other models. Known names: ${supportModelList().join(", ")}`,
      );
    }
    return {
      name,
      ...mapped,
      poolingMethod: options.poolingMethod ?? mapped.poolingMethod,
      queryInstructionFormat: options.queryInstructionFormat ?? mapped.queryInstructionFormat,
      trustRemoteCode: options.trustRemoteCode ?? mapped.trustRemoteCode,
    };
  }

  static async fromFinetuned(nameOrPath: string, options: AutoModelOptions = {}): Promise<Embedder> {
    const config = FlagAutoModel.resolveConfig(nameOrPath, options);
    const { modelClass: _mc, trustRemoteCode: _trc, ...rest } = options;
    const loadOptions: FlagModelOptions & M3Options & ICLModelOptions & PseudoMoEOptions = {
      ...rest,
      poolingMethod: config.poolingMethod,
      queryInstructionFormat: config.queryInstructionFormat,
    };
    const hubRepo = config.org ? `${config.org}/${config.name}` : undefined;
    switch (config.modelClass) {
      case "encoder-only-base":
        return FlagModel.load(nameOrPath, loadOptions, hubRepo);
      case "encoder-only-m3":
        return BGEM3FlagModel.load(nameOrPath, loadOptions, hubRepo);
      case "decoder-only-base":
        return FlagLLMModel.load(nameOrPath, loadOptions, hubRepo);
      case "decoder-only-icl":
        return FlagICLModel.load(nameOrPath, loadOptions, hubRepo);
      case "decoder-only-pseudo_moe":
        return FlagPseudoMoEModel.load(nameOrPath, loadOptions, hubRepo);
    }
  }
}
