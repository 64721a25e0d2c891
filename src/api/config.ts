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
}

export const DEFAULT_LIMITS: Limits = {
  maxInputs: 2048,
  // 2048 inputs of an 8k-token model; the per-input window is the model's own limit.
  maxRequestTokens: 2048 * 8192,
  bodyLimit: 128 * 1024 * 1024,
  requestTimeoutMs: 120_000,
};

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
  logLevel: "info",
};
