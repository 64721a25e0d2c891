import type { ServerConfig } from "../config.js";
import type { Metrics } from "./metrics.js";
import type { ModelRegistry } from "./registry.js";

/** What the services need of the process that serves: settings, models, metrics, readiness. */
export interface ServingContext {
  config: ServerConfig;
  registry: ModelRegistry;
  metrics: Metrics;
  state: { ready: boolean };
}
