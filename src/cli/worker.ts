import { DEFAULT_CONFIG, type ServerConfig, type ServerConfigInput, serverConfig } from "../config.js";
import { jobComputers } from "../jobs/computers.js";
import { createJobSystem } from "../jobs/system.js";
import type { ModelSpec } from "../serving/executor.js";
import { Metrics } from "../serving/metrics.js";
import { ServingStack } from "../serving/stack.js";
import {
  bool,
  type FlagSpecs,
  type FlagValues,
  helpText,
  int,
  list,
  parseFlags,
  str,
  UsageError,
} from "./args.js";
import { MODEL_FLAGS, modelOptions, parseModelArg, taskInstructions } from "./model-flags.js";
import { applySettingFlags, settingFlags } from "./settings.js";

export const WORKER_FLAGS: FlagSpecs = {
  "redis-url": { type: "string", help: "Redis holding the job queue (required)" },
  model: {
    type: "string",
    multiple: true,
    help: "model to serve jobs for, ID_OR_DIR[=ALIAS] as the API names it; repeatable",
  },
  concurrency: {
    type: "string",
    help: "chunks computed at once",
    default: String(DEFAULT_CONFIG.jobs.concurrency),
  },
  "results-dir": { type: "string", help: "job data directory shared with the API (default: in Redis)" },
  // Batching, deadlines, memory and job data lifetimes: the same settings as the API's.
  ...settingFlags("worker"),
  ...MODEL_FLAGS,
  verbose: { type: "boolean", help: "stack traces on errors" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

export const WORKER_USAGE = helpText(
  "Usage: flagserve worker --redis-url redis://HOST:6379 --model ID_OR_DIR[=ALIAS] ... [--devices cuda:0,cuda:1]\n\n" +
    "Computes bulk-job chunks from the shared queue on this machine's devices; run one per GPU host.",
  WORKER_FLAGS,
);

export async function workerCommand(argv: string[]): Promise<void> {
  const { values } = parseFlags(argv, WORKER_FLAGS);
  if (bool(values, "help")) {
    process.stdout.write(WORKER_USAGE);
    return;
  }
  const redisUrl = str(values, "redis-url");
  if (!redisUrl) throw new UsageError("--redis-url is required: workers take chunks from the shared queue");
  const models = list(values, "model");
  if (models.length === 0) throw new UsageError("--model is required (the models the API serves jobs for)");
  const specs: ModelSpec[] = models.map((arg) => {
    const { source, alias } = parseModelArg(arg);
    return {
      source,
      ...(alias ? { alias } : {}),
      options: modelOptions(values, source),
      ...taskInstructions(values),
    };
  });
  const log = (msg: string, detail?: Record<string, unknown>) =>
    process.stderr.write(`flagserve worker: ${msg}${detail ? ` ${JSON.stringify(detail)}` : ""}\n`);
  const config = workerConfig(values, redisUrl);
  const metrics = new Metrics();
  const stack = new ServingStack(config, metrics, log);
  await stack.load(specs);
  const registry = stack.registry;
  const jobs = createJobSystem(config.jobs, log);
  const state = { ready: true };
  jobs.engine.work(jobComputers({ config, registry, metrics, state }), config.jobs.concurrency);
  log(`taking chunks for ${registry.models.map((m) => m.id).join(", ")} on ${config.devices}`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: finishing the chunks in hand`);
    (async () => {
      await jobs.close();
      await stack.close();
    })().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

/** The worker's configuration from its flags: the same settings table and defaults as `serve`. */
export function workerConfig(values: FlagValues, redisUrl: string): ServerConfig {
  const resultsDir = str(values, "results-dir");
  const input: ServerConfigInput = {
    devices: str(values, "devices") ?? DEFAULT_CONFIG.devices,
    jobs: {
      redisUrl,
      ...(resultsDir ? { resultsDir } : {}),
      concurrency: int(values, "concurrency") ?? DEFAULT_CONFIG.jobs.concurrency,
    },
  };
  applySettingFlags(values, input, "worker");
  return serverConfig(input);
}
