import type { AddressInfo } from "node:net";
import { type ServerConfigInput, serverConfig } from "../config.js";
import { jobComputers } from "../jobs/computers.js";
import { createJobSystem } from "../jobs/system.js";
import type { Executor, ModelSpec } from "../serving/executor.js";
import { Metrics } from "../serving/metrics.js";
import { ServingStack } from "../serving/stack.js";
import type { App, AppContext, ServerState } from "./context.js";
import { buildServer } from "./server.js";

export interface RunningServer {
  app: App;
  url: string;
  ctx: AppContext;
  executor: Executor;
  /** Resolves when every model is loaded and warmed (rejects if one fails). */
  loaded: Promise<void>;
  /** Stop accepting, finish in-flight requests, stop the device workers. */
  close: () => Promise<void>;
}

/**
 * Listen first, then load the models: /health answers at once and /ready turns 200 only when
 * every model is loaded and has run a warm-up batch.
 */
export async function startServer(
  specs: ModelSpec[],
  partial: ServerConfigInput = {},
): Promise<RunningServer> {
  const config = serverConfig(partial);
  const metrics = new Metrics();
  const state: ServerState = { ready: false, draining: false };
  // The stack's log goes to the app's logger, which exists only once the app is built.
  let log: (event: string, detail: Record<string, unknown>, level?: "info" | "warn") => void = () => {};
  const stack = new ServingStack(config, metrics, (event, detail, level) => log(event, detail, level));
  const registry = stack.registry;
  const ctx: AppContext = { config, registry, metrics, state };
  const app = await buildServer(ctx);
  log = (event, detail, level = "warn") => app.log[level](detail, event);
  const jobs = createJobSystem(config.jobs, (message, detail) => app.log.warn(detail ?? {}, message));
  ctx.jobs = jobs;
  const executor: Executor = stack.executor;
  state.workers = () => stack.executor.status();
  await app.listen({ host: config.host, port: config.port });
  const addr = app.server.address() as AddressInfo;
  const host = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  const url = `http://${host}:${addr.port}`;

  const loaded = (async () => {
    try {
      for (const model of await stack.load(specs)) {
        app.log.info({ model: model.id, kind: model.kind, source: model.source }, "model ready");
      }
      state.ready = true;
      // The API's own device workers take job chunks too, unless they are left to worker hosts.
      if (config.jobs.concurrency > 0) jobs.engine.work(jobComputers(ctx), config.jobs.concurrency);
    } catch (err) {
      state.loadError = (err as Error).message;
      throw err;
    }
  })();
  // The caller decides what a load failure means; an unobserved rejection must not crash the process.
  loaded.catch(() => {});

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      state.draining = true;
      await app.close();
      await loaded.catch(() => {});
      await jobs.close();
      await stack.close();
    })();
    return closing;
  };
  return { app, url, ctx, executor, loaded, close };
}
