import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyReply, FastifyRequest } from "fastify";
import { ApiError, type ErrorDialect, sendError } from "./errors.js";

export function digest(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

/** Compare a presented key with every configured one in constant time (no early exit, equal lengths). */
export function keyMatches(presented: string, keys: Buffer[]): boolean {
  const d = digest(presented);
  let ok = false;
  for (const k of keys) ok = timingSafeEqual(d, k) || ok;
  return ok;
}

/**
 * Bearer-token check for every route but the public ones (health, metrics, docs) and CORS
 * preflights; sets request.owner to a hash of the key, so jobs belong to the key that made them.
 */
export function apiKeyHook(apiKeys: string[], dialectOf: (r: FastifyRequest) => ErrorDialect) {
  const keys = apiKeys.map(digest);
  return async (request: FastifyRequest, reply: FastifyReply) => {
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
  };
}
