import type { FastifyError } from "fastify";
import { FlagserveError } from "../runtime/errors.js";
import { NonFiniteOutputError, RequestError } from "../serving/errors.js";
import { ClosedError, DeadlineError, OverloadedError } from "../serving/scheduler.js";
import { WorkerUnavailableError } from "../serving/worker-pool.js";
import { ApiError } from "./errors.js";

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
  if (err instanceof NonFiniteOutputError)
    return new ApiError(500, err.message, { code: "non_finite_output" });
  if (err instanceof RequestError) {
    const status = err.kind === "invalid" ? 400 : err.kind === "not_found" ? 404 : 503;
    return new ApiError(status, err.message, {
      param: err.param,
      code: err.code,
      ...(err.retryAfterSeconds !== undefined ? { retryAfterSeconds: err.retryAfterSeconds } : {}),
    });
  }
  if (err instanceof FlagserveError && err.kind === "invalid_input") return new ApiError(400, err.message);
  if (err instanceof FlagserveError && err.kind === "not_supported")
    return new ApiError(400, err.message, { code: "not_supported" });
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
  // A union of literals (enums written as anyOf): name the accepted values, not "a schema in anyOf".
  const allowed = errors
    .filter((x) => x.instancePath === e.instancePath)
    .flatMap((x) =>
      x.keyword === "const"
        ? [x.params?.allowedValue]
        : x.keyword === "enum"
          ? (x.params?.allowedValues as unknown[])
          : [],
    );
  if (allowed.length > 0 && (e.keyword === "anyOf" || e.keyword === "const" || e.keyword === "enum")) {
    return new ApiError(400, `${where} must be one of ${allowed.map((v) => JSON.stringify(v)).join(", ")}`, {
      param,
    });
  }
  return new ApiError(400, `${where} ${e.message ?? "is invalid"}`, { param });
}
