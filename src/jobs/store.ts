import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Redis } from "ioredis";
import type { FileRecord, JobRecord, JobStatus } from "./types.js";

/**
 * Job inputs, results and uploaded files. Redis when API servers and workers are on different
 * machines; a directory when they share one.
 */
export interface BlobStore {
  put(key: string, data: Buffer | string): Promise<void>;
  get(key: string): Promise<Buffer | undefined>;
  /** Delete every key starting with the prefix. */
  deletePrefix(prefix: string): Promise<void>;
  /** Let every key with the prefix expire after `seconds` (a directory store deletes on its own sweep). */
  expirePrefix(prefix: string, seconds: number): Promise<void>;
}

export class RedisBlobStore implements BlobStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix = "flagserve:",
  ) {}

  async put(key: string, data: Buffer | string): Promise<void> {
    await this.redis.set(this.prefix + key, data);
  }

  async get(key: string): Promise<Buffer | undefined> {
    return (await this.redis.getBuffer(this.prefix + key)) ?? undefined;
  }

  private async *scan(prefix: string): AsyncGenerator<string[]> {
    let cursor = "0";
    do {
      const [next, found] = await this.redis.scan(cursor, "MATCH", `${this.prefix}${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (found.length) yield found;
    } while (cursor !== "0");
  }

  async deletePrefix(prefix: string): Promise<void> {
    for await (const batch of this.scan(prefix)) await this.redis.del(...batch);
  }

  async expirePrefix(prefix: string, seconds: number): Promise<void> {
    for await (const batch of this.scan(prefix)) {
      const multi = this.redis.multi();
      for (const k of batch) multi.expire(k, seconds);
      await multi.exec();
    }
  }
}

/** Blobs as files under a directory (keys' colons become path separators). */
export class DirBlobStore implements BlobStore {
  constructor(readonly root: string) {}

  private path(key: string): string {
    return join(this.root, ...key.split(":"));
  }

  async put(key: string, data: Buffer | string): Promise<void> {
    const path = this.path(key);
    await mkdir(dirname(path), { recursive: true });
    // Write then rename: a reader never sees half a chunk.
    const tmp = `${path}.${process.pid}.tmp`;
    await writeFile(tmp, data);
    await rename(tmp, path);
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.path(key));
    } catch (err) {
      // Only a missing file is "not stored"; a permission or disk error must surface as itself.
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async deletePrefix(prefix: string): Promise<void> {
    // Prefixes used here are "job:ID:" and "file:ID:": remove that directory.
    const parts = prefix.split(":").filter(Boolean);
    await rm(join(this.root, ...parts), { recursive: true, force: true });
  }

  async expirePrefix(): Promise<void> {
    // Not implemented yet: a directory store keeps data until the prefix is deleted.
  }
}

/** Job and file records, with the counters the engine updates atomically. */
export interface MetaStore {
  putJob(job: JobRecord): Promise<void>;
  getJob(id: string): Promise<JobRecord | undefined>;
  /**
   * Merge fields into a job record; with `onlyFrom`, only while its status is one of those
   * (status moves are compare-and-set, so a late chunk cannot reopen a finished job).
   * Returns whether the record was changed.
   */
  patchJob(id: string, patch: Partial<JobRecord>, onlyFrom?: readonly JobStatus[]): Promise<boolean>;
  /**
   * Record a finished chunk once: counters move only the first time a chunk is marked, so a
   * retried chunk never counts twice. Returns the number of chunks done.
   */
  markChunk(
    id: string,
    chunk: number,
    counts: { tokens: number; failed: number; inputs: number },
  ): Promise<number>;
  addError(id: string, message: string): Promise<void>;
  listJobs(owner: string): Promise<JobRecord[]>;
  deleteJob(id: string): Promise<void>;
  putFile(file: FileRecord): Promise<void>;
  getFile(id: string): Promise<FileRecord | undefined>;
  listFiles(owner: string): Promise<FileRecord[]>;
  deleteFile(id: string): Promise<void>;
  expireJob(id: string, seconds: number): Promise<void>;
}

const MARK_CHUNK = `
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'inputsDone', ARGV[4])
end
local done = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'chunksDone', done)
return done`;

const PATCH_JSON = `
local json = redis.call('HGET', KEYS[1], 'json')
if not json then return 0 end
local record = cjson.decode(json)
local allowed = cjson.decode(ARGV[2])
if #allowed > 0 then
  local ok = false
  for _, s in ipairs(allowed) do if record.status == s then ok = true end end
  if not ok then return 0 end
end
for k, v in pairs(cjson.decode(ARGV[1])) do record[k] = v end
redis.call('HSET', KEYS[1], 'json', cjson.encode(record))
return 1`;

/** Records as Redis hashes: one JSON field plus counter fields the Lua script moves. */
export class RedisMetaStore implements MetaStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix = "flagserve:",
  ) {}

  private jobKey(id: string): string {
    return `${this.prefix}jobmeta:${id}`;
  }

  async putJob(job: JobRecord): Promise<void> {
    const { tokens, failed, chunksDone, inputsDone, errors, ...rest } = job;
    await this.redis
      .multi()
      .hset(this.jobKey(job.id), { json: JSON.stringify(rest), tokens, failed, chunksDone, inputsDone })
      .del(`${this.jobKey(job.id)}:errors`)
      .zadd(`${this.prefix}jobs:${job.owner}`, job.createdAt, job.id)
      .exec();
    for (const e of errors) await this.addError(job.id, e);
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    const [h, errors] = await Promise.all([
      this.redis.hgetall(this.jobKey(id)),
      this.redis.lrange(`${this.jobKey(id)}:errors`, 0, 49),
    ]);
    if (!h.json) return undefined;
    return {
      ...(JSON.parse(h.json) as Omit<
        JobRecord,
        "tokens" | "failed" | "chunksDone" | "inputsDone" | "errors"
      >),
      tokens: Number(h.tokens ?? 0),
      inputsDone: Number(h.inputsDone ?? 0),
      failed: Number(h.failed ?? 0),
      chunksDone: Number(h.chunksDone ?? 0),
      errors,
    };
  }

  async patchJob(
    id: string,
    patch: Partial<JobRecord>,
    onlyFrom: readonly JobStatus[] = [],
  ): Promise<boolean> {
    const { tokens: _t, failed: _f, chunksDone: _c, inputsDone: _i, errors: _e, ...rest } = patch;
    // Merged inside Redis, so concurrent patches from any host never lose each other's fields.
    const changed = await this.redis.eval(
      PATCH_JSON,
      1,
      this.jobKey(id),
      JSON.stringify(rest),
      JSON.stringify(onlyFrom),
    );
    return Number(changed) === 1;
  }

  async markChunk(
    id: string,
    chunk: number,
    c: { tokens: number; failed: number; inputs: number },
  ): Promise<number> {
    const key = this.jobKey(id);
    return Number(
      await this.redis.eval(MARK_CHUNK, 2, key, `${key}:done`, chunk, c.tokens, c.failed, c.inputs),
    );
  }

  async addError(id: string, message: string): Promise<void> {
    await this.redis
      .multi()
      .rpush(`${this.jobKey(id)}:errors`, message)
      .ltrim(`${this.jobKey(id)}:errors`, 0, 99)
      .exec();
  }

  async listJobs(owner: string): Promise<JobRecord[]> {
    const ids = await this.redis.zrevrange(`${this.prefix}jobs:${owner}`, 0, 999);
    const jobs = await Promise.all(ids.map((id) => this.getJob(id)));
    const live = jobs.filter((j): j is JobRecord => j !== undefined);
    // Records that expired leave their id behind in the owner's index: drop it.
    const gone = ids.filter((id) => !live.some((j) => j.id === id));
    if (gone.length) await this.redis.zrem(`${this.prefix}jobs:${owner}`, ...gone);
    return live;
  }

  async deleteJob(id: string): Promise<void> {
    const job = await this.getJob(id);
    const key = this.jobKey(id);
    await this.redis.del(key, `${key}:done`, `${key}:errors`);
    if (job) await this.redis.zrem(`${this.prefix}jobs:${job.owner}`, id);
  }

  async expireJob(id: string, seconds: number): Promise<void> {
    const key = this.jobKey(id);
    await this.redis
      .multi()
      .expire(key, seconds)
      .expire(`${key}:done`, seconds)
      .expire(`${key}:errors`, seconds)
      .exec();
  }

  async putFile(file: FileRecord): Promise<void> {
    await this.redis
      .multi()
      .set(`${this.prefix}filemeta:${file.id}`, JSON.stringify(file))
      .zadd(`${this.prefix}files:${file.owner}`, file.createdAt, file.id)
      .exec();
  }

  async getFile(id: string): Promise<FileRecord | undefined> {
    const json = await this.redis.get(`${this.prefix}filemeta:${id}`);
    return json ? (JSON.parse(json) as FileRecord) : undefined;
  }

  async listFiles(owner: string): Promise<FileRecord[]> {
    const ids = await this.redis.zrevrange(`${this.prefix}files:${owner}`, 0, 999);
    const files = await Promise.all(ids.map((id) => this.getFile(id)));
    return files.filter((f): f is FileRecord => f !== undefined);
  }

  async deleteFile(id: string): Promise<void> {
    const file = await this.getFile(id);
    await this.redis.del(`${this.prefix}filemeta:${id}`);
    if (file) await this.redis.zrem(`${this.prefix}files:${file.owner}`, id);
  }
}

/** Records in this process's memory: the embedded mode without Redis (lost on restart). */
export class MemoryMetaStore implements MetaStore {
  private readonly jobs = new Map<string, JobRecord>();
  private readonly done = new Map<string, Set<number>>();
  private readonly files = new Map<string, FileRecord>();
  private readonly expiry = new Map<string, NodeJS.Timeout>();

  async putJob(job: JobRecord): Promise<void> {
    this.jobs.set(job.id, structuredClone(job));
    this.done.set(job.id, new Set());
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    const j = this.jobs.get(id);
    return j ? structuredClone(j) : undefined;
  }

  async patchJob(
    id: string,
    patch: Partial<JobRecord>,
    onlyFrom: readonly JobStatus[] = [],
  ): Promise<boolean> {
    const j = this.jobs.get(id);
    if (!j || (onlyFrom.length > 0 && !onlyFrom.includes(j.status))) return false;
    Object.assign(j, patch);
    return true;
  }

  async markChunk(
    id: string,
    chunk: number,
    c: { tokens: number; failed: number; inputs: number },
  ): Promise<number> {
    const j = this.jobs.get(id);
    const set = this.done.get(id);
    if (!j || !set) return 0;
    if (!set.has(chunk)) {
      set.add(chunk);
      j.tokens += c.tokens;
      j.failed += c.failed;
      j.inputsDone += c.inputs;
    }
    j.chunksDone = set.size;
    return set.size;
  }

  async addError(id: string, message: string): Promise<void> {
    this.jobs.get(id)?.errors.push(message);
  }

  async listJobs(owner: string): Promise<JobRecord[]> {
    return [...this.jobs.values()]
      .filter((j) => j.owner === owner)
      .sort((a, b) => b.createdAt - a.createdAt)
      .map((j) => structuredClone(j));
  }

  async deleteJob(id: string): Promise<void> {
    this.jobs.delete(id);
    this.done.delete(id);
  }

  async expireJob(id: string, seconds: number): Promise<void> {
    clearTimeout(this.expiry.get(id));
    const t = setTimeout(() => {
      void this.deleteJob(id);
    }, seconds * 1000);
    t.unref();
    this.expiry.set(id, t);
  }

  async putFile(file: FileRecord): Promise<void> {
    this.files.set(file.id, { ...file });
  }

  async getFile(id: string): Promise<FileRecord | undefined> {
    return this.files.get(id);
  }

  async listFiles(owner: string): Promise<FileRecord[]> {
    return [...this.files.values()].filter((f) => f.owner === owner);
  }

  async deleteFile(id: string): Promise<void> {
    this.files.delete(id);
  }
}
