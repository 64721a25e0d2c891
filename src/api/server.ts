import cors from "@fastify/cors";
import multipart from "@fastify/multipart";
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import Fastify, { type FastifyRequest, LogController } from "fastify";
import { apiKeyHook } from "./auth.js";
import { type App, type AppContext, VERSION } from "./context.js";
import { toApiError } from "./error-mapping.js";
import { ApiError, type ErrorDialect, sendError } from "./errors.js";
import { batchRoutes } from "./routes/batches.js";
import { jobRoutes } from "./routes/jobs.js";
import { openaiRoutes } from "./routes/openai.js";
import { opsRoutes } from "./routes/ops.js";
import { rerankRoutes } from "./routes/rerank.js";
import { teiRoutes } from "./routes/tei.js";
import { OpenAIError, TeiError } from "./schemas.js";

function dialectOf(request: FastifyRequest): ErrorDialect {
  return request.routeOptions.config?.dialect ?? "openai";
}

/** Build the HTTP app (routes, docs, auth, errors, metrics); listening is up to the caller. */
export async function buildServer(ctx: AppContext): Promise<App> {
  const { config, metrics } = ctx;
  const app = Fastify({
    bodyLimit: config.limits.bodyLimit,
    logger: { level: config.logLevel },
    // Per-request lines would dominate the log at thousands of requests a second; metrics count them.
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: "idle",
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // Draining is answered by our own hook below, in each route's error dialect.
    return503OnClosing: false,
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.decorateRequest("deadline", 0);
  app.decorateRequest("owner", "anonymous");
  app.addSchema(OpenAIError);
  app.addSchema(TeiError);

  await app.register(swagger, {
    openapi: {
      openapi: "3.0.3",
      info: {
        title: "flagserve",
        description:
          "FlagEmbedding (BGE) models over OpenAI-, Cohere-, Jina- and text-embeddings-inference-compatible APIs",
        version: VERSION,
      },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => (json.$id as string) ?? `def-${i}` },
  });
  await app.register(multipart, { limits: { fileSize: config.limits.uploadBytes, files: 1 } });
  await app.register(swaggerUi, { routePrefix: "/docs", uiConfig: { docExpansion: "list" } });
  if (config.corsOrigins.length > 0) {
    await app.register(cors, {
      origin: config.corsOrigins.includes("*") ? true : config.corsOrigins,
      allowedHeaders: ["Authorization", "Content-Type"],
      exposedHeaders: ["Retry-After"],
    });
  }

  app.addHook("onRequest", async (request) => {
    (request as { startedAt?: bigint }).startedAt = process.hrtime.bigint();
    request.deadline = Date.now() + config.limits.requestTimeoutMs;
  });
  app.addHook("onRequest", async (request, reply) => {
    // After SIGTERM: in-flight requests finish, new ones (on kept-alive connections) are refused.
    if (!ctx.state.draining || request.routeOptions.config?.public) return;
    reply.header("connection", "close");
    const err = new ApiError(503, "the server is shutting down; retry on another replica or shortly", {
      code: "shutting_down",
      retryAfterSeconds: 1,
    });
    return sendError(reply, err, dialectOf(request));
  });
  app.addHook("onRequest", apiKeyHook(config.apiKeys, dialectOf));

  app.addHook("onResponse", async (request, reply) => {
    const route = request.routeOptions.url ?? "unmatched";
    const started = (request as { startedAt?: bigint }).startedAt;
    metrics.requests.inc({ route, method: request.method, status: String(reply.statusCode) });
    if (started !== undefined)
      metrics.latency.observe({ route }, Number(process.hrtime.bigint() - started) / 1e9);
  });

  app.setErrorHandler((err, request, reply) => {
    const apiError = toApiError(err);
    // 503s (busy, loading, draining) are expected states, not faults worth an error line.
    if (apiError.status >= 500 && apiError.status !== 503) request.log.error({ err }, "request failed");
    return sendError(reply, apiError, dialectOf(request));
  });
  app.setNotFoundHandler((request, reply) =>
    sendError(
      reply,
      new ApiError(404, `no route for ${request.method} ${request.url.split("?")[0]}`, { code: "not_found" }),
      "openai",
    ),
  );

  await app.register(async (scope) => {
    await opsRoutes(scope as unknown as App, ctx);
    await openaiRoutes(scope as unknown as App, ctx);
    await teiRoutes(scope as unknown as App, ctx);
    await rerankRoutes(scope as unknown as App, ctx);
    await jobRoutes(scope as unknown as App, ctx);
    await batchRoutes(scope as unknown as App, ctx);
  });
  return app;
}
