import type { Redis } from "ioredis";
import type { FileRecord, JobRecord, JobStatus, KeyGroup } from "./types.js";

/**
 * Job inputs, results and uploaded files. Redis when API servers and workers are on different
 * machines; a directory (dir-store.ts) when they share one.
 */
export interface BlobStore {
  put(key: string, data: Buffer | string): Promise<void>;
  get(key: string): Promise<Buffer | undefined>;
  /** Delete a job's or a file's keys. */
  remove(group: KeyGroup): Promise<void>;
  /**
   * Let a job's or a file's keys expire after `seconds`. Redis expires exactly the keys named
   * (a key written afterwards needs its own call); a directory expires the prefix's directory.
   */
  expire(group: KeyGroup, seconds: number): Promise<void>;
  /** Delete what has expired: a directory has no TTL of its own (Redis expires keys itself). */
  sweep(now?: number): Promise<void>;
}

/** Who runs a job-system instance, so another instance can tell that it is gone. */
export interface InstanceInfo {
  pid: number;
  host: string;
}

/** Conditions of a compare-and-set patch. */
export interface PatchCondition {
  /** Only while the job's status is one of these. */
  status?: readonly JobStatus[];
  /** Only while this instance runs the job ("" for none). */
  runner?: string;
}

/** Job and file records, with the counters the engine updates atomically. */
export interface MetaStore {
  putJob(job: JobRecord): Promise<void>;
  getJob(id: string): Promise<JobRecord | undefined>;
  /**
   * Merge fields into a job record; with a condition, only while it holds (status moves are
   * compare-and-set, so a late chunk cannot reopen a finished job). `error` is added to the
   * job's errors in the same step (a job is never seen failed without its reason). Returns
   * whether it changed.
   */
  patchJob(id: string, patch: Partial<JobRecord>, when?: PatchCondition, error?: string): Promise<boolean>;
  /**
   * Record a finished chunk once: counters move only the first time a chunk is marked, so a
   * retried chunk never counts twice. Returns the number of chunks done.
   */
  markChunk(
    id: string,
    chunk: number,
    counts: { tokens: number; failed: number; inputs: number },
  ): Promise<number>;
  /** The chunks of a job marked done. */
  doneChunks(id: string): Promise<Set<number>>;
  addError(id: string, message: string): Promise<void>;
  listJobs(owner: string): Promise<JobRecord[]>;
  /** Every job not yet completed, failed or cancelled, of any owner. */
  listOpen(): Promise<JobRecord[]>;
  deleteJob(id: string): Promise<void>;
  /** Delete the record after `seconds`. */
  expireJob(id: string, seconds: number): Promise<void>;
  /** Store a file record; it and its listing go when `file.expiresAt` passes. */
  putFile(file: FileRecord): Promise<void>;
  getFile(id: string): Promise<FileRecord | undefined>;
  listFiles(owner: string): Promise<FileRecord[]>;
  deleteFile(id: string): Promise<void>;
  /** Say that a job-system instance is alive for `seconds` more. */
  putInstance(id: string, info: InstanceInfo, seconds: number): Promise<void>;
  /** What an instance said last, or undefined once that lapsed or it said goodbye. */
  getInstance(id: string): Promise<InstanceInfo | undefined>;
  deleteInstance(id: string): Promise<void>;
  /** Delete records that have expired (Redis expires keys itself). */
  sweep(now?: number): Promise<void>;
}

/** Keys per Redis command when a group is expired or deleted (no SCAN: the keys are known). */
const KEYS_PER_CALL = 1000;

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

  async remove(group: KeyGroup): Promise<void> {
    for (let i = 0; i < group.keys.length; i += KEYS_PER_CALL) {
      await this.redis.del(...group.keys.slice(i, i + KEYS_PER_CALL).map((k) => this.prefix + k));
    }
  }

  async expire(group: KeyGroup, seconds: number): Promise<void> {
    for (let i = 0; i < group.keys.length; i += KEYS_PER_CALL) {
      const multi = this.redis.multi();
      for (const k of group.keys.slice(i, i + KEYS_PER_CALL)) multi.expire(this.prefix + k, seconds);
      await multi.exec();
    }
  }

  async sweep(): Promise<void> {}
}

// A deleted or expired job is not brought back (as counters without a record, and without a TTL).
const MARK_CHUNK = `
if redis.call('HEXISTS', KEYS[1], 'json') == 0 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'inputsDone', ARGV[4])
end
local done = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'chunksDone', done)
return done`;

// KEYS: the record, the index of open jobs, the errors list; ARGV: patch, condition, job id, error.
const PATCH_JSON = `
local json = redis.call('HGET', KEYS[1], 'json')
if not json then return 0 end
local record = cjson.decode(json)
local when = cjson.decode(ARGV[2])
if type(when.status) == 'table' then
  local ok = false
  for _, s in ipairs(when.status) do if record.status == s then ok = true end end
  if not ok then return 0 end
end
if type(when.runner) == 'string' then
  local runner = record.runner
  if type(runner) ~= 'string' then runner = '' end
  if runner ~= when.runner then return 0 end
end
local patch = cjson.decode(ARGV[1])
for k, v in pairs(patch) do record[k] = v end
redis.call('HSET', KEYS[1], 'json', cjson.encode(record))
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], 0, 99)
end
if record.status == 'completed' or record.status == 'failed' or record.status == 'cancelled' then
  redis.call('ZREM', KEYS[2], ARGV[3])
end
return 1`;

