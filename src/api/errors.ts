import { randomUUID } from "node:crypto";
import type { FastifyReply } from "fastify";

/**
 * Which error body a route speaks: OpenAI's (also read by Cohere/Jina rerank clients), TEI's, or
 * Cohere's (the embed API: `{id, message}`).
 */
export type ErrorDialect = "openai" | "tei" | "cohere";

/**
 * An error with everything both dialects need. `param` names the offending request field, as
 * OpenAI's errors do; `teiType` is TEI's error_type.
 */
export class ApiError extends Error {
  readonly status: number;
  readonly type: string;
  readonly code: string | null;
  readonly param: string | null;
  readonly retryAfterSeconds: number | undefined;

  constructor(
    status: number,
    message: string,
    options: { type?: string; code?: string | null; param?: string | null; retryAfterSeconds?: number } = {},
  ) {
    super(message);
    this.status = status;
    this.type = options.type ?? defaultType(status);
    this.code = options.code ?? null;
    this.param = options.param ?? null;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }

  get teiType(): string {
    if (this.status === 429) return "overloaded";
    if (this.status === 503) return "unhealthy";
    if (this.status >= 500) return "backend";
    if (this.status === 413) return "validation";
    if (this.code === "empty") return "empty";
    return "validation";
  }
}

function defaultType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 404) return "invalid_request_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, { param, code });

/** TEI answers over-long inputs with 413, other validation problems with 422, empty batches with 400. */
function teiStatus(err: ApiError): number {
  if (err.status !== 400) return err.status;
  if (err.code === "context_length_exceeded") return 413;
  return err.code === "empty" ? 400 : 422;
}

export function sendError(reply: FastifyReply, err: ApiError, dialect: ErrorDialect): FastifyReply {
  if (err.retryAfterSeconds !== undefined) reply.header("Retry-After", String(err.retryAfterSeconds));
  if (dialect === "tei") {
    return reply.code(teiStatus(err)).send({ error: err.message, error_type: err.teiType });
  }
  if (dialect === "cohere") return reply.code(err.status).send({ id: randomUUID(), message: err.message });
  return reply.code(err.status).send({
    error: { message: err.message, type: err.type, param: err.param, code: err.code },
  });
}
