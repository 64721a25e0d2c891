// The library: FlagEmbedding's classes on ONNX Runtime.

export { startServer } from "./api/start.js";
export type { AbsEmbedder, EmbedderOptions, EncodeOptions } from "./models/abs-embedder.js";
export { type AutoModelOptions, type Embedder, FlagAutoModel } from "./models/auto.js";
export { FlagModel, type FlagModelOptions } from "./models/encoder-only.js";
export { formatInstruction } from "./models/instruction.js";
export type { RuntimeOptions } from "./models/loader.js";
export {
  AUTO_EMBEDDER_MAPPING,
  AUTO_RERANKER_MAPPING,
  EmbedderModelClass,
  RerankerModelClass,
  supportModelList,
  supportNativeBgeModelList,
  supportRerankerModelList,
} from "./models/mapping.js";
export { openEmbedder } from "./models/open.js";
export { type ErrorKind, FlagserveError } from "./runtime/errors.js";
export type { HubOptions } from "./runtime/hub.js";
export { Float32Matrix } from "./runtime/matrix.js";
export type { Dtype } from "./runtime/model-dir.js";
export { TextTokenizer } from "./runtime/tokenizer.js";
