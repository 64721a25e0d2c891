import type { FastifyError } from "fastify";
import { FlagserveError } from "../runtime/errors.js";
import { NonFiniteOutputError, RequestError } from "../serving/errors.js";
import {
  CancelledError,
  ClosedError,
  DeadlineError,
  OverloadedError,
  TooLargeForDeadlineError,
} from "../serving/scheduler.js";
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
  if (err instanceof TooLargeForDeadlineError) {
    return new ApiError(413, err.message, { code: "exceeds_deadline" });
  }
  // Nobody reads this answer (the client is gone); 499 as nginx logs it.
  if (err instanceof CancelledError) return new ApiError(499, err.message, { code: "client_closed_request" });
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
  const fe = err as FastifyError & { validation?: AjvError[] };
  if (fe?.validation && fe.validation.length > 0) {
    try {
      return validationError(fe.validation, fe.validationContext);
    } catch {
      // The mapping must never turn a 400 into a 500 (the error handler would fail).
      return new ApiError(400, `${fe.validationContext ?? "body"} is invalid: ${fe.message}`);
    }
  }
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

/** An Ajv error; `schema` and `data` are there because the validator is verbose. */
interface AjvError {
  instancePath: string;
  message?: string;
  params?: Record<string, unknown>;
  keyword: string;
  schema?: unknown;
  data?: unknown;
}

const RANGE = new Set(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]);

/** A JSON pointer as the field path a client wrote: /documents/0/text -> documents[0].text */
function fieldPath(pointer: string): string {
  return pointer
    .split("/")
    .slice(1)
    .map((s, i) => (/^\d+$/.test(s) ? `[${s}]` : i === 0 ? s : `.${s}`))
    .join("");
}

/** "top_n must be at least 1, got 0", or "between 1 and 64" where the schema has both bounds. */
function rangeMessage(where: string, e: AjvError): string {
  const bounds = (e as { parentSchema?: { minimum?: number; maximum?: number } }).parentSchema ?? {};
  const got = e.data === undefined ? "" : `, got ${JSON.stringify(e.data)}`;
  if (bounds.minimum !== undefined && bounds.maximum !== undefined)
    return `${where} must be between ${bounds.minimum} and ${bounds.maximum}${got}`;
  if (e.keyword === "minimum") return `${where} must be at least ${e.params?.limit}${got}`;
  if (e.keyword === "maximum") return `${where} must be at most ${e.params?.limit}${got}`;
  return `${where} ${e.message ?? "is out of range"}${got}`;
}

function validationError(errors: AjvError[], context: string | undefined): ApiError {
  // "Exactly one of these fields" (oneOf of required lists): name the fields, not the branches.
  const one = errors.find((x) => x.keyword === "oneOf" && Array.isArray(x.schema));
  const given = one?.data;
  if (one && given !== null && typeof given === "object" && !Array.isArray(given)) {
    const names = (one.schema as { required?: string[] }[]).flatMap((b) => b.required ?? []);
    if (names.length > 0) {
      const param = names.find((n) => !(n in given)) ?? (names.at(-1) as string);
      return new ApiError(400, `give exactly one of ${names.join(", ")}`, { param });
    }
  }
  // A body of the wrong type can fail a oneOf of required lists first; its type is the news.
  if (one) return new ApiError(400, `${context ?? "body"} must be an object`, { param: null });
  // With a union (anyOf), the first errors are those of its branches; the anyOf one names the field,
  // unless a branch got as far as a value of the right type out of its range: that says more.
  const union = errors.find((x) => x.keyword === "anyOf");
  const inRange = union
    ? errors.find(
        (x) =>
          RANGE.has(x.keyword) &&
          (x.instancePath === union.instancePath || x.instancePath.startsWith(`${union.instancePath}/`)),
      )
    : undefined;
  const e = (inRange ?? union ?? errors[0]) as AjvError;
  const path = e.instancePath.replace(/^\//, "").split("/");
  let param = path[0] || null;
  if (e.keyword === "required" && typeof e.params?.missingProperty === "string") {
    param = e.params.missingProperty;
    return new ApiError(400, `missing required field "${param}"`, { param });
  }
  if (context && context !== "body" && !param) param = context;
  const where = e.instancePath ? fieldPath(e.instancePath) : (context ?? "body");
  if (RANGE.has(e.keyword)) return new ApiError(400, rangeMessage(where, e), { param });
  // Array sizes (of any branch of a union): the messages and codes the services use for them.
  const size = errors.find(
    (x) => x.instancePath === e.instancePath && (x.keyword === "minItems" || x.keyword === "maxItems"),
  );
  if (size?.keyword === "minItems" && size.params?.limit === 1) {
    return new ApiError(400, `${where} must not be empty`, { param, code: "empty" });
  }
  if (size?.keyword === "maxItems") {
    const n = Array.isArray(size.data) ? size.data.length : "too many";
    return new ApiError(
      400,
      `${where} has ${n} items; at most ${size.params?.limit} are accepted per request`,
      { param },
    );
  }
  if (param && UNION_HINTS[param] && (e.keyword === "anyOf" || path.length > 1)) {
    return new ApiError(400, UNION_HINTS[param] as string, { param });
  }
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
