import type { M3Raw } from "../models/scoring.js";
import { Float32Matrix } from "../runtime/matrix.js";
import type { Encoding, Side } from "../runtime/tokenizer.js";
import type { ServingContext } from "./context.js";
import { checkFinite, invalid, RequestError } from "./errors.js";
import type { InputType, Want } from "./executor.js";
import {
  checkDimensions,
  checkVocabIds,
  decodeCl100k,
  finalizeEmbeddings,
  type RawInputs,
  readInputs,
  tooManyTokens,
} from "./inputs.js";
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

/** A request's input type, or the model's default when it gives none. */
export function inputTypeOf(value: string | undefined, model: ServedEmbedder): InputType {
  if (value === undefined) return model.defaultInputType;
  return value === "query" ? "query" : "passage";
}

export interface EncodeOptions {
  inputType: InputType;
  /** A literal prefix (a sentence-transformers prompt) instead of the input type's instruction. */
  prompt?: string;
  /** Cut over-long inputs (true) or refuse them (false). */
  truncate: boolean;
  side?: Side;
  /** Token ids are cl100k_base (decoded to text first) or the model's own vocabulary. */
  idsAre: "cl100k" | "model";
  /** The request field the inputs came from, for error messages. */
  param: string;
  deadline: number;
}

/** Tokenize what a client sent, with the request's truncation choice and the request token limit. */
export async function encodeInputs(
  ctx: ServingContext,
  model: ServedEmbedder,
  raw: RawInputs,
  opts: EncodeOptions,
): Promise<Encoding[]> {
  const { idsAre, param, ...call } = opts;
  let encodings: Encoding[];
  if ("texts" in raw) {
    encodings = await model.tokenize({ ...call, texts: raw.texts });
  } else if (idsAre === "cl100k") {
    encodings = await model.tokenize({ ...call, texts: decodeCl100k(raw.ids, param) });
  } else {
    checkVocabIds(raw.ids, model.tokenizer.vocabSize, param);
    encodings = model.fromTokenIds(raw.ids, opts.truncate);
  }
  const total = encodings.reduce((n, e) => n + e.ids.length, 0);
  if (total > ctx.config.limits.maxRequestTokens)
    throw tooManyTokens(total, ctx.config.limits.maxRequestTokens, param);
  return encodings;
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
  encodings: Encoding[];
  /** Raw model outputs per input (BGE-M3 heads, token vectors). */
  raws: M3Raw[];
  /** Final dense vectors (dimensions, truncateDim and normalisation applied); null when not asked. */
  vectors: Float32Matrix | null;
  /** Tokens computed, special tokens included. */
  tokens: number;
}

/** Embed one request: pick the model, tokenize, batch through the scheduler, finish the vectors. */
export async function embed(ctx: ServingContext, req: EmbedRequest): Promise<Embedded> {
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
  const encodings = await encodeInputs(ctx, model, raw, {
    inputType: inputTypeOf(req.inputType, model),
    ...(req.prompt !== undefined ? { prompt: req.prompt } : {}),
    truncate: req.truncate,
    ...(req.side ? { side: req.side } : {}),
    idsAre: req.idsAre,
    param: req.param,
    deadline: req.deadline,
  });
  const raws = await model.run(encodings, want, req.deadline);
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
