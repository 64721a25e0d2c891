import { randomUUID } from "node:crypto";
import { type Static, Type as T } from "@sinclair/typebox";
import { dot } from "../../runtime/matrix.js";
import type { Encoding } from "../../runtime/tokenizer.js";
import { type ModeWeights, m3Hybrid } from "../../serving/hybrid.js";
import type { ServedEmbedder, ServedModel, ServedReranker } from "../../serving/models.js";
import { mapYielding } from "../../serving/yielding.js";
import { finalizeEmbeddings, tooManyTokens } from "../encode.js";
import { ApiError, badRequest } from "../errors.js";
import { openaiErrors, teiErrors } from "../schemas.js";
import type { App, AppContext } from "../server.js";

const DocumentItem = T.Union([T.String(), T.Object({ text: T.String() }, { additionalProperties: true })]);

const RawScores = T.Boolean({
  description: "Extension: raw logits instead of sigmoid scores (cross-encoders)",
});
const ModeWeightsSchema = T.Array(T.Number({ minimum: 0 }), {
  minItems: 3,
  maxItems: 3,
  description: "BGE-M3 only: weights of [dense, sparse, colbert] for a hybrid score",
});

const RerankV1Request = T.Object(
  {
    model: T.Optional(T.String()),
    query: T.String(),
    documents: T.Array(DocumentItem),
    top_n: T.Optional(T.Integer()),
    return_documents: T.Optional(T.Boolean()),
    max_chunks_per_doc: T.Optional(T.Integer()),
    raw_scores: T.Optional(RawScores),
    mode_weights: T.Optional(ModeWeightsSchema),
  },
  { additionalProperties: true },
);

const RerankV2Request = T.Object(
  {
    model: T.String(),
    query: T.String(),
    documents: T.Array(T.String()),
    top_n: T.Optional(T.Integer()),
    max_tokens_per_doc: T.Optional(T.Integer()),
    raw_scores: T.Optional(RawScores),
    mode_weights: T.Optional(ModeWeightsSchema),
  },
  { additionalProperties: true },
);

const TeiRerankRequest = T.Object(
  {
    query: T.String(),
    texts: T.Array(T.String()),
    raw_scores: T.Optional(T.Boolean({ default: false })),
    return_text: T.Optional(T.Boolean({ default: false })),
    truncate: T.Optional(T.Boolean()),
    truncation_direction: T.Optional(T.String()),
    model: T.Optional(T.String()),
    mode_weights: T.Optional(ModeWeightsSchema),
  },
  { additionalProperties: true },
);

const Meta = T.Object({
  api_version: T.Object({ version: T.String() }),
  billed_units: T.Object({ search_units: T.Integer(), input_tokens: T.Integer() }),
});

const RerankV1Response = T.Object({
  id: T.String(),
  model: T.String(),
  results: T.Array(
    T.Object({
      index: T.Integer(),
      relevance_score: T.Number(),
      document: T.Optional(T.Object({ text: T.String() })),
    }),
  ),
  meta: Meta,
  usage: T.Object({ total_tokens: T.Integer() }),
});

const RerankV2Response = T.Object({
  id: T.String(),
  results: T.Array(T.Object({ index: T.Integer(), relevance_score: T.Number() })),
  meta: Meta,
});

interface RerankCall {
  model: string | undefined;
  query: string;
  documents: string[];
  rawScores: boolean;
  /** Split long documents into up to this many overlapping windows, scored by their best one. */
  maxChunks: number;
  /** Cut documents to this many tokens before anything else (Cohere v2). */
  maxTokensPerDoc: number | undefined;
  modeWeights: Static<typeof ModeWeightsSchema> | undefined;
  truncate: boolean;
  /** Epoch milliseconds after which the request is abandoned. */
  deadline: number;
}

interface Ranked {
  model: string;
  /** Score of every document, in input order. */
  scores: number[];
  tokens: number;
}

