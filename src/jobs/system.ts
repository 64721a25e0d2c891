import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import type { JobsConfig } from "../config.js";
import { JobEngine } from "./engine.js";
import { BullChunkQueue, LocalChunkQueue, type RetryPolicy } from "./queue.js";
import { type BlobStore, DirBlobStore, MemoryMetaStore, RedisBlobStore, RedisMetaStore } from "./store.js";

/** Where the job system reports what it cannot act on (Redis outages, queue errors). */
export type JobLog = (message: string, detail?: Record<string, unknown>) => void;

/** The engine with its stores and queue, and whether Redis is reachable right now. */
export interface JobSystem {
  engine: JobEngine;
  mode: "redis" | "embedded";
  /** False while Redis is unreachable: job routes answer 503 instead of hanging. */
  available(): boolean;
  close(): Promise<void>;
}

/** Log a connection's errors once per outage, not once per reconnect attempt. */
function watch(redis: Redis, name: string, log: JobLog): void {
  let down = false;
  redis.on("error", (err: Error) => {
    if (!down) log(`redis (${name}) unreachable; retrying`, { error: err.message });
    down = true;
  });
  redis.on("ready", () => {
    if (down) log(`redis (${name}) reachable again`);
    down = false;
  });
}

export function createJobSystem(config: JobsConfig, log: JobLog = () => {}): JobSystem {
  const retry: RetryPolicy = { attempts: config.chunkAttempts, backoffMs: config.chunkBackoffMs };
  if (!config.redisUrl) {
    const dir = config.resultsDir ?? mkdtempSync(join(tmpdir(), "flagserve-jobs-"));
    const engine = new JobEngine(
      new MemoryMetaStore(),
      new DirBlobStore(dir),
      new LocalChunkQueue(retry),
      config,
    );
    return {
      engine,
      mode: "embedded",
      available: () => true,
      close: async () => {
        await engine.close();
        if (!config.resultsDir) rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  const url = config.redisUrl;
  // Requests fail at once while Redis is down (no offline queue), so a route can answer 503.
  const redis = new Redis(url, { enableOfflineQueue: false, maxRetriesPerRequest: 1, lazyConnect: false });
  watch(redis, "records", log);
  const connections: Redis[] = [redis];
  const bullConnection = () => {
    // BullMQ's blocking commands need maxRetriesPerRequest null; they wait out an outage.
    const c = new Redis(url, { maxRetriesPerRequest: null });
    watch(c, "queue", log);
    connections.push(c);
    return c;
  };
  const blobs: BlobStore = config.resultsDir
    ? new DirBlobStore(config.resultsDir)
    : new RedisBlobStore(redis);
  const queue = new BullChunkQueue(bullConnection, { lockMs: config.chunkLockSeconds * 1000, retry }, log);
  const engine = new JobEngine(new RedisMetaStore(redis), blobs, queue, config);
  return {
    engine,
    mode: "redis",
    available: () => redis.status === "ready",
    close: async () => {
      await engine.close();
      await Promise.all(connections.map((c) => c.quit().catch(() => c.disconnect())));
    },
  };
}
