import { Type as T } from "@sinclair/typebox";
import type { M3Raw } from "../../models/m3.js";
import { Float32Matrix } from "../../runtime/matrix.js";
import type { Encoding } from "../../runtime/tokenizer.js";
import {
  type EmbedCall,
  InputTooLongError,
  type InputType,
  type ServedEmbedder,
  type ServedModel,
} from "../../serving/models.js";
import {
  checkDimensions,
  checkVocabIds,
  decodeCl100k,
  finalizeEmbeddings,
  float32Base64,
  float32Json,
  readInputs,
  tooManyTokens,
} from "../encode.js";
import { ApiError, badRequest } from "../errors.js";
import { EmbeddingsRequest, EmbeddingsResponse, ModelList, ModelObject, openaiErrors } from "../schemas.js";
import type { App, AppContext } from "../server.js";

/** What computing embeddings needs of the server: its limits, models, metrics and state. */
export type EmbeddingsContext = Pick<AppContext, "config" | "registry" | "metrics" | "state">;

/** The served model a request names, or the OpenAI-shaped 404 / 503. */
export function requireEmbedder(
  ctx: EmbeddingsContext,
  name: string | undefined,
  param = "model",
): ServedEmbedder {
  if (!ctx.state.ready && ctx.registry.embedders().length === 0) {
    throw new ApiError(503, "models are still loading; retry shortly", {
      code: "model_loading",
      retryAfterSeconds: 2,
    });
  }
  const model = ctx.registry.embedder(name, ctx.config.strictModels);
  if (!model) {
    const served = ctx.registry.embedders().map((m) => m.id);
    throw new ApiError(
      404,
      `The model \`${name}\` does not exist or is not an embedding model served here; served: ${served.join(", ") || "none"}`,
      { code: "model_not_found", param },
    );
  }
  return model;
}

export function inputTypeOf(value: string | undefined, model: ServedEmbedder): InputType {
  if (value === undefined) return model.defaultInputType;
  return value === "query" ? "query" : "passage";
}

/**
 * Tokenize what a client sent, with the request's truncation choice and the request token limit.
 * Token ids are cl100k_base (decoded to text first) or the model's own vocabulary.
 */
export async function encodeInputs(
  ctx: EmbeddingsContext,
  model: ServedEmbedder,
  raw: ReturnType<typeof readInputs>,
  opts: Omit<EmbedCall, "texts"> & { idsAre: "cl100k" | "model"; param: string },
): Promise<Encoding[]> {
  const { idsAre, param, ...call } = opts;
  let encodings: Encoding[];
  try {
    if ("texts" in raw) {
      encodings = await model.tokenize({ ...call, texts: raw.texts });
    } else if (idsAre === "cl100k") {
      encodings = await model.tokenize({ ...call, texts: decodeCl100k(raw.ids, param) });
    } else {
      checkVocabIds(raw.ids, model.tokenizer.vocabSize, param);
      encodings = model.fromTokenIds(raw.ids, opts.truncate);
    }
  } catch (err) {
    if (err instanceof InputTooLongError) throw badRequest(err.message, param, "context_length_exceeded");
    throw err;
  }
  const total = encodings.reduce((n, e) => n + e.ids.length, 0);
  if (total > ctx.config.limits.maxRequestTokens)
    throw tooManyTokens(total, ctx.config.limits.maxRequestTokens);
  return encodings;
}

export function modelObject(m: ServedModel) {
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

/**
 * The OpenAI embeddings response for a validated request body, as the JSON text to send: the
 * HTTP route and the Batch API (one call per request line) both produce responses this way.
 */
export async function embeddingsResponse(
  ctx: EmbeddingsContext,
  body: EmbeddingsRequest,
  deadline: number,
): Promise<{ json: string; tokens: number }> {
  const { metrics } = ctx;
  const model = requireEmbedder(ctx, body.model);
  const raw = readInputs(body.input, "input", ctx.config.limits.maxInputs);
  checkDimensions(body.dimensions, model.dimension);
  const encodings = await encodeInputs(ctx, model, raw, {
    inputType: inputTypeOf(body.input_type, model),
    truncate: body.truncate ?? true,
    idsAre: ctx.config.tokenIds,
    param: "input",
    deadline: deadline,
  });
  const extras = body.return ?? [];
  const want = { dense: true, sparse: extras.includes("sparse"), colbert: extras.includes("colbert") };
  if ((want.sparse || want.colbert) && !model.info.m3) {
    const what = want.sparse ? "sparse" : "colbert";
    throw badRequest(
      `return: "${what}" needs a BGE-M3 model; ${model.id} produces dense vectors only`,
      "return",
    );
  }
  if (body.return_tokens && !want.sparse)
    throw badRequest('return_tokens needs return: ["sparse"]', "return_tokens");
  const raws = await model.run(encodings, want, deadline);
  const pooled = Float32Matrix.fromRows(
    raws.map((r) => r.dense as Float32Array),
    model.dimension,
  );
  const vectors = finalizeEmbeddings(pooled, {
    dimensions: body.dimensions ?? null,
    normalize: model.info.normalize,
    truncateDim: model.info.truncateDim,
  });
  const tokens = encodings.reduce((n, e) => n + e.ids.length, 0);
  metrics.inputs.inc({ model: model.id }, encodings.length);
  metrics.tokens.inc({ model: model.id }, tokens);
  const base64 = body.encoding_format === "base64";
  // Built by hand: tens of thousands of floats serialise faster as one string.
  const parts: string[] = [];
  const vector = (v: Float32Array) => (base64 ? `"${float32Base64(v)}"` : float32Json(v));
  for (let i = 0; i < vectors.rows; i++) {
    let item = `{"object":"embedding","index":${i},"embedding":${vector(vectors.row(i))}`;
    const raw = raws[i] as M3Raw;
    if (want.sparse) {
      const sparse = model.sparseVector(raw, encodings[i] as Encoding);
      const tokens = body.return_tokens
        ? sparse.indices.map((id) => model.tokenizer.decode([id], false))
        : undefined;
      item += `,"sparse_embedding":${JSON.stringify(tokens ? { ...sparse, tokens } : sparse)}`;
    }
    if (want.colbert)
      item += `,"colbert_embedding":[${[...model.colbertVectors(raw)].map(vector).join(",")}]`;
    parts.push(`${item}}`);
  }
  const json = `{"object":"list","data":[${parts.join(",")}],"model":${JSON.stringify(model.id)},"usage":{"prompt_tokens":${tokens},"total_tokens":${tokens}}}`;
  return { json, tokens };
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