const isOpen = (s: JobStatus) => s === "preparing" || s === "queued" || s === "running";

/** Records as Redis hashes: one JSON field plus counter fields the Lua script moves. */
export class RedisMetaStore implements MetaStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix = "flagserve:",
  ) {}

  private jobKey(id: string): string {
    return `${this.prefix}jobmeta:${id}`;
  }

  private get openKey(): string {
    return `${this.prefix}jobs:open`;
  }

  async putJob(job: JobRecord): Promise<void> {
    const { tokens, failed, chunksDone, inputsDone, errors, ...rest } = job;
    const multi = this.redis
      .multi()
      .hset(this.jobKey(job.id), { json: JSON.stringify(rest), tokens, failed, chunksDone, inputsDone })
      .del(`${this.jobKey(job.id)}:errors`)
      .zadd(`${this.prefix}jobs:${job.owner}`, job.createdAt, job.id);
    if (isOpen(job.status)) multi.zadd(this.openKey, job.createdAt, job.id);
    await multi.exec();
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
    when: PatchCondition = {},
    error = "",
  ): Promise<boolean> {
    const { tokens: _t, failed: _f, chunksDone: _c, inputsDone: _i, errors: _e, ...rest } = patch;
    // Merged inside Redis, so concurrent patches from any host never lose each other's fields.
    const changed = await this.redis.eval(
      PATCH_JSON,
      3,
      this.jobKey(id),
      this.openKey,
      `${this.jobKey(id)}:errors`,
      JSON.stringify(rest),
      JSON.stringify(when),
      id,
      error,
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

  async doneChunks(id: string): Promise<Set<number>> {
    return new Set((await this.redis.smembers(`${this.jobKey(id)}:done`)).map(Number));
  }

  async addError(id: string, message: string): Promise<void> {
    await this.redis
      .multi()
      .rpush(`${this.jobKey(id)}:errors`, message)
      .ltrim(`${this.jobKey(id)}:errors`, 0, 99)
      .exec();
  }

  /** Records of the ids in an index; ids whose record expired are dropped from the index. */
  private async indexed(index: string, ids: string[]): Promise<JobRecord[]> {
    const jobs = await Promise.all(ids.map((id) => this.getJob(id)));
    const live = jobs.filter((j): j is JobRecord => j !== undefined);
    const gone = ids.filter((id) => !live.some((j) => j.id === id));
    if (gone.length) await this.redis.zrem(index, ...gone);
    return live;
  }

  async listJobs(owner: string): Promise<JobRecord[]> {
    const index = `${this.prefix}jobs:${owner}`;
    return this.indexed(index, await this.redis.zrevrange(index, 0, 999));
  }

  async listOpen(): Promise<JobRecord[]> {
    const jobs = await this.indexed(this.openKey, await this.redis.zrange(this.openKey, 0, -1));
    return jobs.filter((j) => isOpen(j.status));
  }

  async deleteJob(id: string): Promise<void> {
    const job = await this.getJob(id);
    const key = this.jobKey(id);
    await this.redis.del(key, `${key}:done`, `${key}:errors`);
    await this.redis.zrem(this.openKey, id);
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
    const key = `${this.prefix}filemeta:${file.id}`;
    const multi = this.redis
      .multi()
      .set(key, JSON.stringify(file))
      .zadd(`${this.prefix}files:${file.owner}`, file.createdAt, file.id);
    if (file.expiresAt !== undefined) multi.expireat(key, file.expiresAt);
    await multi.exec();
  }

  async getFile(id: string): Promise<FileRecord | undefined> {
    const json = await this.redis.get(`${this.prefix}filemeta:${id}`);
    return json ? (JSON.parse(json) as FileRecord) : undefined;
  }

  async listFiles(owner: string): Promise<FileRecord[]> {
    const index = `${this.prefix}files:${owner}`;
    const ids = await this.redis.zrevrange(index, 0, 999);
    const files = await Promise.all(ids.map((id) => this.getFile(id)));
    // Files that expired leave their id behind in the owner's index: drop it.
    const gone = ids.filter((_, i) => files[i] === undefined);
    if (gone.length) await this.redis.zrem(index, ...gone);
    return files.filter((f): f is FileRecord => f !== undefined);
  }

  async deleteFile(id: string): Promise<void> {
    const file = await this.getFile(id);
    await this.redis.del(`${this.prefix}filemeta:${id}`);
    if (file) await this.redis.zrem(`${this.prefix}files:${file.owner}`, id);
  }

  async putInstance(id: string, info: InstanceInfo, seconds: number): Promise<void> {
    await this.redis.set(`${this.prefix}instance:${id}`, JSON.stringify(info), "EX", seconds);
  }

  async getInstance(id: string): Promise<InstanceInfo | undefined> {
    const json = await this.redis.get(`${this.prefix}instance:${id}`);
    return json ? (JSON.parse(json) as InstanceInfo) : undefined;
  }

  async deleteInstance(id: string): Promise<void> {
    await this.redis.del(`${this.prefix}instance:${id}`);
  }

  async sweep(): Promise<void> {}
}
