// What every route shares beyond its own schema: the statuses the hooks, the body parser and the
// error handler answer with, public routes without security, 405 for a known path with another
// method, 415 for bodies a multipart route cannot read. The OpenAPI document states all of it.
import type { TSchema } from "@sinclair/typebox";
import type { FastifyReply, FastifyRequest, FastifySchema, RouteOptions } from "fastify";
import { ApiError, type ErrorDialect, sendError } from "./errors.js";
import { errorResponses } from "./schemas.js";

declare module "fastify" {
  interface FastifySchema {
    /**
     * Documentation only: the multipart body the handler reads part by part (Fastify has no body
     * to validate then), shown in the OpenAPI document as the operation's request body.
     */
    multipartBody?: TSchema;
    /** @fastify/swagger: media types of the request body. */
    consumes?: readonly string[];
  }
}

/** Methods Fastify reads a body for, and may so refuse with 400 (bad JSON), 413 or 415. */
const BODY_METHODS = new Set(["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY"]);

const dialectOfRoute = (config: unknown): ErrorDialect =>
  (config as { dialect?: ErrorDialect } | undefined)?.dialect ?? "openai";

const isPublic = (config: unknown): boolean => (config as { public?: boolean } | undefined)?.public === true;

/** A route URL as a regular expression over request paths; none for catch-alls (CORS preflight). */
function pathPattern(url: string): RegExp | undefined {
  if (url === "*" || url === "/*") return undefined;
  const segments = url.split("/").map((s) => {
    if (s === "*") return ".*";
    if (s.startsWith(":")) return "[^/]+";
    return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  });
  return new RegExp(`^${segments.join("/")}$`);
}

/** Every registered path and its methods, to tell a wrong method (405) from an unknown path (404). */
export class RouteTable {
  private readonly paths = new Map<
    string,
    { pattern: RegExp; methods: Set<string>; dialect: ErrorDialect }
  >();

  /** An onRoute hook: record the route, and refuse other media types on multipart-only routes. */
  readonly onRoute = (route: RouteOptions): void => {
    const pattern = pathPattern(route.url);
    if (pattern) {
      const entry = this.paths.get(route.url) ?? {
        pattern,
        methods: new Set<string>(),
        dialect: dialectOfRoute(route.config),
      };
      for (const m of Array.isArray(route.method) ? route.method : [route.method]) {
        entry.methods.add(m);
        if (m === "GET") entry.methods.add("HEAD"); // Fastify answers HEAD for every GET route
      }
      this.paths.set(route.url, entry);
    }
    const consumes = (route.schema as FastifySchema | undefined)?.consumes;
    if (consumes?.length && consumes.every((c) => c.startsWith("multipart/"))) {
      const hooks = route.onRequest === undefined ? [] : [route.onRequest].flat();
      route.onRequest = [...hooks, refuseOtherMediaTypes(consumes, dialectOfRoute(route.config))] as never;
    }
  };

  /** The methods a request path has, and its routes' error dialect; undefined for unknown paths. */
  allowed(path: string): { methods: string[]; dialect: ErrorDialect } | undefined {
    const methods = new Set<string>();
    let dialect: ErrorDialect | undefined;
    for (const entry of this.paths.values()) {
      if (!entry.pattern.test(path)) continue;
      for (const m of entry.methods) methods.add(m);
      dialect ??= entry.dialect;
    }
    return dialect === undefined ? undefined : { methods: [...methods].sort(), dialect };
  }

  /**
   * An onRequest hook: a request no route matched, on a path that exists with other methods, is
   * a 405 with Allow, in the error shape of that path's routes. It runs before authentication
   * (the paths are public in the document anyway) and before the body is parsed, so a QUERY
   * without Content-Type is a 405 as well.
   */
  readonly methodNotAllowed = async (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    if (!request.is404) return;
    const path = request.url.split("?")[0] ?? "/";
    const found = this.allowed(path);
    if (!found) return;
    reply.header("Allow", found.methods.join(", "));
    const err = new ApiError(
      405,
      `method ${request.method} is not allowed on ${path}; allowed: ${found.methods.join(", ")}`,
      { code: "method_not_allowed" },
    );
    return sendError(reply, err, found.dialect);
  };
}

