// The library: FlagEmbedding's classes on ONNX Runtime, imported as Python users import them from
// FlagEmbedding. The HTTP server is the separate entry point "flagserve/server".

export {
  AbsEmbedder,
  type EmbedderOptions,
  type EncodeOptions,
  type ResolvedEmbedderOptions,
} from "./models/abs-embedder.js";
export {
  AbsReranker,
  type RerankerOptions,
  type ScoreOptions,
  type SentencePair,
} from "./models/abs-reranker.js";
export { type AutoModelOptions, type Embedder, FlagAutoModel } from "./models/auto.js";
export { type AutoRerankerOptions, FlagAutoReranker, type Reranker } from "./models/auto-reranker.js";
export {
  type DecoderEmbedder,
  FlagICLModel,
  FlagLLMModel,
  FlagPseudoMoEModel,
  type ICLModelOptions,
  type LLMEncodeOptions,
  type PseudoMoEEncodeOptions,
  type PseudoMoEOptions,
} from "./models/decoder-only.js";
export { type IclExample, iclPrefix } from "./models/decoder-prompts.js";
export { FlagModel, type FlagModelOptions } from "./models/encoder-only.js";
export { formatInstruction } from "./models/instruction.js";
export {
  FlagLLMReranker,
  LayerWiseFlagLLMReranker,
  LightWeightFlagLLMReranker,
  type LLMReranker,
  type LLMRerankerOptions,
  type LLMScoreOptions,
} from "./models/llm-reranker.js";
export type { RuntimeOptions } from "./models/loader.js";
export {
  BGEM3FlagModel,
  type M3EncodeOptions,
  type M3Options,
  type M3Output,
  type M3PairScores,
  type M3ScoreOptions,
  type M3Scores,
  type M3Single,
} from "./models/m3.js";
export {
  AUTO_EMBEDDER_MAPPING,
  AUTO_RERANKER_MAPPING,
  EmbedderModelClass,
  RerankerModelClass,
  supportModelList,
  supportNativeBgeModelList,
  supportRerankerModelList,
} from "./models/mapping.js";
export { openEmbedder, openModel, openReranker } from "./models/open.js";
export { FlagReranker } from "./models/reranker.js";
export { type LexicalWeights, sigmoid } from "./models/scoring.js";
export { type ErrorKind, FlagserveError } from "./runtime/errors.js";
export type { HubOptions } from "./runtime/hub.js";
export { Float32Matrix } from "./runtime/matrix.js";
export type { Dtype } from "./runtime/model-dir.js";
export { TextTokenizer } from "./runtime/tokenizer.js";
