import { randomUUID } from "node:crypto";
import { type Static, Type as T } from "@sinclair/typebox";
import { type ModeWeights, rerank } from "../../serving/rerank.js";
import type { App, AppContext } from "../context.js";
import { badRequest } from "../errors.js";
import { errorResponses, TruncationDirection } from "../schemas.js";

const DocumentItem = T.Union([T.String(), T.Object({ text: T.String() }, { additionalProperties: true })]);

const RawScores = T.Boolean({
  description: "Extension: raw logits instead of sigmoid scores (cross-encoders)",
});
const ModeWeightsSchema = T.Array(T.Number({ minimum: 0 }), {
  minItems: 3,
  maxItems: 3,
  // "Not all zero" would be `not: {enum: [[0, 0, 0]]}`, which schema fuzzers cannot generate for.
  description: "BGE-M3 only: weights of [dense, sparse, colbert] for a hybrid score; not all zero (a 400)",
});
const TopN = T.Integer({ minimum: 1, description: "Return the best N (default: all)" });

/** LLM rerankers' options (FlagEmbedding's names); a model or graph that cannot honour one: a 400. */
const LlmOptions = {
  cutoff_layers: T.Optional(
    T.Array(T.Integer({ minimum: 0 }), {
      minItems: 1,
      maxItems: 1,
      description:
        "Extension (layerwise / lightweight LLM rerankers): the layer whose score ranks, as a one-element list; /v1/models lists the available ones",
    }),
  ),
  compress_ratio: T.Optional(
    T.Integer({
      minimum: 1,
      description: "Extension (lightweight LLM rerankers): passage tokens averaged in groups of N (1: none)",
    }),
  ),
  compress_layers: T.Optional(
    T.Array(T.Integer({ minimum: 0 }), {
      maxItems: 256,
      description: "Extension (lightweight LLM rerankers): layers the passage is compressed before",
    }),
  ),
};

/** The LLM reranker options of a body, as the service takes them. */
function llmOptions(b: { cutoff_layers?: number[]; compress_ratio?: number; compress_layers?: number[] }) {
  return {
    cutoffLayers: b.cutoff_layers,
    compressRatio: b.compress_ratio,
    compressLayers: b.compress_layers,
  };
}

/** The rerank bodies with this server's limits on documents and windows. */
function requestSchemas(maxInputs: number, maxChunksPerDoc: number) {
  const docs = { minItems: 1, maxItems: maxInputs };
  const v1 = T.Object(
    {
      model: T.Optional(T.String()),
      query: T.String(),
      documents: T.Array(DocumentItem, docs),
      top_n: T.Optional(TopN),
      return_documents: T.Optional(T.Boolean()),
      max_chunks_per_doc: T.Optional(
        T.Integer({
          minimum: 1,
          maximum: maxChunksPerDoc,
          description: "Split long documents into up to N overlapping windows scored by their best one",
        }),
      ),
      raw_scores: T.Optional(RawScores),
      mode_weights: T.Optional(ModeWeightsSchema),
      ...LlmOptions,
    },
    { additionalProperties: true },
  );
  const v2 = T.Object(
    {
      model: T.String(),
      query: T.String(),
      documents: T.Array(T.String(), docs),
      top_n: T.Optional(TopN),
      max_tokens_per_doc: T.Optional(T.Integer({ minimum: 1 })),
      raw_scores: T.Optional(RawScores),
      mode_weights: T.Optional(ModeWeightsSchema),
      ...LlmOptions,
    },
    { additionalProperties: true },
  );
  const tei = T.Object(
    {
      query: T.String(),
      texts: T.Array(T.String(), docs),
      raw_scores: T.Optional(T.Boolean({ default: false })),
      return_text: T.Optional(T.Boolean({ default: false })),
      truncate: T.Optional(T.Boolean()),
      truncation_direction: T.Optional(TruncationDirection),
      model: T.Optional(T.String()),
      mode_weights: T.Optional(ModeWeightsSchema),
      ...LlmOptions,
    },
    { additionalProperties: true },
  );
  return { v1, v2, tei };
}

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

function documentText(d: Static<typeof DocumentItem>, i: number): string {
  if (typeof d === "string") return d;
  if (typeof d.text !== "string") throw badRequest(`documents[${i}] needs a text field`, "documents");
  return d.text;
}

export async function rerankRoutes(app: App, ctx: AppContext): Promise<void> {
  const body = requestSchemas(ctx.config.limits.maxInputs, ctx.config.limits.maxChunksPerDoc);
  // Unknown model (404), a full queue (429); TEI: empty texts (400), too long without truncation (413).
  const openaiErrors = errorResponses("openai", [404, 429]);
  const teiErrors = errorResponses("tei", [400, 404, 413, 429]);
  app.post(
    "/v1/rerank",
    {
      schema: {
        summary: "Rerank documents (Cohere v1 / Jina compatible)",
        tags: ["Rerank"],
        body: body.v1,
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
        modeWeights: b.mode_weights as ModeWeights | undefined,
        truncate: true,
        topN: b.top_n,
        llm: llmOptions(b),
        deadline: request.deadline,
        signal: request.cancellation,
      });
      return {
        id: randomUUID(),
        model: ranked.model,
        results: ranked.order.map((index) => ({
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
        body: body.v2,
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
        modeWeights: b.mode_weights as ModeWeights | undefined,
        truncate: true,
        topN: b.top_n,
        llm: llmOptions(b),
        deadline: request.deadline,
        signal: request.cancellation,
      });
      return {
        id: randomUUID(),
        results: ranked.order.map((index) => ({
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
        body: body.tei,
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
        modeWeights: b.mode_weights as ModeWeights | undefined,
        truncate: b.truncate ?? true,
        topN: undefined,
        llm: llmOptions(b),
        deadline: request.deadline,
        signal: request.cancellation,
      });
      return ranked.order.map((index) => ({
        index,
        score: ranked.scores[index] as number,
        ...(b.return_text ? { text: b.texts[index] as string } : {}),
      }));
    },
  );
}
