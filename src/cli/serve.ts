import { startServer } from "../api/start.js";
import { DEFAULT_CONFIG, DEFAULT_MODEL, type ServerConfigInput } from "../config.js";
import type { InputType, ModelSpec } from "../serving/executor.js";

import { bool, type FlagSpecs, helpText, int, list, parseFlags, str, UsageError } from "./args.js";
import { MODEL_FLAGS, modelOptions, parseModelArg, taskInstructions } from "./model-flags.js";
import { applySettingFlags, settingFlags } from "./settings.js";

const D = DEFAULT_CONFIG;

export const SERVE_FLAGS: FlagSpecs = {
  model: {
    type: "string",
    multiple: true,
    help: "model directory or Hugging Face id, optionally =ALIAS; repeatable",
    default: DEFAULT_MODEL,
  },
  host: { type: "string", help: "address to listen on", default: D.host },
  port: { type: "string", help: "port to listen on", default: String(D.port) },
  "api-key": { type: "string", multiple: true, help: "accepted bearer token; repeatable (none: no auth)" },
  "cors-origin": { type: "string", multiple: true, help: 'allowed CORS origin, or "*"; repeatable' },
  "strict-models": {
    type: "boolean",
    help: "404 for model names that are not served (default: the only embedder answers)",
  },
  "token-ids": {
    type: "string",
    help: "token-id inputs are cl100k (OpenAI clients) or model (own vocabulary)",
    default: D.tokenIds,
  },
  "input-type": {
    type: "string",
    help: "input type when a request gives none: passage or query",
    default: "passage",
  },
  ...settingFlags("serve"),
  "redis-url": {
    type: "string",
    help: "Redis for bulk jobs shared with other hosts (default: in-process queue)",
  },
  "results-dir": {
    type: "string",
    help: "job data in this directory (shared by all hosts) instead of Redis",
  },
  "log-level": { type: "string", help: "fatal, error, warn, info, debug", default: D.logLevel },
  ...MODEL_FLAGS,
  verbose: { type: "boolean", help: "stack traces on errors" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

export const SERVE_USAGE = helpText(
  "Usage: flagserve serve [--model ID_OR_DIR[=ALIAS] ...] [options]\n\n" +
    "OpenAI-compatible /v1/embeddings, TEI-compatible /embed, /tokenize, /info; docs at /docs.",
  SERVE_FLAGS,
);

export async function serveCommand(argv: string[]): Promise<void> {
  const { values } = parseFlags(argv, SERVE_FLAGS);
  if (bool(values, "help")) {
    process.stdout.write(SERVE_USAGE);
    return;
  }
  const tokenIds = str(values, "token-ids") ?? D.tokenIds;
  if (tokenIds !== "cl100k" && tokenIds !== "model")
    throw new UsageError("--token-ids must be cl100k or model");
  const inputType = str(values, "input-type") ?? "passage";
  if (inputType !== "passage" && inputType !== "query")
    throw new UsageError("--input-type must be passage or query");
  const port = int(values, "port", 0) ?? D.port;

  const perModel = new Map<string, InputType>();
  for (const entry of list(values, "model-input-type")) {
    const m = /^(.+)=(query|passage)$/.exec(entry);
    if (!m) throw new UsageError(`--model-input-type takes NAME=query or NAME=passage, got "${entry}"`);
    perModel.set(m[1] as string, m[2] as InputType);
  }
  const models = list(values, "model").length ? list(values, "model") : [DEFAULT_MODEL];
  const specs: ModelSpec[] = models.map((arg) => {
    const { source, alias } = parseModelArg(arg);
    return {
      source,
      ...(alias ? { alias } : {}),
      options: modelOptions(values, source),
      ...taskInstructions(values),
      defaultInputType: perModel.get(alias ?? source) ?? perModel.get(source) ?? (inputType as InputType),
    };
  });

  const input: ServerConfigInput = {
    host: str(values, "host") ?? D.host,
    devices: str(values, "devices") ?? D.devices,
    port,
    apiKeys: list(values, "api-key"),
    corsOrigins: list(values, "cors-origin"),
    strictModels: bool(values, "strict-models"),
    tokenIds,
    logLevel: str(values, "log-level") ?? D.logLevel,
    jobs: {
      ...(str(values, "redis-url") ? { redisUrl: str(values, "redis-url") as string } : {}),
      ...(str(values, "results-dir") ? { resultsDir: str(values, "results-dir") as string } : {}),
    },
  };
  applySettingFlags(values, input, "serve");
  if (input.jobs?.concurrency === 0 && !input.jobs.redisUrl) {
    throw new UsageError(
      "--job-concurrency 0 leaves bulk jobs to `flagserve worker` processes, which share them through " +
        "--redis-url; without it no process would ever compute a job",
    );
  }
  const server = await startServer(specs, input);
  // Not "listening" yet: only once every model has loaded is the server of use (/health answers now).
  server.app.log.info(`loading ${specs.length} model(s); /health and /ready answer at ${server.url}`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    server.app.log.info(`${signal}: finishing in-flight requests`);
    server.close().then(
      () => process.exit(0),
      (err) => {
        server.app.log.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));

  try {
    await server.loaded;
  } catch (err) {
    await server.close().catch(() => {});
    throw err;
  }
  server.app.log.info(`all models ready; flagserve listening on ${server.url} (docs at ${server.url}/docs)`);
}
