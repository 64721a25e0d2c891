import type { IclExample } from "../models/decoder-prompts.js";
import type { M3Raw } from "../models/scoring.js";
import { Float32Matrix } from "../runtime/matrix.js";
import type { Side } from "../runtime/tokenizer.js";
import type { ServingContext } from "./context.js";
import { checkFinite, invalid, RequestError } from "./errors.js";
import type { InputType, TokenIds, Want } from "./executor.js";
import {
  checkDimensions,
  checkVocabIds,
  decodeCl100k,
  finalizeEmbeddings,
  type RawInputs,
  readInputs,
  tooManyTokens,
} from "./inputs.js";
import type { Admission } from "./scheduler.js";
import type { ServedEmbedder } from "./served.js";

/** 503 while no model is loaded yet. */
export function modelsLoading(): RequestError {
  return new RequestError("not_ready", "models are still loading; retry shortly", {
    code: "model_loading",
    retryAfterSeconds: 2,
  });
}

/** The served embedding model a request names (see ModelRegistry.embedder for the lookup rules). */
export function requireEmbedder(
  ctx: ServingContext,
  name: string | undefined,
  param = "model",
): ServedEmbedder {
  if (!ctx.state.ready && ctx.registry.embedders().length === 0) throw modelsLoading();
  const model = ctx.registry.embedder(name, ctx.config.strictModels);
  if (!model) {
    const served = ctx.registry.embedders().map((m) => m.id);
    throw new RequestError(
      "not_found",
      `The model \`${name}\` does not exist or is not an embedding model served here; served: ${served.join(", ") || "none"}`,
      { code: "model_not_found", param },
    );
  }
  return model;
}

/** The input_type values requests may give (OpenAI extension, Cohere), and the side each means. */
export const INPUT_TYPES: Record<string, InputType> = {
  query: "query",
  search_query: "query",
  passage: "passage",
  document: "passage",
  search_document: "passage",
  classification: "classification",
  clustering: "clustering",
};

/** A request's input type, or the model's default when it gives none. */
export function inputTypeOf(value: string | undefined, model: ServedEmbedder): InputType {
  if (value === undefined) return model.defaultInputType;
  const side = INPUT_TYPES[value];
  if (!side) {
    throw invalid(
      `input_type must be one of ${Object.keys(INPUT_TYPES).join(", ")}; got "${value}"`,
      "input_type",
    );
  }
  return side;
}

export interface EncodeOptions {
  inputType: InputType;
  /** A literal prefix (a sentence-transformers prompt) instead of the input type's instruction. */
  prompt?: string;
  /** The task description of queries, instead of the model's default one. */
  instruction?: string;
  /** ICL models: in-context examples for queries instead of the model's default ones (null: none). */
  examples?: IclExample[] | null;
  /** Cut over-long inputs (true) or refuse them (false). */
  truncate: boolean;
  side?: Side;
  /** Token ids are cl100k_base (decoded to text first) or the model's own vocabulary. */
  idsAre: "cl100k" | "model";
  /** The request field the inputs came from, for error messages. */
  param: string;
  /** Epoch milliseconds after which the request is abandoned. */
  deadline: number;
  /** Aborted at the deadline or when the client goes away. */
  signal?: AbortSignal;
}

/**
 * Admit what a client sent (refused at once when it cannot be computed in time), then tokenize
 * it in the tokenizer pool with the request's truncation choice and the request token limit.
 * Token ids are cl100k_base (decoded to text first) or the model's own vocabulary.
 */
export async function encodeInputs(
  ctx: ServingContext,
  model: ServedEmbedder,
  raw: RawInputs,
  opts: EncodeOptions,
): Promise<{ encodings: TokenIds[]; admission: Admission }> {
  const { idsAre, param, deadline, ...call } = opts;
  const texts = "texts" in raw ? raw.texts : idsAre === "cl100k" ? decodeCl100k(raw.ids, param) : undefined;
  const estimate = texts
    ? model.estimateTokens(texts, model.extraChars(call), model.maxPromptTokens)
    : (raw as { ids: number[][] }).ids.reduce((n, seq) => n + seq.length, 0);
  if (estimate > ctx.config.limits.maxRequestTokens * 1.5) {
    throw tooManyTokens(estimate, ctx.config.limits.maxRequestTokens, param);
  }
  const inputs = texts ? texts.length : (raw as { ids: number[][] }).ids.length;
  const admission = model.admit(inputs, estimate, deadline);
  try {
    let encodings: TokenIds[];
    if (texts) {
      encodings = await model.tokenize({ ...call, texts });
    } else {
      const ids = (raw as { ids: number[][] }).ids;
      checkVocabIds(ids, model.tokenizer.vocabSize, param);
      encodings = model.fromTokenIds(ids, opts.truncate);
    }
    const total = encodings.reduce((n, e) => n + e.ids.length, 0);
    if (total > ctx.config.limits.maxRequestTokens)
      throw tooManyTokens(total, ctx.config.limits.maxRequestTokens, param);
    return { encodings, admission };
  } catch (err) {
    admission.release();
    throw err;
  }
}

