import { randomUUID } from "node:crypto";
import { type Static, Type as T } from "@sinclair/typebox";
import { type EmbedRequest, embed } from "../../serving/embed.js";
import { EMBEDDING_TYPES, type EmbeddingType, quantizeRows } from "../../serving/quantize.js";
import type { App, AppContext } from "../context.js";
import { errorResponses, StringEnum } from "../schemas.js";

/**
 * Cohere's embed API (v1 and v2), so Cohere clients and the LangChain / LlamaIndex Cohere embedders
 * work unchanged. Their `input_type` says which side a text is on, so the model's query
 * instruction reaches queries without any client-side setting.
 */

// Cohere's "image" is not here: flagserve serves text models (the schema's 400 says what is accepted).
const CohereInputType = StringEnum(["search_query", "search_document", "classification", "clustering"], {
  description:
    "search_query: the model's query instruction; search_document: its passage side; classification / clustering: the model's task instruction where it has one (instruction-tuned models), else the passage side",
});
const EmbeddingTypes = T.Array(StringEnum([...EMBEDDING_TYPES]), {
  minItems: 1,
  description:
    "float; int8 / uint8 (each vector scaled by 127 / its largest absolute value; uint8 = int8 + 128); ubinary / binary (one bit per dimension, 1 where > 0, packed big-endian into bytes; binary = byte - 128)",
});
const Truncate = StringEnum(["NONE", "START", "END"], {
  description: "END (default) cuts the end of over-long texts, START their beginning, NONE refuses them",
});
const Texts = T.Array(T.String(), { minItems: 1, description: "Texts to embed" });

const EmbedV1Request = T.Object(
  {
    texts: Texts,
    model: T.Optional(T.String()),
    input_type: T.Optional(CohereInputType),
    embedding_types: T.Optional(EmbeddingTypes),
    truncate: T.Optional(Truncate),
  },
  { additionalProperties: true },
);

const EmbedV2Request = T.Object(
  {
    model: T.String(),
    texts: Texts,
    input_type: T.Optional(CohereInputType),
    embedding_types: T.Optional(EmbeddingTypes),
    truncate: T.Optional(Truncate),
    output_dimension: T.Optional(
      T.Integer({ minimum: 1, description: "Keep the first N dimensions, then re-normalise (Matryoshka)" }),
    ),
  },
  { additionalProperties: true },
);

const Vectors = T.Array(T.Array(T.Number()));
const ByType = T.Object(Object.fromEntries(EMBEDDING_TYPES.map((t) => [t, T.Optional(Vectors)])), {
  description: "One list of vectors per requested embedding type",
});
const Meta = T.Object({
  api_version: T.Object({ version: T.String() }),
  billed_units: T.Object({ input_tokens: T.Integer() }),
});

const EmbedV1Response = T.Object({
  id: T.String(),
  texts: T.Array(T.String()),
  embeddings: T.Union([Vectors, ByType]),
  meta: Meta,
  response_type: StringEnum(["embeddings_floats", "embeddings_by_type"]),
});

const EmbedV2Response = T.Object({
  id: T.String(),
  texts: T.Array(T.String()),
  embeddings: ByType,
  meta: Meta,
  response_type: StringEnum(["embeddings_by_type"]),
});

/** Cohere's input types as the server's sides. */
function side(inputType: Static<typeof CohereInputType> | undefined): string | undefined {
  switch (inputType) {
    case undefined:
      return undefined;
    case "search_query":
      return "query";
    case "search_document":
      return "passage";
    default:
      return inputType;
  }
}

/** A Cohere embed body as the embed service's request. */
function embedRequest(
  body: { texts: string[]; model?: string; input_type?: Static<typeof CohereInputType>; truncate?: string },
  request: { deadline: number; cancellation: AbortSignal },
  dimensions?: number,
): EmbedRequest {
  const inputType = side(body.input_type);
  return {
    model: body.model,
    input: body.texts,
    param: "texts",
    ...(inputType ? { inputType } : {}),
    truncate: body.truncate !== "NONE",
    ...(body.truncate === "START" ? { side: "left" as const } : {}),
    idsAre: "model",
    dimensions: dimensions ?? null,
    deadline: request.deadline,
    signal: request.cancellation,
  };
}

function byType(vectors: Parameters<typeof quantizeRows>[0], types: EmbeddingType[]) {
  return Object.fromEntries(types.map((t) => [t, quantizeRows(vectors, t).map((r) => Array.from(r))]));
}

export async function cohereRoutes(app: App, ctx: AppContext): Promise<void> {
  const cohere = { dialect: "cohere" as const };

  app.post(
    "/v1/embed",
    {
      schema: {
        summary: "Embed texts (Cohere v1 compatible)",
        tags: ["Cohere"],
        body: EmbedV1Request,
        response: { 200: EmbedV1Response, ...errorResponses("cohere", [404]) },
      },
      config: cohere,
    },
    async (request) => {
      const b = request.body;
      const result = await embed(ctx, embedRequest(b, request));
      const vectors = result.vectors as NonNullable<typeof result.vectors>;
      const meta = { api_version: { version: "1" }, billed_units: { input_tokens: result.tokens } };
      if (!b.embedding_types) {
        return {
          id: randomUUID(),
          texts: b.texts,
          embeddings: [...vectors].map((r) => Array.from(r)),
          meta,
          response_type: "embeddings_floats" as const,
        };
      }
      return {
        id: randomUUID(),
        texts: b.texts,
        embeddings: byType(vectors, b.embedding_types),
        meta,
        response_type: "embeddings_by_type" as const,
      };
    },
  );

  app.post(
    "/v2/embed",
    {
      schema: {
        summary: "Embed texts (Cohere v2 compatible)",
        tags: ["Cohere"],
        body: EmbedV2Request,
        response: { 200: EmbedV2Response, ...errorResponses("cohere", [404]) },
      },
      config: cohere,
    },
    async (request) => {
      const b = request.body;
      const result = await embed(ctx, embedRequest(b, request, b.output_dimension));
      return {
        id: randomUUID(),
        texts: b.texts,
        embeddings: byType(
          result.vectors as NonNullable<typeof result.vectors>,
          b.embedding_types ?? ["float"],
        ),
        meta: { api_version: { version: "2" }, billed_units: { input_tokens: result.tokens } },
        response_type: "embeddings_by_type" as const,
      };
    },
  );
}
