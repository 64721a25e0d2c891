import { startServer } from "../api/start.js";
import type { InputType, ModelSpec } from "../serving/models.js";
import { parseModelArg } from "../serving/models.js";
import { bool, type FlagSpecs, helpText, int, list, parseFlags, str, UsageError } from "./args.js";
import { MODEL_FLAGS, modelOptions } from "./model-flags.js";

export const DEFAULT_MODEL = "BAAI/bge-small-en-v1.5";

const FLAGS: FlagSpecs = {
  model: {
    type: "string",
    multiple: true,
    help: "model directory or Hugging Face id, optionally =ALIAS; repeatable",
    default: DEFAULT_MODEL,
  },
  host: { type: "string", help: "address to listen on", default: "127.0.0.1" },
  port: { type: "string", help: "port to listen on", default: "8080" },
  "api-key": { type: "string", multiple: true, help: "accepted bearer token; repeatable (none: no auth)" },
  "cors-origin": { type: "string", multiple: true, help: 'allowed CORS origin, or "*"; repeatable' },
  "strict-models": {
    type: "boolean",
    help: "404 for model names that are not served (default: the only embedder answers)",
  },
  "token-ids": {
    type: "string",
    help: "token-id inputs are cl100k (OpenAI clients) or model (own vocabulary)",
    default: "cl100k",
  },
  "input-type": {
    type: "string",
    help: "input type when a request gives none: passage or query",
    default: "passage",
  },
  "max-inputs": { type: "string", help: "inputs per request", default: "2048" },
  "max-request-tokens": { type: "string", help: "tokens per request", default: String(2048 * 8192) },
  "body-limit-mb": { type: "string", help: "request body limit in MiB (413 above)", default: "128" },
  "request-timeout": { type: "string", help: "seconds a request may take before a 503", default: "120" },
  "max-batch-tokens": { type: "string", help: "padded tokens per batch", default: "16384" },
  "max-batch-size": { type: "string", help: "inputs per batch", default: "64" },
  "batch-window-ms": { type: "string", help: "how long a lone input waits for company", default: "2" },
  "max-queue": { type: "string", help: "inputs that may wait per model before 429s", default: "16384" },
  "redis-url": {
    type: "string",
    help: "Redis for bulk jobs shared with other hosts (default: in-process queue)",
  },
  "results-dir": {
    type: "string",
    help: "job data in this directory (shared by all hosts) instead of Redis",
  },
  "job-concurrency": {
    type: "string",
    help: "job chunks this server computes at once (0: leave them to workers)",
    default: "2",
  },
  "job-chunk-size": { type: "string", help: "inputs per job chunk", default: "1024" },
  "job-ttl-hours": { type: "string", help: "hours finished jobs and their results are kept", default: "168" },
  "chunk-lock-seconds": {
    type: "string",
    help: "a chunk whose worker went silent this long is retried",
    default: "60",
  },
  "log-level": { type: "string", help: "fatal, error, warn, info, debug", default: "info" },
  ...MODEL_FLAGS,
  verbose: { type: "boolean", help: "stack traces on errors" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

export const SERVE_USAGE = helpText(
  "Usage: flagserve serve [--model ID_OR_DIR[=ALIAS] ...] [options]\n\n" +
    "OpenAI-compatible /v1/embeddings, TEI-compatible /embed, /tokenize, /info; docs at /docs.",
  FLAGS,
);

export async function serveCommand(argv: string[]): Promise<void> {
  const { values } = parseFlags(argv, FLAGS);
  if (bool(values, "help")) {
    process.stdout.write(SERVE_USAGE);
    return;
  }
  const tokenIds = str(values, "token-ids") ?? "cl100k";
  if (tokenIds !== "cl100k" && tokenIds !== "model")
    throw new UsageError("--token-ids must be cl100k or model");
  const inputType = str(values, "input-type") ?? "passage";
  if (inputType !== "passage" && inputType !== "query")
    throw new UsageError("--input-type must be passage or query");
  const port = int(values, "port", 0) ?? 8080;

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
      defaultInputType: perModel.get(alias ?? source) ?? perModel.get(source) ?? (inputType as InputType),
    };
  });

  const server = await startServer(specs, {
    host: str(values, "host") ?? "127.0.0.1",
    devices: str(values, "devices") ?? "cpu",
    port,
    apiKeys: list(values, "api-key"),
    corsOrigins: list(values, "cors-origin"),
    strictModels: bool(values, "strict-models"),
    tokenIds,
    logLevel: str(values, "log-level") ?? "info",
    limits: {
      maxInputs: int(values, "max-inputs") ?? 2048,
      maxRequestTokens: int(values, "max-request-tokens") ?? 2048 * 8192,
      bodyLimit: (int(values, "body-limit-mb") ?? 128) * 1024 * 1024,
      requestTimeoutMs: (int(values, "request-timeout") ?? 120) * 1000,
    },
    jobs: {
      ...(str(values, "redis-url") ? { redisUrl: str(values, "redis-url") as string } : {}),
      ...(str(values, "results-dir") ? { resultsDir: str(values, "results-dir") as string } : {}),
      concurrency: int(values, "job-concurrency", 0) ?? 2,
      chunkSize: int(values, "job-chunk-size") ?? 1024,
      ttlSeconds: (int(values, "job-ttl-hours") ?? 168) * 3600,
      chunkLockSeconds: int(values, "chunk-lock-seconds") ?? 60,
    },
    scheduler: {
      maxBatchTokens: int(values, "max-batch-tokens") ?? 16384,
      maxBatchSize: int(values, "max-batch-size") ?? 64,
      windowMs: int(values, "batch-window-ms", 0) ?? 2,
      maxQueuedInputs: int(values, "max-queue") ?? 16384,
    },
  });
  server.app.log.info(`flagserve listening on ${server.url} (docs at ${server.url}/docs)`);

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
  server.app.log.info("all models ready");
}
