import { Type as T } from "@sinclair/typebox";
import type { Float32Matrix } from "../../runtime/matrix.js";
import { type EmbedRequest, embed, requireEmbedder } from "../../serving/embed.js";
import { decode, promptPrefix, tokenize } from "../../serving/tokenize.js";
import { type App, type AppContext, VERSION } from "../context.js";
import {
  errorResponses,
  TeiDecodeRequest,
  type TeiEmbedRequest,
  TeiToken,
  teiEmbedRequest,
  teiTokenizeRequest,
} from "../schemas.js";

const tei = { dialect: "tei" as const };

/**
 * Hugging Face text-embeddings-inference's routes, so TEI clients work unchanged. TEI serves one
 * model; here a request may name one with an extra `model` field, else the first embedder answers.
 */
export async function teiRoutes(app: App, ctx: AppContext): Promise<void> {
  const limits = { maxInputs: ctx.config.limits.maxInputs };
  const TeiEmbedRequest = teiEmbedRequest(limits);
  // Inference: empty inputs (400), unknown model (404), too long without truncation (413), a full queue.
  const inference = errorResponses("tei", [400, 404, 413, 429]);
  /** A TEI embed body as a service request: prompt_name resolved, truncation and its direction. */
  const embedRequest = (
    body: TeiEmbedRequest,
    request: { deadline: number; cancellation: AbortSignal },
  ): EmbedRequest => {
    const model = requireEmbedder(ctx, body.model);
    return {
      model: model.id,
      input: body.inputs,
      param: "inputs",
      // Without prompt_name TEI embeds the text as given: no instruction.
      inputType: "passage",
      prompt: promptPrefix(model, body.prompt_name),
      truncate: body.truncate ?? true,
      ...(body.truncation_direction?.toLowerCase() === "left" ? { side: "left" as const } : {}),
      idsAre: "model",
      dimensions: body.dimensions ?? null,
      deadline: request.deadline,
      signal: request.cancellation,
    };
  };

  app.post(
    "/embed",
    {
      schema: {
        summary: "Embed (text-embeddings-inference compatible)",
        tags: ["TEI"],
        body: TeiEmbedRequest,
        response: { 200: T.Array(T.Array(T.Number())), ...inference },
      },
      config: tei,
    },
    async (request, reply) => {
      const body = request.body;
      const result = await embed(ctx, {
        ...embedRequest(body, request),
        normalize: body.normalize ?? true,
      });
      return reply.send((result.vectors as Float32Matrix).toArrays());
    },
  );

  app.post(
    "/embed_sparse",
    {
      schema: {
        summary: "Sparse lexical weights of a BGE-M3 model (text-embeddings-inference compatible)",
        tags: ["TEI"],
        body: TeiEmbedRequest,
        response: {
          200: T.Array(T.Array(T.Object({ index: T.Integer(), value: T.Number() }))),
          ...inference,
        },
      },
      config: tei,
    },
    async (request) => {
      const want = { dense: false, sparse: true };
      const result = await embed(ctx, { ...embedRequest(request.body, request), want });
      return result.raws.map((r, i) => {
        const { indices, values } = result.model.sparseVector(
          r,
          result.encodings[i] as (typeof result.encodings)[number],
        );
        return indices.map((index, k) => ({ index, value: values[k] as number }));
      });
    },
  );

  app.post(
    "/embed_all",
    {
      schema: {
        summary:
          "Every token's vector (text-embeddings-inference compatible): BGE-M3's ColBERT vectors, or other models' hidden states",
        tags: ["TEI"],
        body: TeiEmbedRequest,
        response: { 200: T.Array(T.Array(T.Array(T.Number()))), ...inference },
      },
      config: tei,
    },
    async (request) => {
      const req = embedRequest(request.body, request);
      const m3 = ctx.registry.embedder(req.model, true)?.info.m3 ?? false;
      const result = await embed(ctx, { ...req, want: { dense: false, colbert: m3, tokens: true } });
      return result.raws.map((r) =>
        (m3 ? result.model.colbertVectors(r) : (r.colbert as Float32Matrix)).toArrays(),
      );
    },
  );

  app.post(
    "/tokenize",
    {
      // Their answers are many times the size of the request: a smaller body limit.
      bodyLimit: ctx.config.limits.tokenizeBodyLimit,
      schema: {
        summary: "Tokenize (text-embeddings-inference compatible)",
        tags: ["TEI"],
        body: teiTokenizeRequest(limits),
        response: { 200: T.Array(T.Array(TeiToken)), ...errorResponses("tei", [400, 404]) },
      },
      config: tei,
    },
    async (request, reply) => {
      const body = request.body;
      // The body is rendered in a tokenizer thread: a long text has millions of tokens.
      const json = await tokenize(ctx, {
        model: body.model,
        inputs: body.inputs,
        addSpecialTokens: body.add_special_tokens !== false,
        promptName: body.prompt_name,
        signal: request.cancellation,
      });
      return reply.type("application/json").send(json);
    },
  );

  app.post(
    "/decode",
    {
      // Their answers are many times the size of the request: a smaller body limit.
      bodyLimit: ctx.config.limits.tokenizeBodyLimit,
      schema: {
        summary: "Decode token ids (text-embeddings-inference compatible)",
        tags: ["TEI"],
        body: TeiDecodeRequest,
        response: { 200: T.Array(T.String()), ...errorResponses("tei", [404]) },
      },
      config: tei,
    },
    async (request) => {
      const body = request.body;
      const ids = (body.ids.length > 0 && Array.isArray(body.ids[0]) ? body.ids : [body.ids]) as number[][];
      return decode(ctx, {
        model: body.model,
        ids,
        skipSpecialTokens: body.skip_special_tokens ?? true,
      });
    },
  );

  app.get(
    "/info",
    {
      schema: {
        summary: "Model and router information (text-embeddings-inference compatible)",
        tags: ["TEI"],
        response: {
          200: T.Object(
            {
              model_id: T.String(),
              model_sha: T.Union([T.String(), T.Null()]),
              model_dtype: T.String(),
              model_type: T.Object({}, { additionalProperties: true }),
              max_concurrent_requests: T.Integer(),
              max_input_length: T.Integer(),
              max_batch_tokens: T.Integer(),
              max_batch_requests: T.Union([T.Integer(), T.Null()]),
              max_client_batch_size: T.Integer(),
              auto_truncate: T.Boolean(),
              tokenization_workers: T.Integer(),
              version: T.String(),
              sha: T.Union([T.String(), T.Null()]),
              docker_label: T.Union([T.String(), T.Null()]),
              model_class: T.Optional(
                T.String({
                  description: "Extension: FlagEmbedding's class (encoder-only-base, decoder-only-icl, ...)",
                }),
              ),
              dimensions: T.Optional(T.Integer({ description: "Extension: the embedding width" })),
            },
            { additionalProperties: true },
          ),
          // No embedding model served (only rerankers).
          ...errorResponses("tei", [404]),
        },
      },
      config: tei,
    },
    async () => {
      const model = requireEmbedder(ctx, undefined);
      const sha = /snapshots\/([0-9a-f]{40})/.exec(model.info.dir)?.[1] ?? null;
      return {
        model_id: model.source,
        model_sha: sha,
        model_dtype:
          ({ fp16: "float16", fp32: "float32" } as Record<string, string>)[model.info.dtype] ??
          model.info.dtype,
        model_type: { embedding: { pooling: model.pooling } },
        max_concurrent_requests: ctx.config.scheduler.maxQueuedInputs,
        max_input_length: model.maxInputTokens,
        max_batch_tokens: ctx.config.scheduler.maxBatchTokens,
        max_batch_requests: ctx.config.scheduler.maxBatchSize,
        max_client_batch_size: ctx.config.limits.maxInputs,
        auto_truncate: true,
        tokenization_workers: 1,
        version: VERSION,
        sha: null,
        docker_label: null,
        ...(model.info.modelClass ? { model_class: model.info.modelClass } : {}),
        dimensions: model.dimension,
      };
    },
  );
}
