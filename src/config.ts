// The one place where flagserve's settings and their defaults are written. The CLI help, the
// server, the worker and docs/configuration.md (generated, see scripts/config-docs.ts) read them here.

/** The model `flagserve serve` loads when none is named. */
export const DEFAULT_MODEL = "BAAI/bge-small-en-v1.5";

export interface Limits {
  /** Inputs (texts, token arrays or documents) per request. */
  maxInputs: number;
  /** Tokens per request, counted after truncation with special tokens. */
  maxRequestTokens: number;
  /** Request body bytes; larger bodies get 413. */
  bodyLimit: number;
  /** Milliseconds a request may take before it is answered 503. */
  requestTimeoutMs: number;
  /** Bytes of one uploaded file (POST /v1/files). */
  uploadBytes: number;
  /** Request body bytes of TEI's /tokenize and /decode, whose answers are many times their input. */
  tokenizeBodyLimit: number;
  /**
   * Request body bytes being received or worked on at once, over all requests: beyond it new
   * requests are refused (429) before their body is read, so memory stays bounded.
   */
  inflightBodyBytes: number;
  /** Windows per document a rerank request may ask for (max_chunks_per_doc). */
  maxChunksPerDoc: number;
}

export interface SchedulerOptions {
  /** Padded tokens one batch may hold (rows x longest row); 0 in a config input: AUTO_BATCH_TOKENS. */
  maxBatchTokens: number;
  /** Rows one batch may hold. */
  maxBatchSize: number;
  /** How long the first queued input waits for company before a partial batch is run. */
  windowMs: number;
  /** Inputs that may wait in the queue; beyond it new requests are refused (429). */
  maxQueuedInputs: number;
  /** A request waiting longer than this is served before newer, smaller ones. */
  starvationMs: number;
  /** Real tokens / computed tokens a batch must keep when mixing inputs of different lengths. */
  minPaddingEfficiency: number;
}

export interface JobsConfig {
  /** Redis for jobs shared by several hosts; none keeps the queue in this process. */
  redisUrl?: string;
  /** Job data in this directory (shared by all hosts) instead of Redis. */
  resultsDir?: string;
  /** Inputs per chunk of an embedding job. */
  chunkSize: number;
  /** Request lines per chunk of a Batch API batch. */
  batchChunkSize: number;
  /** Seconds a finished job and its data are kept. */
  ttlSeconds: number;
  /** Seconds an uploaded file (POST /v1/files) is kept. */
  fileTtlSeconds: number;
  /**
   * Seconds one attempt at a chunk may take, waiting for a busy server included; then the
   * attempt fails and is retried (a saturated server is waited out, not forever).
   */
  chunkTimeoutSeconds: number;
  /** Chunks this process computes at once (0: leave them to `flagserve worker` processes). */
  concurrency: number;
  /** A chunk whose worker stopped renewing its lock for this long goes back to the queue. */
  chunkLockSeconds: number;
  /** Tries per chunk, the first included. */
  chunkAttempts: number;
  /** First retry delay of a failed chunk (doubles each time). */
  chunkBackoffMs: number;
}

export interface PoolConfig {
  /** Batches sent to one device worker before it answers (keeps a device busy while results travel). */
  inflightPerWorker: number;
  /**
   * A CPU device worker whose memory grew this many MiB past its size after loading recreates its
   * sessions once it has been idle memoryReturnIdleMs: ONNX Runtime's arena never shrinks. 0: never.
   */
  memoryReturnMib: number;
  memoryReturnIdleMs: number;
}

export interface TokenizerConfig {
  /** Tokenizer threads of the HTTP process; 0: one per CPU core. */
  threads: number;
  /** Heap limit of each tokenizer thread in MiB. */
  heapMb: number;
}

export interface ServerConfig {
  host: string;
  port: number;
  /** Accepted bearer tokens; none means no authentication. */
  apiKeys: string[];
  /** CORS origins ("*" for any); none disables CORS headers. */
  corsOrigins: string[];
  /** Refuse requests naming a model that is not served, instead of using the only one. */
  strictModels: boolean;
  /** How token-id inputs are read: tiktoken cl100k_base ids (what OpenAI clients send) or the model's vocabulary. */
  tokenIds: "cl100k" | "model";
  limits: Limits;
  scheduler: SchedulerOptions;
  pool: PoolConfig;
  tokenizer: TokenizerConfig;
  /** Device workers: "cpu", "cpu:N", "cuda:0,cuda:1" (one child process each). */
  devices: string;
  jobs: JobsConfig;
  logLevel: string;
}

