import { createHash, timingSafeEqual } from "node:crypto";
import cors from "@fastify/cors";
import multipart from "@fastify/multipart";
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyRequest,
  LogController,
} from "fastify";
import type { JobSystem } from "../jobs/system.js";
import { FlagserveError } from "../runtime/errors.js";
import type { ModelRegistry } from "../serving/models.js";
import { ClosedError, DeadlineError, OverloadedError } from "../serving/scheduler.js";
import { type WorkerStatus, WorkerUnavailableError } from "../serving/worker-pool.js";
import type { ServerConfig } from "./config.js";
import { ApiError, type ErrorDialect, sendError } from "./errors.js";
import type { Metrics } from "./metrics.js";
import { batchRoutes } from "./routes/batches.js";
import { jobRoutes } from "./routes/jobs.js";
import { openaiRoutes } from "./routes/openai.js";
import { opsRoutes } from "./routes/ops.js";
import { rerankRoutes } from "./routes/rerank.js";
import { teiRoutes } from "./routes/tei.js";
import { OpenAIError, TeiError } from "./schemas.js";

export const VERSION = "0.1.0";

/** Process-wide serving state the operational routes report. */
export interface ServerState {
  /** Models loaded and warmed. */
  ready: boolean;
  /** SIGTERM received: finishing in-flight work, taking no new. */
  draining: boolean;
  /** Why loading failed, if it did. */
  loadError?: string;
  /** The device workers and whether each is alive. */
  workers?: () => WorkerStatus[];
}

export interface AppContext {
  config: ServerConfig;
  registry: ModelRegistry;
  metrics: Metrics;
  state: ServerState;
  /** Bulk jobs and the OpenAI Batch API. */
  jobs?: JobSystem;
}

declare module "fastify" {
  interface FastifyRequest {
    /** Epoch milliseconds after which this request is abandoned (503), counted from arrival. */
    deadline: number;
    /** Who owns what this request creates: a hash of its API key, or "anonymous". */
    owner: string;
  }
  interface FastifyContextConfig {
    /** Error body format of the route. */
    dialect?: ErrorDialect;
    /** Reachable without an API key (health, metrics, docs). */
    public?: boolean;
  }
}

export type App = FastifyInstance<
  import("node:http").Server,
  import("node:http").IncomingMessage,
  import("node:http").ServerResponse,
  import("fastify").FastifyBaseLogger,
  TypeBoxTypeProvider
>;

function digest(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

/** Compare a presented key with every configured one in constant time (no early exit, equal lengths). */
export function keyMatches(presented: string, keys: Buffer[]): boolean {
  const d = digest(presented);
  let ok = false;
  for (const k of keys) ok = timingSafeEqual(d, k) || ok;
  return ok;
}

function dialectOf(request: FastifyRequest): ErrorDialect {
  return request.routeOptions.config?.dialect ?? "openai";
}

/** Turn whatever a handler or Fastify threw into an ApiError. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof OverloadedError) {
    return new ApiError(429, `${err.message}; retry later`, {
      code: "rate_limit_exceeded",
      retryAfterSeconds: err.retryAfterSeconds,
    });
  }
  if (err instanceof DeadlineError) {
    return new ApiError(503, `the server is too busy: ${err.message}`, {
      code: "timeout",
      retryAfterSeconds: 1,
    });
  }
  if (err instanceof WorkerUnavailableError) {
    return new ApiError(503, err.message, { code: "worker_unavailable", retryAfterSeconds: 2 });
  }
  if (err instanceof ClosedError) {
    return new ApiError(503, err.message, { code: "shutting_down", retryAfterSeconds: 1 });
  }
  if (err instanceof FlagserveError && err.kind === "invalid_input") return new ApiError(400, err.message);
  const fe = err as FastifyError & {
    validation?: {
      instancePath: string;
      message?: string;
      params?: Record<string, unknown>;
      keyword: string;
    }[];
  };
  if (fe?.validation && fe.validation.length > 0) return validationError(fe.validation, fe.validationContext);
  switch (fe?.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new ApiError(413, "request body is larger than the server accepts", {
        code: "request_too_large",
      });
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new ApiError(400, "request body is empty; send a JSON object");
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new ApiError(415, "unsupported Content-Type; send application/json", {
        code: "unsupported_media_type",
      });
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      return new ApiError(400, `request body is not valid JSON: ${fe.message}`, { code: "invalid_json" });
  }
  if (err instanceof SyntaxError || (fe?.statusCode === 400 && /JSON/.test(fe.message))) {
    return new ApiError(400, `request body is not valid JSON: ${fe.message}`, { code: "invalid_json" });
  }
  if (typeof fe?.statusCode === "number" && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new ApiError(fe.statusCode, fe.message);
  }
  return new ApiError(500, "internal error; see the server log", { code: "internal_error" });
}

const UNION_HINTS: Record<string, string> = {
  input:
    "input must be a string, an array of strings, or token ids (an array of integers, or an array of integer arrays)",
  inputs: "inputs must be a string, an array of strings, or token ids",
  documents: "documents must be an array of strings or of {text} objects",
};

function validationError(
  errors: { instancePath: string; message?: string; params?: Record<string, unknown>; keyword: string }[],
  context: string | undefined,
): ApiError {
  // With a union (anyOf), the first errors are those of its branches; the anyOf one names the field.
  const e = (errors.find((x) => x.keyword === "anyOf") ?? errors[0]) as (typeof errors)[number];
  const path = e.instancePath.replace(/^\//, "").split("/");
  let param = path[0] || null;
  if (e.keyword === "required" && typeof e.params?.missingProperty === "string") {
    param = e.params.missingProperty;
    return new ApiError(400, `missing required field "${param}"`, { param });
  }
  if (context && context !== "body" && !param) param = context;
  if (param && UNION_HINTS[param] && (e.keyword === "anyOf" || path.length > 1)) {
    return new ApiError(400, UNION_HINTS[param] as string, { param });
  }
  const where = e.instancePath ? e.instancePath.replace(/^\//, "").replaceAll("/", ".") : (context ?? "body");
  return new ApiError(400, `${where} ${e.message ?? "is invalid"}`, { param });
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
    return503OnClosing: true,
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

  const keys = config.apiKeys.map(digest);
  app.addHook("onRequest", async (request, reply) => {
    (request as { startedAt?: bigint }).startedAt = process.hrtime.bigint();
    request.deadline = Date.now() + config.limits.requestTimeoutMs;
    if (keys.length === 0 || request.routeOptions.config?.public || request.url.startsWith("/docs")) return;
    if (request.method === "OPTIONS") return;
    const header = request.headers.authorization ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    const presented = m ? (m[1] as string).trim() : "";
    if (!m || !keyMatches(presented, keys)) {
      const err = new ApiError(
        401,
        m ? "Incorrect API key provided" : "Missing API key: send Authorization: Bearer KEY",
        {
          code: "invalid_api_key",
        },
      );
      return sendError(reply, err, dialectOf(request));
    }
    request.owner = digest(presented).toString("hex").slice(0, 32);
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
    await teiRoutes(scope as unknown as App, ctx);
    await rerankRoutes(scope as unknown as App, ctx);
    await jobRoutes(scope as unknown as App, ctx);
    await batchRoutes(scope as unknown as App, ctx);
  });
  return app;
}