/**
 * Fastify's `frameworkErrors`: what the router refuses before any route runs (a path segment that
 * is not valid percent-encoding, a path parameter over maxParamLength), in our error shape and
 * the dialect of the path's routes, instead of Fastify's own body.
 */
export function frameworkErrors(routes: RouteTable) {
  return (err: Error & { code?: string }, request: FastifyRequest, reply: FastifyReply): void => {
    const path = (request.raw.url ?? "/").split("?")[0] ?? "/";
    const dialect = routes.allowed(path)?.dialect ?? "openai";
    const apiError =
      err.code === "FST_ERR_MAX_PARAM_LENGTH"
        ? new ApiError(414, `a path parameter is longer than ${MAX_PARAM_LENGTH} characters`, {
            code: "path_too_long",
          })
        : err.code === "FST_ERR_BAD_URL"
          ? new ApiError(400, "the path is not valid percent-encoding", { code: "invalid_url" })
          : new ApiError(500, "internal error; see the server log", { code: "internal_error" });
    void sendError(reply, apiError, dialect);
  };
}

/** Fastify's default limit on one path parameter (ids here are far shorter). */
export const MAX_PARAM_LENGTH = 100;

/** 415 before the body is read when it is not one of the media types the route consumes. */
function refuseOtherMediaTypes(consumes: readonly string[], dialect: ErrorDialect) {
  return async (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
    const type = (request.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
    if (consumes.includes(type)) return;
    const err = new ApiError(415, `send the body as ${consumes.join(" or ")}${type ? `, not ${type}` : ""}`, {
      code: "unsupported_media_type",
    });
    return sendError(reply, err, dialect);
  };
}

/**
 * @fastify/swagger's transform: the route's own responses plus those of the shared machinery,
 * `security: []` on public routes, and a multipart body where the route reads one.
 *
 * - every route but the public ones: 401 (API keys), 503 (draining after SIGTERM; also loading
 *   and deadlines), 500 (the error handler's last resort);
 * - methods with a body: 400 / 422 (TEI) for JSON that does not parse or validate, 413, 415, and
 *   429 when too many request bytes are in flight (server.ts admits bodies by size);
 * - a query string schema: 400 / 422 when it does not validate;
 * - path parameters: 400 for a path that is not valid percent-encoding, 414 for a parameter
 *   over MAX_PARAM_LENGTH (frameworkErrors).
 */
export function documentRoute({ schema, route }: { schema: FastifySchema; route: RouteOptions }): {
  schema: FastifySchema;
} {
  if (!schema) return { schema };
  const dialect = dialectOfRoute(route.config);
  const invalid = dialect === "tei" ? 422 : 400;
  const statuses = new Set<number>();
  if (!isPublic(route.config)) for (const s of [401, 500, 503]) statuses.add(s);
  const methods = Array.isArray(route.method) ? route.method : [route.method];
  if (methods.some((m) => BODY_METHODS.has(m))) for (const s of [invalid, 413, 415, 429]) statuses.add(s);
  if (schema.querystring) statuses.add(invalid);
  if (route.url.includes("/:") || route.url.endsWith("/*")) statuses.add(400);
  if (route.url.includes("/:")) statuses.add(414);
  const own = (schema.response ?? {}) as Record<string, unknown>;
  const shared = errorResponses(
    dialect,
    [...statuses].filter((s) => !(String(s) in own)),
  );
  const out: FastifySchema = {
    ...schema,
    response: Object.fromEntries(
      Object.entries({ ...shared, ...own }).sort(([a], [b]) => Number(a) - Number(b)),
    ),
  };
  if (isPublic(route.config)) (out as { security?: unknown[] }).security = [];
  if (schema.multipartBody) out.body = schema.multipartBody;
  return { schema: out };
}
