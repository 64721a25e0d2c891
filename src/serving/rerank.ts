import { dot } from "../runtime/matrix.js";
import type { ServingContext } from "./context.js";
import { modelsLoading } from "./embed.js";
import { checkFinite, invalid, RequestError } from "./errors.js";
import type { TokenIds } from "./executor.js";
import { type ModeWeights, m3Hybrid } from "./hybrid.js";
import { finalizeEmbeddings, tooManyTokens } from "./inputs.js";
import type { LLMRerankOptions, ServedEmbedder, ServedModel, ServedReranker } from "./served.js";

export type { ModeWeights };

/** One rerank request, whatever dialect it came in. */
export interface RerankRequest {
  model: string | undefined;
  query: string;
  documents: string[];
  /** Raw logits instead of sigmoid scores (cross-encoders). */
  rawScores: boolean;
  /** Split long documents into up to this many overlapping windows, scored by their best one. */
  maxChunks: number;
  /** Cut documents to this many tokens before anything else (Cohere v2). */
  maxTokensPerDoc: number | undefined;
  /** BGE-M3 hybrid weights of [dense, sparse, colbert]. */
  modeWeights: ModeWeights | undefined;
  /** Cut over-long pairs (true) or refuse them (false). */
  truncate: boolean;
  /** Keep the best N (all when undefined). */
  topN: number | undefined;
  /** LLM rerankers: the layer to score with (layerwise / lightweight) and the compression (lightweight). */
  llm?: LLMRerankOptions;
  /** Epoch milliseconds after which the request is abandoned. */
  deadline: number;
  /** Aborted at the deadline or when the client goes away. */
  signal?: AbortSignal;
}

export interface Ranked {
  model: string;
  /** Score of every document, in input order. */
  scores: number[];
  /** Document indices best first (ties keep input order), cut to top_n. */
  order: number[];
  tokens: number;
}

/** The model a rerank request names: a reranker, or an embedding model (cosine / M3 hybrid). */
function pickModel(ctx: ServingContext, name: string | undefined): ServedModel {
  if (!ctx.state.ready && ctx.registry.models.length === 0) throw modelsLoading();
  const found = ctx.registry.find(name);
  if (found) return found;
  const rerankers = ctx.registry.rerankers();
  const embedders = ctx.registry.embedders();
  if (name === undefined || !ctx.config.strictModels) {
    if (rerankers.length === 1) return rerankers[0] as ServedReranker;
    if (rerankers.length === 0 && embedders.length === 1) return embedders[0] as ServedEmbedder;
  }
  const served = ctx.registry.models.map((m) => m.id).join(", ") || "none";
  throw new RequestError("not_found", `The model \`${name}\` is not served here; served: ${served}`, {
    code: "model_not_found",
    param: "model",
  });
}

async function withCrossEncoder(
  ctx: ServingContext,
  model: ServedReranker,
  call: RerankRequest,
): Promise<{ scores: number[]; tokens: number }> {
  const docs = call.documents;
  // LLM rerankers: which layer's score, and the compression its batch must share.
  const plan = model.llmPlan(call.llm ?? {});
  const prompt = model.info.llm?.prompt.length ?? 0;
  const cap = (model.maxInputTokens + prompt) * call.maxChunks;
  const estimate = model.estimateTokens(docs, call.query.length + prompt, cap);
  const admission = model.admit(docs.length, estimate, call.deadline, plan);
  let encoded: Awaited<ReturnType<ServedReranker["encodePairs"]>>;
  try {
    encoded = await model.encodePairs({
      query: call.query,
      documents: docs,
      truncate: call.truncate,
      maxChunks: call.maxChunks,
      ...(call.maxTokensPerDoc !== undefined ? { maxTokensPerDoc: call.maxTokensPerDoc } : {}),
      ...(call.signal ? { signal: call.signal } : {}),
    });
  } catch (err) {
    admission.release();
    throw err;
  }
  const { encodings, owners, extras } = encoded;
  const tokens = encodings.reduce((n, e) => n + e.ids.length, 0);
  if (tokens > ctx.config.limits.maxRequestTokens) {
    admission.release();
    throw tooManyTokens(tokens, ctx.config.limits.maxRequestTokens, "documents");
  }
  const chunkScores = await model.score(
    encodings,
    !call.rawScores,
    {
      deadline: call.deadline,
      admission,
      ...(call.signal ? { signal: call.signal } : {}),
    },
    plan ? { plan, extras } : undefined,
  );
  // A document split into windows scores as its best window.
  const scores = new Array<number>(docs.length).fill(Number.NEGATIVE_INFINITY);
  chunkScores.forEach((s, k) => {
    const i = owners[k] as number;
    scores[i] = Math.max(scores[i] as number, s);
  });
  return { scores, tokens };
}

