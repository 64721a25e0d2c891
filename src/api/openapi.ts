import { serverConfig } from "../config.js";
import { Metrics } from "../serving/metrics.js";
import { ModelRegistry } from "../serving/registry.js";
import { buildServer } from "./server.js";

/** The OpenAPI document of the routes, generated from their schemas (no model needs to be loaded). */
export async function openApiDocument(): Promise<unknown> {
  const app = await buildServer({
    config: serverConfig({ logLevel: "silent" }),
    registry: new ModelRegistry(),
    metrics: new Metrics(),
    state: { ready: false, draining: false },
  });
  await app.ready();
  const doc = app.swagger();
  await app.close();
  return doc;
}

export function stableJson(doc: unknown): string {
  return `${JSON.stringify(doc, null, 2)}\n`;
}
