import { accessSync, constants, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { isAbsolute, join } from "node:path";
import { Redis } from "ioredis";
import type { JobsConfig } from "../config.js";
import { DirBlobStore, DirMetaStore } from "./dir-store.js";
import { JobEngine } from "./engine.js";
import { BullChunkQueue, LocalChunkQueue, type RetryPolicy } from "./queue.js";
import { type BlobStore, RedisBlobStore, RedisMetaStore } from "./store.js";

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

/**
 * Where the embedded mode keeps its jobs when no --results-dir is given: the XDG data directory
 * ($XDG_DATA_HOME/flagserve/jobs, else ~/.local/share/flagserve/jobs), which outlives restarts.
 */
export function defaultJobsDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_DATA_HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), ".local", "share");
  return join(base, "flagserve", "jobs");
}

/**
 * The embedded mode's directory. An explicit --results-dir must work; where the default cannot
 * be written (no home directory), jobs still run, kept in a temporary directory until close.
 */
function embeddedDir(config: JobsConfig, log: JobLog): { dir: string; temporary: boolean } {
  if (config.resultsDir) {
    mkdirSync(config.resultsDir, { recursive: true });
    return { dir: config.resultsDir, temporary: false };
  }
  const dir = defaultJobsDir();
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
    return { dir, temporary: false };
  } catch (err) {
    const temporary = mkdtempSync(join(tmpdir(), "flagserve-jobs-"));
    log(
      `jobs: ${dir} is not writable; jobs are kept in ${temporary} until this server stops (--results-dir DIR keeps them)`,
      {
        error: (err as Error).message,
      },
    );
    return { dir: temporary, temporary: true };
  }
}

export function createJobSystem(config: JobsConfig, log: JobLog = () => {}): JobSystem {
  const retry: RetryPolicy = { attempts: config.chunkAttempts, backoffMs: config.chunkBackoffMs };
  if (!config.redisUrl) {
    // Records and data on this machine's disk: queued and finished jobs survive a restart, and
    // the chunks of unfinished ones are queued again at start (JobEngine.reconcile).
    const { dir, temporary } = embeddedDir(config, log);
    const engine = new JobEngine(
      new DirMetaStore(dir),
      new DirBlobStore(dir),
      new LocalChunkQueue(retry),
      config,
      log,
    );
    engine.start();
    return {
      engine,
      mode: "embedded",
      available: () => true,
      close: async () => {
        await engine.close();
        if (temporary) rmSync(dir, { recursive: true, force: true });
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
  const engine = new JobEngine(new RedisMetaStore(redis), blobs, queue, config, log);
  // Commands fail at once until the connection is up (no offline queue): start once it is.
  if (redis.status === "ready") engine.start();
  else redis.once("ready", () => engine.start());
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
