// The server as a library: `import { startServer } from "flagserve/server"`.

export { type RunningServer, startServer } from "./api/start.js";
export {
  DEFAULT_CONFIG,
  DEFAULT_MODEL,
  type JobsConfig,
  type Limits,
  type SchedulerOptions,
  type ServerConfig,
  type ServerConfigInput,
  serverConfig,
} from "./config.js";
export type { InputType, ModelSpec } from "./serving/executor.js";
