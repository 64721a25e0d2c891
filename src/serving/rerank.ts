import { dot } from "../runtime/matrix.js";
import type { Encoding } from "../runtime/tokenizer.js";
import type { ServingContext } from "./context.js";
import { modelsLoading } from "./embed.js";
import { checkFinite, invalid, RequestError } from "./errors.js";
import { type ModeWeights, m3Hybrid } from "./hybrid.js";
import { finalizeEmbeddings, tooManyTokens } from "./inputs.js";
import type { ServedEmbedder, ServedModel, ServedReranker } from "./served.js";
import { mapYielding } from "./yielding.js";

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
  /** Epoch milliseconds after which the request is abandoned. */
  deadline: number;
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

/** Windows of `size` ids stepping by three quarters of a window, at most `max` of them. */
function windows(ids: number[], size: number, max: number): number[][] {
  if (ids.length <= size || max <= 1) return [ids];
  const stride = Math.max(1, Math.floor((size * 3) / 4));
  const out: number[][] = [];
  for (let start = 0; out.length < max; start += stride) {
    out.push(ids.slice(start, start + size));
    if (start + size >= ids.length) break;
  }
  return out;
}

function capTokens(model: ServedModel, text: string, max: number): string {
  const ids = model.tokenizer.encodeWithoutSpecials(text, max);
  return ids.length < max ? text : model.tokenizer.decode(ids, false);
}

function checkPairLength(model: ServedReranker, query: string, doc: string, index: number): void {
  const n = model.tokenizer.countTokens(query) + model.tokenizer.countTokens(doc) - 1;
  if (n > model.maxInputTokens) {
    throw invalid(
      `documents[${index}] with the query has ${n} tokens, more than the model's limit of ${model.maxInputTokens}; send it shorter or allow truncation`,
      "documents",
      "context_length_exceeded",
    );
  }
}

async function withCrossEncoder(
  ctx: ServingContext,
  model: ServedReranker,
  call: RerankRequest,
  docs: string[],
): Promise<{ scores: number[]; tokens: number }> {
  const tok = model.tokenizer;
  const maxLength = model.maxInputTokens;
  // Every window gets the query budget FlagEmbedding gives it; the passage fills the rest.
  const q =
    call.maxChunks > 1
      ? tok.encodeWithoutSpecials(model.withQueryInstruction(call.query), Math.floor((maxLength * 3) / 4))
      : [];
  const room = Math.max(1, maxLength - q.length - tok.numSpecialTokens(true));
  model.admit(docs.length);
  const perDoc = await mapYielding(
    docs,
    (doc, i): Encoding[] => {
      if (call.maxChunks > 1) {
        const p = tok.encodeWithoutSpecials(model.withPassageInstruction(doc), room * call.maxChunks);
        return windows(p, room, call.maxChunks).map((w) => tok.withSpecialTokens(q, w));
      }
      if (!call.truncate) checkPairLength(model, call.query, doc, i);
      return [model.encodePair(call.query, doc)];
    },
    call.deadline,
  );
  const encodings = perDoc.flat();
  const owner = perDoc.flatMap((chunks, i) => chunks.map(() => i));
  const tokens = encodings.reduce((n, e) => n + e.ids.length, 0);
  if (tokens > ctx.config.limits.maxRequestTokens)
    throw tooManyTokens(tokens, ctx.config.limits.maxRequestTokens, "documents");
  const chunkScores = await model.score(encodings, !call.rawScores, call.deadline);
  const scores = new Array<number>(docs.length).fill(Number.NEGATIVE_INFINITY);
  chunkScores.forEach((s, k) => {
    const i = owner[k] as number;
    scores[i] = Math.max(scores[i] as number, s);
  });
  return { scores, tokens };
}

async function withEmbedder(
  ctx: ServingContext,
  model: ServedEmbedder,
  call: RerankRequest,
  docs: string[],
): Promise<{ scores: number[]; tokens: number }> {
  const [q] = await model.tokenize({
    texts: [call.query],
    inputType: "query",
    truncate: call.truncate,
    deadline: call.deadline,
  });
  const d = await model.tokenize({
    texts: docs,
    inputType: "passage",
    truncate: call.truncate,
    deadline: call.deadline,
  });
  const encodings = [q as Encoding, ...d];
  const tokens = encodings.reduce((n, e) => n + e.ids.length, 0);
  if (tokens > ctx.config.limits.maxRequestTokens)
    throw tooManyTokens(tokens, ctx.config.limits.maxRequestTokens, "documents");
  if (call.modeWeights) {
    const raws = await model.run(encodings, { dense: true, sparse: true, colbert: true }, call.deadline);
    return { scores: m3Hybrid(model, encodings, raws, call.modeWeights), tokens };
  }
  const vectors = finalizeEmbeddings(await model.embed(encodings, call.deadline), {
    normalize: true,
    truncateDim: null,
  });
  const query = vectors.row(0);
  return { scores: d.map((_, i) => dot(query, vectors.row(i + 1))), tokens };
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
  if (call.maxChunks < 1) throw invalid("max_chunks_per_doc must be at least 1", "max_chunks_per_doc");
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
  const docs =
    call.maxTokensPerDoc === undefined
      ? call.documents
      : call.documents.map((d) => capTokens(model, d, call.maxTokensPerDoc as number));
  const { scores, tokens } =
    model.kind === "rerank"
      ? await withCrossEncoder(ctx, model, call, docs)
      : await withEmbedder(ctx, model, call, docs);
  checkFinite([...scores], "document");
  ctx.metrics.inputs.inc({ model: model.id }, call.documents.length);
  ctx.metrics.tokens.inc({ model: model.id }, tokens);
  return { model: model.id, scores, order: rankOrder(scores, call.topN), tokens };
}
