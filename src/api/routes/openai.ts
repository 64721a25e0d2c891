import { Type as T } from "@sinclair/typebox";
import type { ServedModel } from "../../serving/served.js";
import type { App, AppContext } from "../context.js";
import { ApiError } from "../errors.js";
import { embeddingsResponse } from "../openai-embeddings.js";
import { EmbeddingsRequest, EmbeddingsResponse, ModelList, ModelObject, openaiErrors } from "../schemas.js";

function modelObject(m: ServedModel) {
  return {
    id: m.id,
    object: "model" as const,
    created: m.created,
    owned_by: "flagserve",
    kind: m.kind,
    ...(m.kind === "embedding" ? { dimensions: m.dimension } : {}),
    max_input_tokens: m.maxInputTokens,
    source: m.source,
  };
}

export async function openaiRoutes(app: App, ctx: AppContext): Promise<void> {
  for (const url of ["/v1/embeddings", "/embeddings"]) {
    app.post(
      url,
      {
        schema: {
          summary: "Create embeddings (OpenAI-compatible)",
          tags: ["OpenAI"],
          hide: url === "/embeddings",
          body: EmbeddingsRequest,
          response: { 200: EmbeddingsResponse, ...openaiErrors },
        },
        config: { dialect: "openai" },
      },
      async (request, reply) => {
        const { json } = await embeddingsResponse(ctx, request.body, request.deadline);
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
          response: { 200: ModelList, ...openaiErrors },
        },
        config: { dialect: "openai" },
      },
      async () => ({ object: "list" as const, data: ctx.registry.models.map(modelObject) }),
    );
  }

  app.get(
    "/v1/models/*",
    {
      schema: {
        summary: "One served model (ids may contain slashes, as hub ids do)",
        tags: ["OpenAI"],
        params: T.Object({ "*": T.String() }),
        response: { 200: ModelObject, ...openaiErrors },
      },
      config: { dialect: "openai" },
    },
    async (request) => {
      const id = request.params["*"];
      const m = ctx.registry.models.find((x) => x.id === id);
      if (!m) {
        throw new ApiError(404, `The model \`${id}\` does not exist`, {
          code: "model_not_found",
          param: "model",
        });
      }
      return modelObject(m);
    },
  );
}