export interface EmbedRequest extends Omit<EncodeOptions, "inputType"> {
  model: string | undefined;
  /** Texts or token ids as the client sent them (string | string[] | number[] | number[][]). */
  input: unknown;
  /** Which instruction to apply; the model's default input type when absent. */
  inputType?: string;
  /** Matryoshka: keep the first N dimensions, then re-normalise. */
  dimensions?: number | null;
  /** L2-normalise the vectors (default: the model's setting). */
  normalize?: boolean;
  /** Outputs beside the dense vectors (BGE-M3 heads, per-token vectors). Default dense only. */
  want?: Partial<Want>;
}

export interface Embedded {
  model: ServedEmbedder;
  encodings: TokenIds[];
  /** Raw model outputs per input (BGE-M3 heads, token vectors). */
  raws: M3Raw[];
  /** Final dense vectors (dimensions, truncateDim and normalisation applied); null when not asked. */
  vectors: Float32Matrix | null;
  /** Tokens computed, special tokens included. */
  tokens: number;
}

/**
 * The input type of a request with the query extensions: `instruction` (the task description)
 * and `examples` (ICL models) are for queries, so they make the input type "query" unless the
 * request says otherwise, which is a 400; `examples` need an ICL model.
 */
function queryExtensions(model: ServedEmbedder, req: EmbedRequest): InputType {
  const given =
    req.examples !== undefined ? "examples" : req.instruction !== undefined ? "instruction" : undefined;
  if (req.examples !== undefined && !model.icl) {
    throw invalid(
      `examples need an in-context-learning embedder (decoder-only-icl, e.g. bge-en-icl); ${model.id} is ${model.info.modelClass ?? "encoder-only-base"}`,
      "examples",
    );
  }
  if (given === undefined) return inputTypeOf(req.inputType, model);
  if (req.inputType !== undefined && INPUT_TYPES[req.inputType] !== "query") {
    throw invalid(
      `${given} applies to queries; input_type "${req.inputType}" takes none (send input_type "query")`,
      given,
    );
  }
  if (req.prompt !== undefined) throw invalid(`${given} cannot be combined with a prompt`, given);
  return "query";
}

/** A request naming "MODEL:query" embeds queries (an input_type saying otherwise is a 400). */
function queryName(ctx: ServingContext, req: EmbedRequest): EmbedRequest {
  if (!ctx.registry.queryModel(req.model)) return req;
  if (req.inputType !== undefined && INPUT_TYPES[req.inputType] !== "query") {
    throw invalid(
      `model ${req.model} embeds queries; input_type "${req.inputType}" contradicts it`,
      "input_type",
    );
  }
  return { ...req, inputType: "query" };
}

/** Embed one request: pick the model, tokenize, batch through the scheduler, finish the vectors. */
export async function embed(ctx: ServingContext, original: EmbedRequest): Promise<Embedded> {
  const req = queryName(ctx, original);
  const model = requireEmbedder(ctx, req.model);
  const raw = readInputs(req.input, req.param, ctx.config.limits.maxInputs);
  checkDimensions(req.dimensions, model.dimension);
  const want: Want = { dense: true, sparse: false, colbert: false, ...req.want };
  if ((want.sparse || want.colbert) && !model.info.m3) {
    const head = want.sparse ? "sparse" : "ColBERT";
    throw invalid(
      `${head} output needs a BGE-M3 model; ${model.id} produces dense vectors only (it has no ${head} head)`,
      "return",
    );
  }
  const { encodings, admission } = await encodeInputs(ctx, model, raw, {
    inputType: queryExtensions(model, req),
    ...(req.instruction !== undefined ? { instruction: req.instruction } : {}),
    // An empty list: no examples at all (rather than FlagEmbedding's lone "\n\n").
    ...(req.examples !== undefined ? { examples: req.examples?.length ? req.examples : null } : {}),
    ...(req.prompt !== undefined ? { prompt: req.prompt } : {}),
    truncate: req.truncate,
    ...(req.side ? { side: req.side } : {}),
    idsAre: req.idsAre,
    param: req.param,
    deadline: req.deadline,
    ...(req.signal ? { signal: req.signal } : {}),
  });
  const raws = await model.run(encodings, want, {
    deadline: req.deadline,
    admission,
    ...(req.signal ? { signal: req.signal } : {}),
  });
  checkFinite(raws.map((r) => r.dense));
  checkFinite(raws.map((r) => r.tokenWeights));
  checkFinite(raws.map((r) => r.colbert?.data));
  const vectors = want.dense
    ? finalizeEmbeddings(
        Float32Matrix.fromRows(
          raws.map((r) => r.dense as Float32Array),
          model.dimension,
        ),
        {
          dimensions: req.dimensions ?? null,
          normalize: req.normalize ?? model.info.normalize,
          truncateDim: model.info.truncateDim,
        },
      )
    : null;
  const tokens = encodings.reduce((n, e) => n + e.ids.length, 0);
  ctx.metrics.inputs.inc({ model: model.id }, encodings.length);
  ctx.metrics.tokens.inc({ model: model.id }, tokens);
  return { model, encodings, raws, vectors, tokens };
}
