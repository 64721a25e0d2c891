import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { SchedulerObserver } from "./scheduler.js";

/** Prometheus metrics of one server: HTTP traffic, tokens, batches and queues. */
export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: "flagserve_http_requests_total",
    help: "HTTP requests by route, method and status code",
    labelNames: ["route", "method", "status"] as const,
    registers: [this.registry],
  });
  readonly latency = new Histogram({
    name: "flagserve_http_request_duration_seconds",
    help: "HTTP request latency by route",
    labelNames: ["route"] as const,
    buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly inputs = new Counter({
    name: "flagserve_inputs_total",
    help: "Inputs (texts or pairs) computed, by model",
    labelNames: ["model"] as const,
    registers: [this.registry],
  });
  readonly tokens = new Counter({
    name: "flagserve_tokens_total",
    help: "Tokens of the inputs computed, by model",
    labelNames: ["model"] as const,
    registers: [this.registry],
  });
  readonly batchRows = new Histogram({
    name: "flagserve_batch_size",
    help: "Rows per batch run on a device",
    labelNames: ["model"] as const,
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    registers: [this.registry],
  });
  readonly batchTokens = new Counter({
    name: "flagserve_batch_tokens_total",
    help: "Tokens run on devices: real ones, and computed ones including padding",
    labelNames: ["model", "kind"] as const,
    registers: [this.registry],
  });
  readonly batchRequests = new Histogram({
    name: "flagserve_batch_requests",
    help: "Distinct requests merged into one batch",
    labelNames: ["model"] as const,
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers: [this.registry],
  });
  readonly batchSeconds = new Histogram({
    name: "flagserve_batch_duration_seconds",
    help: "Time from sending a batch to a device worker to having its results",
    labelNames: ["model"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: "flagserve_queue_depth",
    help: "Inputs waiting to be batched, by model",
    labelNames: ["model"] as const,
    registers: [this.registry],
  });
  readonly rejected = new Counter({
    name: "flagserve_rejected_total",
    help: "Requests refused because a queue was full (429) or a deadline passed",
    labelNames: ["model", "reason"] as const,
    registers: [this.registry],
  });

  readonly tokenizerPieces = new Counter({
    name: "flagserve_tokenizer_pieces_total",
    help: "Pieces of tokenizing work done by the tokenizer threads",
    registers: [this.registry],
  });
  readonly tokenizerRestarts = new Counter({
    name: "flagserve_tokenizer_thread_restarts_total",
    help: "Tokenizer threads replaced after dying (heap limit) or being stopped (abandoned work)",
    registers: [this.registry],
  });
  /** Where the tokenizer queue's depth is read at scrape time (set by the serving stack). */
  tokenizerQueueDepth: () => number = () => 0;
  readonly tokenizerQueue: Gauge = new Gauge({
    name: "flagserve_tokenizer_queue_depth",
    help: "Pieces of tokenizing work waiting for a thread",
    registers: [this.registry],
    collect: (): void => this.tokenizerQueue.set(this.tokenizerQueueDepth()),
  });

  constructor() {
    // 1 ms sampling: at prom-client's default of 10 ms, every recorded delay includes those 10 ms.
    collectDefaultMetrics({ register: this.registry, prefix: "flagserve_", eventLoopMonitoringPrecision: 1 });
  }

  /** A scheduler observer that records one model's batches and refusals. */
  schedulerObserver(model: string): SchedulerObserver {
    return {
      batch: (s) => {
        this.batchRows.observe({ model }, s.rows);
        this.batchRequests.observe({ model }, s.requests);
        this.batchTokens.inc({ model, kind: "real" }, s.realTokens);
        this.batchTokens.inc({ model, kind: "computed" }, s.paddedTokens);
        this.batchSeconds.observe({ model }, s.seconds);
      },
      rejected: (reason) => this.rejected.inc({ model, reason }),
    };
  }
}