export const DEFAULT_CONFIG: ServerConfig = {
  host: "127.0.0.1",
  port: 8080,
  apiKeys: [],
  corsOrigins: [],
  strictModels: false,
  tokenIds: "cl100k",
  limits: {
    maxInputs: 2048,
    // 2048 inputs of an 8k-token model; the per-input window is the model's own limit.
    maxRequestTokens: 2048 * 8192,
    bodyLimit: 64 * 1024 * 1024,
    requestTimeoutMs: 120_000,
    uploadBytes: 8 * 1024 ** 3,
    tokenizeBodyLimit: 4 * 1024 * 1024,
    inflightBodyBytes: 128 * 1024 * 1024,
    maxChunksPerDoc: 64,
  },
  scheduler: {
    maxBatchTokens: 0,
    maxBatchSize: 64,
    windowMs: 2,
    maxQueuedInputs: 16384,
    starvationMs: 500,
    minPaddingEfficiency: 0.92,
  },
  pool: { inflightPerWorker: 2, memoryReturnMib: 256, memoryReturnIdleMs: 5000 },
  tokenizer: { threads: 0, heapMb: 1024 },
  devices: "cpu",
  jobs: {
    chunkSize: 1024,
    batchChunkSize: 64,
    ttlSeconds: 7 * 24 * 3600,
    fileTtlSeconds: 7 * 24 * 3600,
    chunkTimeoutSeconds: 15 * 60,
    concurrency: 2,
    chunkLockSeconds: 60,
    chunkAttempts: 5,
    chunkBackoffMs: 1000,
  },
  logLevel: "info",
};

/** Settings where every group may be given in part; the rest are defaults. */
export type ServerConfigInput = Partial<
  Omit<ServerConfig, "limits" | "jobs" | "scheduler" | "pool" | "tokenizer">
> & {
  limits?: Partial<Limits>;
  jobs?: Partial<JobsConfig>;
  scheduler?: Partial<SchedulerOptions>;
  pool?: Partial<PoolConfig>;
  tokenizer?: Partial<TokenizerConfig>;
};

/**
 * Padded tokens per batch when none is set (`maxBatchTokens` 0). On CPU, ONNX Runtime computes an
 * encoder 10-20% faster per token in batches of about 2k tokens than in 16k ones (the layers'
 * activations stay near the cores' caches; docs/benchmarks.md has the sweep), and smaller batches
 * also mean shorter waits and a smaller arena. GPUs need the large batches to be kept busy.
 */
export const AUTO_BATCH_TOKENS = { cpu: 2048, gpu: 16384 } as const;

/** Whether a --devices list names a GPU (then the GPU's batch size is used for all). */
function listsGpu(devices: string): boolean {
  return devices.split(",").some((d) => /^cuda(:\d+)?$/i.test(d.trim()));
}

export function serverConfig(partial: ServerConfigInput = {}): ServerConfig {
  const d = DEFAULT_CONFIG;
  const config: ServerConfig = {
    ...d,
    ...partial,
    limits: { ...d.limits, ...partial.limits },
    jobs: { ...d.jobs, ...partial.jobs },
    scheduler: { ...d.scheduler, ...partial.scheduler },
    pool: { ...d.pool, ...partial.pool },
    tokenizer: { ...d.tokenizer, ...partial.tokenizer },
  };
  if (config.scheduler.maxBatchTokens === 0) {
    config.scheduler.maxBatchTokens = listsGpu(config.devices)
      ? AUTO_BATCH_TOKENS.gpu
      : AUTO_BATCH_TOKENS.cpu;
  }
  return config;
}

type NumericGroup = "limits" | "scheduler" | "jobs" | "pool" | "tokenizer";
type NumericKey<G extends NumericGroup> = {
  [K in keyof ServerConfig[G]]: ServerConfig[G][K] extends number ? K : never;
}[keyof ServerConfig[G]];

/**
 * A numeric setting as the command line spells it: `--flag VALUE` in `unit`, stored in the config
 * as VALUE x scale (seconds -> milliseconds, MiB -> bytes, hours -> seconds).
 */
export interface NumericSetting {
  flag: string;
  help: string;
  group: NumericGroup;
  key: string;
  /** Config value = flag value x scale. */
  scale: number;
  /** Smallest value the flag accepts. */
  min: number;
  /** Which commands take it. */
  commands: ("serve" | "worker")[];
}

function setting<G extends NumericGroup>(
  flag: string,
  group: G,
  key: NumericKey<G> & string,
  help: string,
  opts: { scale?: number; min?: number; commands?: ("serve" | "worker")[] } = {},
): NumericSetting {
  return {
    flag,
    help,
    group,
    key,
    scale: opts.scale ?? 1,
    min: opts.min ?? 1,
    commands: opts.commands ?? ["serve"],
  };
}

