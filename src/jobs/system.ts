import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { type EngineOptions, JobEngine } from "./engine.js";
import { BullChunkQueue, DEFAULT_RETRY, LocalChunkQueue } from "./queue.js";
import { type BlobStore, DirBlobStore, MemoryMetaStore, RedisBlobStore, RedisMetaStore } from "./store.js";

export interface JobSystemOptions {
  /** Redis for multi-host jobs; without it the queue lives in this process. */
  redisUrl?: string;
  /** Keep job data in this directory instead of Redis (every host must see the same directory). */
  resultsDir?: string;
  engine?: Partial<EngineOptions>;
  /** How long a worker holds a chunk before another may take it back (a dead worker's chunks return). */
  chunkLockMs?: number;
}

/** The engine with its stores and queue, and whether Redis is reachable right now. */
export interface JobSystem {
  engine: JobEngine;
  mode: "redis" | "embedded";
  /** False while Redis is unreachable: job routes answer 503 instead of hanging. */
  available(): boolean;
  close(): Promise<void>;
}

export function createJobSystem(options: JobSystemOptions): JobSystem {
  if (!options.redisUrl) {
    const dir = options.resultsDir ?? mkdtempSync(join(tmpdir(), "flagserve-jobs-"));
    const engine = new JobEngine(
      new MemoryMetaStore(),
      new DirBlobStore(dir),
      new LocalChunkQueue(DEFAULT_RETRY),
      options.engine,
    );
    return {
      engine,
      mode: "embedded",
      available: () => true,
      close: async () => {
        await engine.close();
        if (!options.resultsDir) rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  const url = options.redisUrl;
  // Requests fail at once while Redis is down (no offline queue), so a route can answer 503.
  const redis = new Redis(url, { enableOfflineQueue: false, maxRetriesPerRequest: 1, lazyConnect: false });
  redis.on("error", () => {});
  const connections: Redis[] = [redis];
  const bullConnection = () => {
    // BullMQ's blocking commands need maxRetriesPerRequest null; they wait out an outage.
    const c = new Redis(url, { maxRetriesPerRequest: null });
    c.on("error", () => {});
    connections.push(c);
    return c;
  };
  const blobs: BlobStore = options.resultsDir
    ? new DirBlobStore(options.resultsDir)
    : new RedisBlobStore(redis);
  const queue = new BullChunkQueue(bullConnection, {
    lockMs: options.chunkLockMs ?? 60_000,
    retry: DEFAULT_RETRY,
  });
  const engine = new JobEngine(new RedisMetaStore(redis), blobs, queue, options.engine);
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
