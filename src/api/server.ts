import cors from "@fastify/cors";
import multipart from "@fastify/multipart";
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import Fastify, { type FastifyRequest, LogController } from "fastify";
import { CancelledError, DeadlineError } from "../serving/scheduler.js";
import { apiKeyHook } from "./auth.js";
import { type App, type AppContext, VERSION } from "./context.js";
import { documentRoute, frameworkErrors, MAX_PARAM_LENGTH, RouteTable } from "./contract.js";
import { toApiError } from "./error-mapping.js";
import { ApiError, type ErrorDialect, sendError } from "./errors.js";
import { batchRoutes } from "./routes/batches.js";
import { cohereRoutes } from "./routes/cohere.js";
import { jobRoutes } from "./routes/jobs.js";
import { openaiRoutes } from "./routes/openai.js";
import { opsRoutes } from "./routes/ops.js";
import { rerankRoutes } from "./routes/rerank.js";
import { teiRoutes } from "./routes/tei.js";
import { CohereError, OpenAIError, TeiError } from "./schemas.js";

function dialectOf(request: FastifyRequest): ErrorDialect {
  return request.routeOptions.config?.dialect ?? "openai";
}

/** Build the HTTP app (routes, docs, auth, errors, metrics); listening is up to the caller. */
export async function buildServer(ctx: AppContext): Promise<App> {
  const { config, metrics } = ctx;
  // Every path and its methods, for 405 and the router's own refusals (see contract.ts).
  const routes = new RouteTable();
  const app = Fastify({
    bodyLimit: config.limits.bodyLimit,
    logger: { level: config.logLevel },
    // Per-request lines would dominate the log at thousands of requests a second; metrics count them.
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: "idle",
    // verbose: a failed oneOf carries its branches, so the 400 can name the alternative fields.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false, verbose: true } },
    // Draining is answered by our own hook below, in each route's error dialect.
    return503OnClosing: false,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors: frameworkErrors(routes),
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.decorateRequest("deadline", 0);
  app.decorateRequest("cancellation", null as unknown as AbortSignal);
  app.decorateRequest("owner", "anonymous");
  app.addSchema(OpenAIError);
  app.addSchema(TeiError);
  app.addSchema(CohereError);
  // Before any plugin adds routes.
  app.addHook("onRoute", routes.onRoute);
  // No route takes text/plain: such a body is a 415, not a string that fails validation.
  app.removeContentTypeParser("text/plain");

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
    transform: documentRoute as never,
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

  app.addHook("onRequest", async (request, reply) => {
    (request as { startedAt?: bigint }).startedAt = process.hrtime.bigint();
    const timeout = config.limits.requestTimeoutMs;
    request.deadline = Date.now() + timeout;
    // One signal for both ways a request ends early: its queued work is dropped at once.
    const controller = new AbortController();
    const timer = setTimeout(
      () => controller.abort(new DeadlineError(`request not completed within ${timeout} ms`)),
      timeout,
    );
    timer.unref();
    reply.raw.once("close", () => {
      clearTimeout(timer);
      if (!reply.raw.writableFinished) controller.abort(new CancelledError());
    });
    request.cancellation = controller.signal;
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
  // A wrong method on a path the public document lists is a 405 with or without a key.
  app.addHook("onRequest", routes.methodNotAllowed);
  app.addHook("onRequest", apiKeyHook(config.apiKeys, dialectOf));
  // Admission before work: bodies being received or worked on are bounded in bytes, so a flood of
  // large requests is refused in milliseconds, before its bodies are read, and memory stays bounded.
  let inflightBytes = 0;
  app.addHook("onRequest", async (request, reply) => {
    if (request.method === "GET" || request.method === "HEAD" || request.method === "OPTIONS") return;
    if (request.isMultipart()) return; // uploads stream to the job store part by part
    const declared = Number(request.headers["content-length"]);
    const limit = request.routeOptions.bodyLimit ?? config.limits.bodyLimit;
    // A chunked body may be as large as the route allows; count it as a quarter of that.
    const bytes = Number.isFinite(declared) ? Math.min(declared, limit) : Math.ceil(limit / 4);
    if (inflightBytes > 0 && inflightBytes + bytes > config.limits.inflightBodyBytes) {
      metrics.rejected.inc({ model: "", reason: "inflight_bytes" });
      reply.header("connection", "close");
      const err = new ApiError(
        429,
        `the server is receiving or working on ${Math.round(inflightBytes / 2 ** 20)} MiB of requests; retry later`,
        { code: "rate_limit_exceeded", retryAfterSeconds: 1 },
      );
      return sendError(reply, err, dialectOf(request));
    }
    inflightBytes += bytes;
    reply.raw.once("close", () => {
      inflightBytes -= bytes;
    });
  });

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
    await cohereRoutes(scope as unknown as App, ctx);
    await teiRoutes(scope as unknown as App, ctx);
    await rerankRoutes(scope as unknown as App, ctx);
    await jobRoutes(scope as unknown as App, ctx);
    await batchRoutes(scope as unknown as App, ctx);
  });
  return app;
}