async function withEmbedder(
  ctx: ServingContext,
  model: ServedEmbedder,
  call: RerankRequest,
): Promise<{ scores: number[]; tokens: number }> {
  const docs = call.documents;
  const estimate = model.estimateTokens([call.query, ...docs]);
  const admission = model.admit(docs.length + 1, estimate, call.deadline);
  const signal = call.signal ? { signal: call.signal } : {};
  let encodings: TokenIds[];
  try {
    const [q] = await model.tokenize({
      texts: [call.query],
      inputType: "query",
      truncate: call.truncate,
      ...signal,
    });
    const d = await model.tokenize({
      texts: docs,
      inputType: "passage",
      truncate: call.truncate,
      // Cohere v2's max_tokens_per_doc: documents cut to that many tokens first.
      ...(call.maxTokensPerDoc !== undefined ? { maxTokens: call.maxTokensPerDoc } : {}),
      ...signal,
    });
    encodings = [q as TokenIds, ...d];
  } catch (err) {
    admission.release();
    throw err;
  }
  const tokens = encodings.reduce((n, e) => n + e.ids.length, 0);
  if (tokens > ctx.config.limits.maxRequestTokens) {
    admission.release();
    throw tooManyTokens(tokens, ctx.config.limits.maxRequestTokens, "documents");
  }
  const opts = { deadline: call.deadline, admission, ...signal };
  if (call.modeWeights) {
    const raws = await model.run(encodings, { dense: true, sparse: true, colbert: true }, opts);
    return { scores: m3Hybrid(model, encodings, raws, call.modeWeights), tokens };
  }
  const vectors = finalizeEmbeddings(await model.embed(encodings, opts), {
    normalize: true,
    truncateDim: null,
  });
  const query = vectors.row(0);
  return { scores: docs.map((_, i) => dot(query, vectors.row(i + 1))), tokens };
}

/** Indices best first (ties keep input order), cut to topN. */
function rankOrder(scores: number[], topN: number | undefined): number[] {
  const order = scores
    .map((_, i) => i)
    .sort((a, b) => (scores[b] as number) - (scores[a] as number) || a - b);
  return topN === undefined ? order : order.slice(0, topN);
}

/**
 * Score documents against a query with a cross-encoder, or with an embedding model (cosine, or
 * BGE-M3's hybrid score), and rank them.
 */
export async function rerank(ctx: ServingContext, call: RerankRequest): Promise<Ranked> {
  const model = pickModel(ctx, call.model);
  if (call.documents.length === 0) throw invalid("documents must not be empty", "documents", "empty");
  if (call.documents.length > ctx.config.limits.maxInputs) {
    throw invalid(
      `documents has ${call.documents.length} items; at most ${ctx.config.limits.maxInputs} are accepted per request`,
      "documents",
    );
  }
  if (call.topN !== undefined && call.topN < 1) throw invalid("top_n must be at least 1", "top_n");
  const maxChunks = ctx.config.limits.maxChunksPerDoc;
  if (call.maxChunks < 1 || call.maxChunks > maxChunks) {
    throw invalid(`max_chunks_per_doc must be between 1 and ${maxChunks}`, "max_chunks_per_doc");
  }
  if (call.modeWeights && !(call.modeWeights.reduce((a, b) => a + b, 0) > 0)) {
    throw invalid("mode_weights must not all be zero", "mode_weights");
  }
  if (call.modeWeights && !(model.kind === "embedding" && model.info.m3)) {
    throw invalid(
      `mode_weights needs a BGE-M3 model; ${model.id} cannot produce sparse or ColBERT scores`,
      "mode_weights",
    );
  }
  if (call.maxTokensPerDoc !== undefined && call.maxTokensPerDoc < 1) {
    throw invalid("max_tokens_per_doc must be at least 1", "max_tokens_per_doc");
  }
  if (model.kind === "embedding" && call.llm) {
    const given = (["cutoffLayers", "compressRatio", "compressLayers"] as const).find(
      (k) => call.llm?.[k] !== undefined,
    );
    if (given) {
      const param = {
        cutoffLayers: "cutoff_layers",
        compressRatio: "compress_ratio",
        compressLayers: "compress_layers",
      }[given];
      throw invalid(`${param} needs an LLM reranker; ${model.id} is an embedding model`, param);
    }
  }
  const { scores, tokens } =
    model.kind === "rerank" ? await withCrossEncoder(ctx, model, call) : await withEmbedder(ctx, model, call);
  checkFinite([...scores], "document");
  ctx.metrics.inputs.inc({ model: model.id }, call.documents.length);
  ctx.metrics.tokens.inc({ model: model.id }, tokens);
  return { model: model.id, scores, order: rankOrder(scores, call.topN), tokens };
}
