import { Type as T } from "@sinclair/typebox";
import { QUERY_SUFFIX } from "../../serving/registry.js";
import type { ServedModel } from "../../serving/served.js";
import type { App, AppContext } from "../context.js";
import { ApiError } from "../errors.js";
import { embeddingsResponse } from "../openai-embeddings.js";
import {
  CL100K_MAX_TOKEN_ID,
  EmbeddingsResponse,
  embeddingsRequest,
  errorResponses,
  ModelList,
  ModelObject,
} from "../schemas.js";

function modelObject(m: ServedModel) {
  const i = m.info;
  const llm = i.llm;
  return {
    id: m.id,
    object: "model" as const,
    created: m.created,
    owned_by: "flagserve",
    kind: m.kind,
    ...(m.kind === "embedding" ? { dimensions: m.dimension } : {}),
    max_input_tokens: m.maxInputTokens,
    source: m.source,
    ...(i.modelClass ? { model_class: i.modelClass } : {}),
    ...(m.kind === "embedding"
      ? { pooling: i.pooling, query_instruction_format: i.queryFormat, query_instruction: i.queryInstruction }
      : {}),
    ...(i.decoder?.icl ? { icl_examples: i.decoder.icl.examples?.length ?? 0 } : {}),
    ...(llm?.cutoffLayers
      ? { cutoff_layers: { default: llm.cutoffLayers.default, available: llm.cutoffLayers.available } }
      : {}),
    ...(llm?.compressRatio
      ? {
          compress_ratio: {
            default: llm.compressRatio.default,
            available: llm.compressRatio.available,
            any_integer: llm.compressRatio.anyInteger,
          },
        }
      : {}),
    ...(llm?.compressLayers
      ? { compress_layers: { default: llm.compressLayers.default, available: llm.compressLayers.available } }
      : {}),
  };
}

/** A model's entries: an embedding model is also listed under its "MODEL:query" name. */
function modelObjects(m: ServedModel) {
  const o = modelObject(m);
  return m.kind === "embedding"
    ? [o, { ...o, id: `${o.id}${QUERY_SUFFIX}`, input_type: "query" as const }]
    : [o];
}

export async function openaiRoutes(app: App, ctx: AppContext): Promise<void> {
  // The limits this server enforces, stated in the schema (the document follows the configuration).
  const EmbeddingsRequest = embeddingsRequest({
    maxInputs: ctx.config.limits.maxInputs,
    ...(ctx.config.tokenIds === "cl100k" ? { maxTokenId: CL100K_MAX_TOKEN_ID } : {}),
  });
  for (const url of ["/v1/embeddings", "/embeddings"]) {
    app.post(
      url,
      {
        schema: {
          summary: "Create embeddings (OpenAI-compatible)",
          tags: ["OpenAI"],
          hide: url === "/embeddings",
          body: EmbeddingsRequest,
          response: { 200: EmbeddingsResponse, ...errorResponses("openai", [404, 429]) },
        },
        config: { dialect: "openai" },
      },
      async (request, reply) => {
        const { json } = await embeddingsResponse(ctx, request.body, request.deadline, request.cancellation);
        return reply.type("application/json").send(json);
      },
    );
  }

  for (const url of ["/v1/models", "/models"]) {
    app.get(
      url,
      {
        schema: {
          summary: "List served models",
          tags: ["OpenAI"],
          hide: url === "/models",
          response: { 200: ModelList },
        },
        config: { dialect: "openai" },
      },
      async () => ({ object: "list" as const, data: ctx.registry.models.flatMap(modelObjects) }),
    );
  }

  app.get(
    "/v1/models/*",
    {
      schema: {
        summary: "One served model (ids may contain slashes, as hub ids do)",
        tags: ["OpenAI"],
        params: T.Object({ "*": T.String() }),
        response: { 200: ModelObject, ...errorResponses("openai", [404]) },
      },
      config: { dialect: "openai" },
    },
    async (request) => {
      const id = request.params["*"];
      const m = ctx.registry.models.flatMap(modelObjects).find((x) => x.id === id);
      if (!m) {
        throw new ApiError(404, `The model \`${id}\` does not exist`, {
          code: "model_not_found",
          param: "model",
        });
      }
      return m;
    },
  );
}
