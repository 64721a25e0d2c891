import { Type as T } from "@sinclair/typebox";
import type { App, AppContext } from "../context.js";
import { mediaResponse, StringEnum } from "../schemas.js";

const Worker = T.Object({
  device: T.String(),
  pid: T.Optional(T.Integer()),
  live: T.Boolean(),
  restarts: T.Integer(),
  inflight: T.Integer(),
});

/** Liveness, readiness, Prometheus metrics and the OpenAPI document; reachable without a key. */
export async function opsRoutes(app: App, ctx: AppContext): Promise<void> {
  const open = { public: true };

  app.get(
    "/health",
    {
      schema: {
        summary: "Liveness: the process answers",
        tags: ["Operations"],
        response: { 200: T.Object({ status: StringEnum(["ok"]) }) },
      },
      config: open,
    },
    async () => ({ status: "ok" as const }),
  );

  app.get(
    "/ready",
    {
      schema: {
        summary:
          "Readiness: models loaded and warmed (503 while loading, after a failure, or while draining)",
        tags: ["Operations"],
        response: {
          200: T.Object({
            status: StringEnum(["ready", "degraded"], {
              description: "degraded: a device worker is restarting",
            }),
            models: T.Array(T.String()),
            workers: T.Array(Worker),
          }),
          503: T.Object({
            status: StringEnum(["loading", "failed", "unavailable", "draining"]),
            reason: T.Optional(T.String()),
            workers: T.Optional(T.Array(Worker)),
          }),
        },
      },
      config: open,
    },
    async (_request, reply) => {
      const { state, registry } = ctx;
      const workers = state.workers?.() ?? [];
      if (state.draining) return reply.code(503).send({ status: "draining" as const });
      if (state.loadError)
        return reply.code(503).send({ status: "failed" as const, reason: state.loadError });
      if (!state.ready) return reply.code(503).send({ status: "loading" as const, workers });
      // Ready while at least one device worker is alive; "degraded" names a restarting one.
      if (!workers.some((w) => w.live)) {
        return reply
          .code(503)
          .send({ status: "unavailable" as const, reason: "no device worker is alive", workers });
      }
      return {
        status: workers.every((w) => w.live) ? ("ready" as const) : ("degraded" as const),
        models: registry.models.map((m) => m.id),
        workers,
      };
    },
  );

  app.get(
    "/metrics",
    {
      schema: {
        summary: "Prometheus metrics",
        tags: ["Operations"],
        response: {
          200: mediaResponse("Prometheus text exposition format", {
            "text/plain": T.String(),
          }),
        },
      },
      config: open,
    },
    async (_request, reply) => {
      for (const m of ctx.registry.models) ctx.metrics.queueDepth.set({ model: m.id }, m.queued);
      const text = await ctx.metrics.registry.metrics();
      return reply.type(ctx.metrics.registry.contentType).send(text);
    },
  );

  app.get(
    "/openapi.json",
    {
      schema: {
        summary: "This server's OpenAPI 3 document",
        tags: ["Operations"],
        response: {
          200: T.Object(
            { openapi: T.String(), info: T.Object({}, { additionalProperties: true }) },
            { additionalProperties: true },
          ),
        },
      },
      config: open,
    },
    async () => app.swagger() as { openapi: string; info: object },
  );
}
