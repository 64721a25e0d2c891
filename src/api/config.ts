import type { SchedulerOptions } from "../serving/scheduler.js";

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
}

export const DEFAULT_LIMITS: Limits = {
  maxInputs: 2048,
  // 2048 inputs of an 8k-token model; the per-input window is the model's own limit.
  maxRequestTokens: 2048 * 8192,
  bodyLimit: 128 * 1024 * 1024,
  requestTimeoutMs: 120_000,
  uploadBytes: 8 * 1024 ** 3,
};

export interface JobsConfig {
  /** Redis for jobs shared by several hosts; none keeps the queue in this process. */
  redisUrl?: string;
  /** Job data in this directory (shared by all hosts) instead of Redis. */
  resultsDir?: string;
  chunkSize: number;
  ttlSeconds: number;
  /** Chunks this process computes at once (0: leave them to `flagserve worker` processes). */
  concurrency: number;
  /** A chunk whose worker stopped renewing its lock for this long goes back to the queue. */
  chunkLockSeconds: number;
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
  scheduler: Partial<SchedulerOptions>;
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
  limits: DEFAULT_LIMITS,
  scheduler: {},
  devices: "cpu",
  jobs: { chunkSize: 1024, ttlSeconds: 7 * 24 * 3600, concurrency: 2, chunkLockSeconds: 60 },
  logLevel: "info",
};