export const NUMERIC_SETTINGS: NumericSetting[] = [
  setting("max-inputs", "limits", "maxInputs", "inputs per request"),
  setting("max-request-tokens", "limits", "maxRequestTokens", "tokens per request"),
  setting("body-limit-mb", "limits", "bodyLimit", "request body limit in MiB (413 above)", {
    scale: 1024 * 1024,
  }),
  setting(
    "tokenize-body-limit-mb",
    "limits",
    "tokenizeBodyLimit",
    "request body limit of /tokenize and /decode in MiB",
    {
      scale: 1024 * 1024,
    },
  ),
  setting(
    "inflight-body-mb",
    "limits",
    "inflightBodyBytes",
    "request bodies in MiB being worked on at once before 429s",
    {
      scale: 1024 * 1024,
    },
  ),
  setting(
    "max-chunks-per-doc",
    "limits",
    "maxChunksPerDoc",
    "rerank windows per document a request may ask for",
  ),
  setting("upload-limit-mb", "limits", "uploadBytes", "size limit of one uploaded file in MiB", {
    scale: 1024 * 1024,
  }),
  setting("request-timeout", "limits", "requestTimeoutMs", "seconds a request may take before a 503", {
    scale: 1000,
    commands: ["serve", "worker"],
  }),
  setting("tokenizer-threads", "tokenizer", "threads", "tokenizer threads (0: one per CPU core)", {
    min: 0,
    commands: ["serve", "worker"],
  }),
  setting("tokenizer-heap-mb", "tokenizer", "heapMb", "heap limit of each tokenizer thread in MiB", {
    min: 64,
  }),
  setting(
    "max-batch-tokens",
    "scheduler",
    "maxBatchTokens",
    `padded tokens per batch (0: ${AUTO_BATCH_TOKENS.cpu} on CPU, ${AUTO_BATCH_TOKENS.gpu} when --devices has a GPU)`,
    { min: 0, commands: ["serve", "worker"] },
  ),
  setting("max-batch-size", "scheduler", "maxBatchSize", "inputs per batch", {
    commands: ["serve", "worker"],
  }),
  setting("batch-window-ms", "scheduler", "windowMs", "how long a lone input waits for company", { min: 0 }),
  setting("max-queue", "scheduler", "maxQueuedInputs", "inputs that may wait per model before 429s"),
  setting(
    "job-concurrency",
    "jobs",
    "concurrency",
    "job chunks this process computes at once (0: leave them to workers)",
    {
      min: 0,
    },
  ),
  setting(
    "memory-return-mb",
    "pool",
    "memoryReturnMib",
    "MiB a device worker may grow past its loaded size before, once idle, it frees its ONNX Runtime arena (0: never)",
    { min: 0, commands: ["serve", "worker"] },
  ),
  setting(
    "memory-return-idle",
    "pool",
    "memoryReturnIdleMs",
    "seconds of no work before a device worker frees its grown arena",
    { scale: 1000, min: 0, commands: ["serve", "worker"] },
  ),
  setting("job-chunk-size", "jobs", "chunkSize", "inputs per job chunk"),
  setting("job-ttl-hours", "jobs", "ttlSeconds", "hours finished jobs and their results are kept", {
    scale: 3600,
    commands: ["serve", "worker"],
  }),
  setting("file-ttl-hours", "jobs", "fileTtlSeconds", "hours uploaded files (/v1/files) are kept", {
    scale: 3600,
  }),
  setting(
    "job-chunk-timeout",
    "jobs",
    "chunkTimeoutSeconds",
    "seconds one attempt at a job chunk may take, waiting for a busy server included",
    { commands: ["serve", "worker"] },
  ),
  setting(
    "chunk-lock-seconds",
    "jobs",
    "chunkLockSeconds",
    "a chunk whose worker went silent this long is retried",
    {
      commands: ["serve", "worker"],
    },
  ),
];

/** A setting's default in the flag's own unit. */
export function flagDefault(s: NumericSetting, config: ServerConfig = DEFAULT_CONFIG): number {
  return ((config[s.group] as unknown as Record<string, number>)[s.key] as number) / s.scale;
}

/** Store a flag value into a config input. */
export function applySetting(input: ServerConfigInput, s: NumericSetting, value: number): void {
  const groups = input as Record<string, Record<string, number> | undefined>;
  groups[s.group] = { ...groups[s.group], [s.key]: value * s.scale };
}
