import { randomUUID } from "node:crypto";
import { type Static, Type as T } from "@sinclair/typebox";
import { type ModeWeights, rerank } from "../../serving/rerank.js";
import type { App, AppContext } from "../context.js";
import { badRequest } from "../errors.js";
import { openaiErrors, teiErrors } from "../schemas.js";

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
        modeWeights: b.mode_weights as ModeWeights | undefined,
        truncate: true,
        topN: b.top_n,
        deadline: request.deadline,
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
        modeWeights: b.mode_weights as ModeWeights | undefined,
        truncate: true,
        topN: b.top_n,
        deadline: request.deadline,
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
        modeWeights: b.mode_weights as ModeWeights | undefined,
        truncate: b.truncate ?? true,
        topN: undefined,
        deadline: request.deadline,
      });
      return ranked.order.map((index) => ({
        index,
        score: ranked.scores[index] as number,
        ...(b.return_text ? { text: b.texts[index] as string } : {}),
      }));
    },
  );
}
