import { Type as T } from "@sinclair/typebox";
import type { Float32Matrix } from "../../runtime/matrix.js";
import type { Encoding } from "../../runtime/tokenizer.js";
import type { ServedEmbedder } from "../../serving/models.js";
import { checkDimensions, finalizeEmbeddings, readInputs } from "../encode.js";
import { badRequest } from "../errors.js";
import { TeiDecodeRequest, TeiEmbedRequest, TeiToken, TeiTokenizeRequest, teiErrors } from "../schemas.js";
import { type App, type AppContext, VERSION } from "../server.js";
import { encodeInputs, requireEmbedder } from "./openai.js";

const tei = { dialect: "tei" as const };

/**
 * Hugging Face text-embeddings-inference's routes, so TEI clients work unchanged. TEI serves one
 * model; here a request may name one with an extra `model` field, else the first embedder answers.
 */
export async function teiRoutes(app: App, ctx: AppContext): Promise<void> {
  const pick = (body: unknown) => requireEmbedder(ctx, (body as { model?: string }).model);

  /** TEI inputs -> tokenized inputs: prompt_name resolved, truncation and its direction applied. */
  const teiEncodings = async (
    model: ServedEmbedder,
    body: TeiEmbedRequest,
    deadline: number,
  ): Promise<Encoding[]> => {
    const raw = readInputs(body.inputs, "inputs", ctx.config.limits.maxInputs);
    let prompt = "";
    if (body.prompt_name) {
      const found = model.promptFor(body.prompt_name);
      if (found === undefined) {
        const known = ["query", "passage", ...Object.keys(model.prompts)];
        throw badRequest(
          `unknown prompt_name "${body.prompt_name}"; known: ${known.join(", ")}`,
          "prompt_name",
        );
      }
      prompt = found;
    }
    // Without prompt_name TEI embeds the text as given: no instruction.
    const encodings = await encodeInputs(ctx, model, raw, {
      inputType: "passage",
      prompt,
      truncate: body.truncate ?? true,
      ...(body.truncation_direction?.toLowerCase() === "left" ? { side: "left" as const } : {}),
      idsAre: "model",
      param: "inputs",
      deadline,
    });
    ctx.metrics.inputs.inc({ model: model.id }, encodings.length);
    ctx.metrics.tokens.inc(
      { model: model.id },
      encodings.reduce((n, e) => n + e.ids.length, 0),
    );
    return encodings;
  };

  app.post(
    "/embed",
    {
      schema: {
        summary: "Embed (text-embeddings-inference compatible)",
        tags: ["TEI"],
        body: TeiEmbedRequest,
        response: { 200: T.Array(T.Array(T.Number())), ...teiErrors },
      },
      config: tei,
    },
    async (request, reply) => {
      const body = request.body;
      const model = pick(body);
      checkDimensions(body.dimensions, model.dimension);
      const encodings = await teiEncodings(model, body, request.deadline);
      const pooled = await model.embed(encodings, request.deadline);
      const vectors = finalizeEmbeddings(pooled, {
        dimensions: body.dimensions ?? null,
        normalize: body.normalize ?? true,
        truncateDim: model.info.truncateDim,
      });
      return reply.send(vectors.toArrays());
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
          ...teiErrors,
        },
      },
      config: tei,
    },
    async (request) => {
      const body = request.body;
      const model = pick(body);
      if (!model.info.m3)
        throw badRequest(`${model.id} has no sparse head; /embed_sparse needs a BGE-M3 model`, "model");
      const encodings = await teiEncodings(model, body, request.deadline);
      const raws = await model.run(
        encodings,
        { dense: false, sparse: true, colbert: false },
        request.deadline,
      );
      return raws.map((r, i) => {
        const { indices, values } = model.sparseVector(r, encodings[i] as Encoding);
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
        response: { 200: T.Array(T.Array(T.Array(T.Number()))), ...teiErrors },
      },
      config: tei,
    },
    async (request) => {
      const body = request.body;
      const model = pick(body);
      const encodings = await teiEncodings(model, body, request.deadline);
      const want = { dense: false, sparse: false, colbert: model.info.m3, tokens: true };
      const raws = await model.run(encodings, want, request.deadline);
      return raws.map((r) =>
        (model.info.m3 ? model.colbertVectors(r) : (r.colbert as Float32Matrix)).toArrays(),
      );
    },
  );

  app.post(
    "/tokenize",
    {
      schema: {
        summary: "Tokenize (text-embeddings-inference compatible)",
        tags: ["TEI"],
        body: TeiTokenizeRequest,
        response: { 200: T.Array(T.Array(TeiToken)), ...teiErrors },
      },
      config: tei,
    },
    async (request) => {
      const body = request.body;
      const model = pick(body);
      const texts = typeof body.inputs === "string" ? [body.inputs] : body.inputs;
      if (texts.length === 0) throw badRequest("inputs must not be empty", "inputs", "empty");
      if (texts.length > ctx.config.limits.maxInputs) throw badRequest("too many inputs", "inputs");
      const prefix = body.prompt_name ? (model.promptFor(body.prompt_name) ?? "") : "";
      const tok = model.tokenizer;
      return texts.map((t) => {
        const ids =
          body.add_special_tokens === false
            ? tok.encodeWithoutSpecials(prefix + t)
            : tok.encode(prefix + t, undefined).ids;
        return ids.map((id) => ({
          id,
          text: tok.idToToken(id) ?? "",
          special: tok.specialIds.has(id),
          start: null,
          stop: null,
        }));
      });
    },
  );

  app.post(
    "/decode",
    {
      schema: {
        summary: "Decode token ids (text-embeddings-inference compatible)",
        tags: ["TEI"],
        body: TeiDecodeRequest,
        response: { 200: T.Array(T.String()), ...teiErrors },
      },
      config: tei,
    },
    async (request) => {
      const body = request.body;
      const model = pick(body);
      const ids = (body.ids.length > 0 && Array.isArray(body.ids[0]) ? body.ids : [body.ids]) as number[][];
      return ids.map((seq) => model.tokenizer.decode(seq, body.skip_special_tokens ?? true));
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
            },
            { additionalProperties: true },
          ),
          ...teiErrors,
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
        max_concurrent_requests: ctx.config.scheduler.maxQueuedInputs ?? 16384,
        max_input_length: model.maxInputTokens,
        max_batch_tokens: ctx.config.scheduler.maxBatchTokens ?? 16384,
        max_batch_requests: ctx.config.scheduler.maxBatchSize ?? 64,
        max_client_batch_size: ctx.config.limits.maxInputs,
        auto_truncate: true,
        tokenization_workers: 1,
        version: VERSION,
        sha: null,
        docker_label: null,
      };
    },
  );
}