/** The model a rerank request names: a reranker, or an embedding model (cosine / M3 hybrid). */
function pickModel(ctx: AppContext, name: string | undefined): ServedModel {
  if (!ctx.state.ready && ctx.registry.models.length === 0) {
    throw new ApiError(503, "models are still loading; retry shortly", {
      code: "model_loading",
      retryAfterSeconds: 2,
    });
  }
  const found = ctx.registry.find(name);
  if (found) return found;
  const rerankers = ctx.registry.rerankers();
  const embedders = ctx.registry.embedders();
  if (name === undefined || !ctx.config.strictModels) {
    if (rerankers.length === 1) return rerankers[0] as ServedReranker;
    if (rerankers.length === 0 && embedders.length === 1) return embedders[0] as ServedEmbedder;
  }
  const served = ctx.registry.models.map((m) => m.id).join(", ") || "none";
  throw new ApiError(404, `The model \`${name}\` is not served here; served: ${served}`, {
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

async function rerankWithCrossEncoder(
  ctx: AppContext,
  model: ServedReranker,
  call: RerankCall,
): Promise<Ranked> {
  const tok = model.tokenizer;
  const maxLength = model.maxInputTokens;
  const docs =
    call.maxTokensPerDoc === undefined
      ? call.documents
      : call.documents.map((d) => capTokens(model, d, call.maxTokensPerDoc as number));
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
    throw tooManyTokens(tokens, ctx.config.limits.maxRequestTokens);
  const chunkScores = await model.score(encodings, !call.rawScores, call.deadline);
  const scores = new Array<number>(docs.length).fill(Number.NEGATIVE_INFINITY);
  chunkScores.forEach((s, k) => {
    const i = owner[k] as number;
    scores[i] = Math.max(scores[i] as number, s);
  });
  return { model: model.id, scores, tokens };
}

function capTokens(model: ServedModel, text: string, max: number): string {
  const ids = model.tokenizer.encodeWithoutSpecials(text, max);
  return ids.length < max ? text : model.tokenizer.decode(ids, false);
}

function checkPairLength(model: ServedReranker, query: string, doc: string, index: number): void {
  const n = model.tokenizer.countTokens(query) + model.tokenizer.countTokens(doc) - 1;
  if (n > model.maxInputTokens) {
    throw badRequest(
      `documents[${index}] with the query has ${n} tokens, more than the model's limit of ${model.maxInputTokens}; send it shorter or allow truncation`,
      "documents",
      "context_length_exceeded",
    );
  }
}

async function rerankWithEmbedder(ctx: AppContext, model: ServedEmbedder, call: RerankCall): Promise<Ranked> {
  const docs =
    call.maxTokensPerDoc === undefined
      ? call.documents
      : call.documents.map((d) => capTokens(model, d, call.maxTokensPerDoc as number));
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
    throw tooManyTokens(tokens, ctx.config.limits.maxRequestTokens);
  if (call.modeWeights) {
    const raws = await model.run(encodings, { dense: true, sparse: true, colbert: true }, call.deadline);
    const scores = m3Hybrid(model, encodings, raws, call.modeWeights as ModeWeights);
    return { model: model.id, scores, tokens };
  }
  const vectors = finalizeEmbeddings(await model.embed(encodings, call.deadline), {
    normalize: true,
    truncateDim: null,
  });
  const query = vectors.row(0);
  return { model: model.id, scores: d.map((_, i) => dot(query, vectors.row(i + 1))), tokens };
}

async function rerank(ctx: AppContext, call: RerankCall): Promise<Ranked> {
  const model = pickModel(ctx, call.model);
  if (call.documents.length === 0) throw badRequest("documents must not be empty", "documents", "empty");
  if (call.documents.length > ctx.config.limits.maxInputs) {
    throw badRequest(
      `documents has ${call.documents.length} items; at most ${ctx.config.limits.maxInputs} are accepted per request`,
      "documents",
    );
  }
  if (call.maxChunks < 1) throw badRequest("max_chunks_per_doc must be at least 1", "max_chunks_per_doc");
  if (call.modeWeights && !(call.modeWeights.reduce((a, b) => a + b, 0) > 0)) {
    throw badRequest("mode_weights must not all be zero", "mode_weights");
  }
  if (call.modeWeights && !(model.kind === "embedding" && model.info.m3)) {
    throw badRequest(
      `mode_weights needs a BGE-M3 model; ${model.id} cannot produce sparse or ColBERT scores`,
      "mode_weights",
    );
  }
  if (call.maxTokensPerDoc !== undefined && call.maxTokensPerDoc < 1) {
    throw badRequest("max_tokens_per_doc must be at least 1", "max_tokens_per_doc");
  }
  const ranked =
    model.kind === "rerank"
      ? await rerankWithCrossEncoder(ctx, model, call)
      : await rerankWithEmbedder(ctx, model, call);
  ctx.metrics.inputs.inc({ model: ranked.model }, call.documents.length);
  ctx.metrics.tokens.inc({ model: ranked.model }, ranked.tokens);
  return ranked;
}

/** Indices best first (ties keep input order), cut to top_n. */
function topIndices(scores: number[], topN: number | undefined): number[] {
  if (topN !== undefined && topN < 1) throw badRequest("top_n must be at least 1", "top_n");
  const order = scores
    .map((_, i) => i)
    .sort((a, b) => (scores[b] as number) - (scores[a] as number) || a - b);
  return topN === undefined ? order : order.slice(0, topN);
}

function documentText(d: Static<typeof DocumentItem>, i: number): string {
  if (typeof d === "string") return d;
  if (typeof d.text !== "string") throw badRequest(`documents[${i}] needs a text field`, "documents");
  return d.text;
}

export async function rerankRoutes(app: App, ctx: AppContext): Promise<void> {
  app.post(
    "/v1/rerank",
    {
      schema: {
        summary: "Rerank documents (Cohere v1 / Jina compatible)",
        tags: ["Rerank"],
        body: RerankV1Request,
        response: { 200: RerankV1Response, ...openaiErrors },
      },
      config: { dialect: "openai" },
    },
    async (request) => {
      const b = request.body;
      const documents = b.documents.map(documentText);
      const ranked = await rerank(ctx, {
        model: b.model,
        query: b.query,
        documents,
        rawScores: b.raw_scores ?? false,
        maxChunks: b.max_chunks_per_doc ?? 1,
        maxTokensPerDoc: undefined,
        modeWeights: b.mode_weights,
        truncate: true,
        deadline: request.deadline,
      });
      return {
        id: randomUUID(),
        model: ranked.model,
        results: topIndices(ranked.scores, b.top_n).map((index) => ({
          index,
          relevance_score: ranked.scores[index] as number,
          ...(b.return_documents ? { document: { text: documents[index] as string } } : {}),
        })),
        meta: {
          api_version: { version: "1" },
          billed_units: { search_units: 1, input_tokens: ranked.tokens },
        },
        usage: { total_tokens: ranked.tokens },
      };
    },
  );

  app.post(
    "/v2/rerank",
    {
      schema: {
        summary: "Rerank documents (Cohere v2 compatible)",
        tags: ["Rerank"],
        body: RerankV2Request,
        response: { 200: RerankV2Response, ...openaiErrors },
      },
      config: { dialect: "openai" },
    },
    async (request) => {
      const b = request.body;
      const ranked = await rerank(ctx, {
        model: b.model,
        query: b.query,
        documents: b.documents,
        rawScores: b.raw_scores ?? false,
        maxChunks: 1,
        maxTokensPerDoc: b.max_tokens_per_doc,
        modeWeights: b.mode_weights,
        truncate: true,
        deadline: request.deadline,
      });
      return {
        id: randomUUID(),
        results: topIndices(ranked.scores, b.top_n).map((index) => ({
          index,
          relevance_score: ranked.scores[index] as number,
        })),
        meta: {
          api_version: { version: "2" },
          billed_units: { search_units: 1, input_tokens: ranked.tokens },
        },
      };
    },
  );

  app.post(
    "/rerank",
    {
      schema: {
        summary: "Rerank texts (text-embeddings-inference compatible)",
        tags: ["TEI"],
        body: TeiRerankRequest,
        response: {
          200: T.Array(T.Object({ index: T.Integer(), score: T.Number(), text: T.Optional(T.String()) })),
          ...teiErrors,
        },
      },
      config: { dialect: "tei" },
    },
    async (request) => {
      const b = request.body;
      const ranked = await rerank(ctx, {
        model: b.model,
        query: b.query,
        documents: b.texts,
        rawScores: b.raw_scores ?? false,
        maxChunks: 1,
        maxTokensPerDoc: undefined,
        modeWeights: b.mode_weights,
        truncate: b.truncate ?? true,
        deadline: request.deadline,
      });
      return topIndices(ranked.scores, undefined).map((index) => ({
        index,
        score: ranked.scores[index] as number,
        ...(b.return_text ? { text: b.texts[index] as string } : {}),
      }));
    },
  );
}
