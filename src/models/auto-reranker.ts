import { FlagserveError } from "../runtime/errors.js";
import type { RerankerOptions } from "./abs-reranker.js";
import {
  FlagLLMReranker,
  LayerWiseFlagLLMReranker,
  LightWeightFlagLLMReranker,
  type LLMRerankerOptions,
} from "./llm-reranker.js";
import {
  AUTO_RERANKER_MAPPING,
  mappingKey,
  parseModelClass,
  type RerankerConfig,
  RerankerModelClass,
  supportRerankerModelList,
} from "./mapping.js";
import { FlagReranker } from "./reranker.js";

export interface AutoRerankerOptions extends RerankerOptions, LLMRerankerOptions {
  /** Pick the class yourself, for models the mapping does not know. */
  modelClass?: RerankerModelClass | `${RerankerModelClass}`;
  /** Accepted for FlagEmbedding compatibility; ONNX graphs run no repository code. */
  trustRemoteCode?: boolean;
}

/** The reranker classes this build can instantiate. */
export type Reranker = FlagReranker | FlagLLMReranker | LayerWiseFlagLLMReranker | LightWeightFlagLLMReranker;

/** FlagEmbedding's FlagAutoReranker: picks the reranker class by model name. */
export class FlagAutoReranker {
  private constructor() {
    throw new Error("FlagAutoReranker is used through FlagAutoReranker.fromFinetuned(nameOrPath)");
  }

  static resolveConfig(
    nameOrPath: string,
    options: AutoRerankerOptions = {},
  ): RerankerConfig & { name: string } {
    const name = mappingKey(nameOrPath);
    const mapped = AUTO_RERANKER_MAPPING.get(name);
    if (options.modelClass !== undefined) {
      return {
        name,
        modelClass: parseModelClass(options.modelClass, RerankerModelClass),
        trustRemoteCode: options.trustRemoteCode ?? false,
        org: mapped?.org ?? "",
      };
    }
    if (!mapped) {
      throw new FlagserveError(
        "unknown_model",
        `reranker name "${name}" is not in the model mapping; pass modelClass (one of ${Object.values(RerankerModelClass).join(", ")}) ` +
          `for other models. Known names: ${supportRerankerModelList().join(", ")}`,
      );
    }
    return { name, ...mapped, trustRemoteCode: options.trustRemoteCode ?? mapped.trustRemoteCode };
  }

  static async fromFinetuned(nameOrPath: string, options: AutoRerankerOptions = {}): Promise<Reranker> {
    const config = FlagAutoReranker.resolveConfig(nameOrPath, options);
    const { modelClass: _mc, trustRemoteCode: _trc, ...rest } = options;
    const hubRepo = config.org ? `${config.org}/${config.name}` : undefined;
    switch (config.modelClass) {
      case "encoder-only-base":
        return FlagReranker.load(nameOrPath, rest, hubRepo);
      case "decoder-only-base":
        return FlagLLMReranker.load(nameOrPath, rest, hubRepo);
      case "decoder-only-layerwise":
        return LayerWiseFlagLLMReranker.load(nameOrPath, rest, hubRepo);
      case "decoder-only-lightweight":
        return LightWeightFlagLLMReranker.load(nameOrPath, rest, hubRepo);
    }
  }
}
