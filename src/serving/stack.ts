import { availableParallelism } from "node:os";
import type { ServerConfig } from "../config.js";
import type { ModelSpec } from "./executor.js";
import { serveModels } from "./load.js";
import type { Metrics } from "./metrics.js";
import { ModelRegistry } from "./registry.js";
import type { ServedModel } from "./served.js";
import { TokenizerPool } from "./tokenizer-pool.js";
import { parseWorkerDevices, WorkerPoolExecutor } from "./worker-pool.js";

/**
 * What serves models in a process (the API server or a job worker): the device worker pool that
 * holds the weights, the tokenizer threads, and the served models by name.
 */
export class ServingStack {
  readonly executor: WorkerPoolExecutor;
  readonly tokenizers: TokenizerPool;
  readonly registry = new ModelRegistry();
  private readonly config: ServerConfig;
  private readonly metrics: Metrics;

  constructor(
    config: ServerConfig,
    metrics: Metrics,
    /** Events of the pools (crashes and restarts warn; routine ones, such as memory returned, are info). */
    log: (event: string, detail: Record<string, unknown>, level?: "info" | "warn") => void,
  ) {
    this.config = config;
    this.metrics = metrics;
    const slots = parseWorkerDevices(config.devices);
    this.executor = new WorkerPoolExecutor(slots, {
      inflightPerWorker: config.pool.inflightPerWorker,
      batchTimeoutMs: config.limits.requestTimeoutMs,
      waitForWorkerMs: config.limits.requestTimeoutMs,
      memoryReturnMib: config.pool.memoryReturnMib,
      memoryReturnIdleMs: config.pool.memoryReturnIdleMs,
      onEvent: log,
    });
    this.tokenizers = new TokenizerPool({
      threads: config.tokenizer.threads > 0 ? config.tokenizer.threads : availableParallelism(),
      heapMb: config.tokenizer.heapMb,
      onEvent: log,
      observer: {
        piece: () => metrics.tokenizerPieces.inc(),
        restart: () => metrics.tokenizerRestarts.inc(),
      },
    });
    metrics.tokenizerQueueDepth = () => this.tokenizers.queued;
  }

  /** Load every model in every device worker and serve it; resolves with the served models. */
  async load(specs: ModelSpec[]): Promise<ServedModel[]> {
    const infos = await this.executor.load(specs);
    const served = await serveModels(infos, specs, this.executor, {
      scheduler: this.config.scheduler,
      metrics: this.metrics,
      pool: this.tokenizers,
      devices: this.executor.deviceCount,
    });
    for (const model of served) this.registry.add(model);
    return served;
  }

  /** Finish queued work, then stop the device workers and the tokenizer threads. */
  async close(): Promise<void> {
    await this.registry.close();
    await this.executor.close();
    await this.tokenizers.close();
  }
}
