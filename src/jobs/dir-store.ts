import { randomUUID } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { BlobStore, InstanceInfo, MetaStore, PatchCondition } from "./store.js";
import type { FileRecord, JobRecord, KeyGroup } from "./types.js";

/**
 * The stores of one machine: job data and records as files under a directory, so the embedded
 * mode (no Redis) keeps its jobs across restarts. Every write goes to a uniquely named temporary
 * file renamed into place (a reader never sees half a file, and two writers of one key never
 * share a temporary file); read-modify-writes of a job record hold a lock directory, so several
 * processes (or job systems in one process) on one directory never lose each other's updates.
 */

/** A group directory's expiry time (epoch ms), read by the sweep. */
const EXPIRES = ".expires-at";
/** A lock older than this was left by a process that died holding it (a write takes milliseconds). */
const STALE_LOCK_MS = 10_000;
/** A temporary file this old was left by a process that died mid-write. */
const STALE_TMP_MS = 3600_000;

const code = (err: unknown) => (err as NodeJS.ErrnoException).code;

/** Write a file so that readers see the old or the new content, never a mix. */
async function writeAtomic(path: string, data: Buffer | string): Promise<void> {
  // Unique per write: two writers of the same key (a retried chunk, two containers that are
  // all PID 1) must not write into one temporary file.
  const tmp = `${path}.${randomUUID()}.tmp`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

async function readOrUndefined(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    // Only a missing file is "not stored"; a permission or disk error must surface as itself.
    if (code(err) === "ENOENT") return undefined;
    throw err;
  }
}

async function entries(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (code(err) === "ENOENT") return [];
    throw err;
  }
}

/** Remove temporary files that a crashed writer left in `dir`. */
async function removeStaleTemps(dir: string, names: string[], now: number): Promise<void> {
  for (const name of names.filter((n) => n.endsWith(".tmp"))) {
    const st = await stat(join(dir, name)).catch(() => undefined);
    if (st && now - st.mtimeMs > STALE_TMP_MS) await rm(join(dir, name), { force: true });
  }
}

/** Ids and key parts become path segments: nothing that could leave the directory. */
const SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/;

/** Blobs as files under a directory (keys' colons become path separators). */
export class DirBlobStore implements BlobStore {
  constructor(readonly root: string) {}

  private path(key: string): string {
    const parts = key.split(":").filter(Boolean);
    if (!parts.every((p) => SEGMENT.test(p))) throw new Error(`invalid blob key ${key}`);
    return join(this.root, ...parts);
  }

  async put(key: string, data: Buffer | string): Promise<void> {
    const path = this.path(key);
    await mkdir(dirname(path), { recursive: true });
    await writeAtomic(path, data);
  }

  async get(key: string): Promise<Buffer | undefined> {
    return readOrUndefined(this.path(key));
  }

  async remove(group: KeyGroup): Promise<void> {
    // A group's prefix ("job:ID:", "file:ID:") is a directory: remove it whole.
    await rm(this.path(group.prefix), { recursive: true, force: true });
  }

  async expire(group: KeyGroup, seconds: number): Promise<void> {
    // One mark for the prefix's directory: keys written into it later expire with it.
    const dir = this.path(group.prefix);
    await mkdir(dir, { recursive: true });
    await writeAtomic(join(dir, EXPIRES), String(Date.now() + seconds * 1000));
  }

  /** Delete every group directory whose expiry time has passed. */
  async sweep(now = Date.now()): Promise<void> {
    for (const kind of await entries(this.root)) {
      if (kind === "meta") continue; // the records of DirMetaStore, when it shares the directory
      const kindDir = join(this.root, kind);
      if (!(await stat(kindDir).catch(() => undefined))?.isDirectory()) continue;
      for (const id of await entries(kindDir)) {
        const mark = await readOrUndefined(join(kindDir, id, EXPIRES)).catch(() => undefined);
        if (mark && Number(mark.toString()) <= now)
          await rm(join(kindDir, id), { recursive: true, force: true });
      }
    }
  }
}

/** A job record on disk: the record, the chunks marked done (a bitmap) and when it is deleted. */
interface JobFile {
  record: JobRecord;
  /** Base64 bitmap: bit c set once chunk c is marked done. */
  done: string;
  /** Epoch ms after which the record is gone; null while it is kept. */
  deleteAt: number | null;
}

interface InstanceFile extends InstanceInfo {
  /** Epoch ms until which the instance said it is alive. */
  until: number;
}

function bitIsSet(bits: Buffer, i: number): boolean {
  return ((bits[i >> 3] ?? 0) & (1 << (i & 7))) !== 0;
}

function bitCount(bits: Buffer): number {
  let n = 0;
  for (const byte of bits) for (let b = byte; b; b &= b - 1) n++;
  return n;
}

/** Job and file records as JSON files under `root/meta` (the embedded mode's records). */
export class DirMetaStore implements MetaStore {
  private readonly jobsDir: string;
  private readonly filesDir: string;
  private readonly instancesDir: string;
  /** Read-modify-writes of one record in this store queue here before taking the directory lock. */
  private readonly chains = new Map<string, Promise<unknown>>();

  constructor(readonly root: string) {
    this.jobsDir = join(root, "meta", "jobs");
    this.filesDir = join(root, "meta", "files");
    this.instancesDir = join(root, "meta", "instances");
  }

  /** The path of a record, or undefined for an id that is not one of ours (ids come from URLs). */
  private recordPath(dir: string, id: string): string | undefined {
    return SEGMENT.test(id) ? join(dir, `${id}.json`) : undefined;
  }

  private async readJob(id: string): Promise<JobFile | undefined> {
    const path = this.recordPath(this.jobsDir, id);
    const buf = path ? await readOrUndefined(path) : undefined;
    return buf ? (JSON.parse(buf.toString("utf8")) as JobFile) : undefined;
  }

  private async writeJob(file: JobFile): Promise<void> {
    await mkdir(this.jobsDir, { recursive: true });
    await writeAtomic(this.recordPath(this.jobsDir, file.record.id) as string, JSON.stringify(file));
  }

  /** Read, change and write one job record, alone among every process on this directory. */
  private update<T>(id: string, change: (file: JobFile | undefined) => Promise<T> | T): Promise<T> {
    const run = async () => {
      const lock = join(this.jobsDir, `${id}.lock`);
      await mkdir(this.jobsDir, { recursive: true });
      for (let attempt = 0; ; attempt++) {
        try {
          await mkdir(lock);
          break;
        } catch (err) {
          if (code(err) !== "EEXIST") throw err;
          const st = await stat(lock).catch(() => undefined);
          if (st && Date.now() - st.mtimeMs > STALE_LOCK_MS) await rm(lock, { recursive: true, force: true });
          else await sleep(Math.min(1 + attempt, 20));
        }
      }
      try {
        return await change(await this.readJob(id));
      } finally {
        await rm(lock, { recursive: true, force: true });
      }
    };
    if (!SEGMENT.test(id)) return Promise.resolve(change(undefined));
    const previous = this.chains.get(id) ?? Promise.resolve();
    const result = previous.then(run, run);
    const tail = result.catch(() => {});
    this.chains.set(id, tail);
    void tail.then(() => {
      if (this.chains.get(id) === tail) this.chains.delete(id);
    });
    return result;
  }

  private live(file: JobFile | undefined, now = Date.now()): JobFile | undefined {
    return file && (file.deleteAt === null || file.deleteAt > now) ? file : undefined;
  }

  async putJob(job: JobRecord): Promise<void> {
    await this.update(job.id, () =>
      this.writeJob({ record: structuredClone(job), done: "", deleteAt: null }),
    );
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    return this.live(await this.readJob(id))?.record;
  }

  async patchJob(
    id: string,
    patch: Partial<JobRecord>,
    when: PatchCondition = {},
    error?: string,
  ): Promise<boolean> {
    return this.update(id, async (file) => {
      const job = this.live(file);
      if (!job) return false;
      const r = job.record;
      if (when.status && !when.status.includes(r.status)) return false;
      if (when.runner !== undefined && (r.runner ?? "") !== when.runner) return false;
      // Counters and errors move only through markChunk and addError.
      const { tokens: _t, failed: _f, chunksDone: _c, inputsDone: _i, errors: _e, ...rest } = patch;
      Object.assign(r, rest);
      if (error && r.errors.length < 100) r.errors.push(error);
      await this.writeJob(job);
      return true;
    });
  }

  async markChunk(
    id: string,
    chunk: number,
    c: { tokens: number; failed: number; inputs: number },
  ): Promise<number> {
    return this.update(id, async (file) => {
      const job = this.live(file);
      if (!job) return 0;
      let bits = Buffer.from(job.done, "base64");
      if (!bitIsSet(bits, chunk)) {
        // The mark and the counters are written together: a chunk counts once, even after a crash.
        if (bits.length <= chunk >> 3)
          bits = Buffer.concat([bits, Buffer.alloc((chunk >> 3) + 1 - bits.length)]);
        bits[chunk >> 3] = (bits[chunk >> 3] as number) | (1 << (chunk & 7));
        job.done = bits.toString("base64");
        job.record.tokens += c.tokens;
        job.record.failed += c.failed;
        job.record.inputsDone += c.inputs;
        job.record.chunksDone = bitCount(bits);
        await this.writeJob(job);
      }
      return job.record.chunksDone;
    });
  }

  async doneChunks(id: string): Promise<Set<number>> {
    const file = this.live(await this.readJob(id));
    const bits = Buffer.from(file?.done ?? "", "base64");
    const done = new Set<number>();
    for (let i = 0; i < bits.length * 8; i++) if (bitIsSet(bits, i)) done.add(i);
    return done;
  }

  async addError(id: string, message: string): Promise<void> {
    await this.update(id, async (file) => {
      const job = this.live(file);
      if (!job || job.record.errors.length >= 100) return;
      job.record.errors.push(message);
      await this.writeJob(job);
    });
  }

  private async allJobs(): Promise<JobRecord[]> {
    const now = Date.now();
    const names = (await entries(this.jobsDir)).filter((n) => n.endsWith(".json"));
    const files = await Promise.all(names.map((n) => this.readJob(n.slice(0, -".json".length))));
    return files
      .map((f) => this.live(f, now)?.record)
      .filter((j): j is JobRecord => j !== undefined)
      .sort((a, b) => b.createdAt - a.createdAt);
  }

  async listJobs(owner: string): Promise<JobRecord[]> {
    return (await this.allJobs()).filter((j) => j.owner === owner).slice(0, 1000);
  }

  async listOpen(): Promise<JobRecord[]> {
    return (await this.allJobs()).filter((j) => ["preparing", "queued", "running"].includes(j.status));
  }

  async deleteJob(id: string): Promise<void> {
    await this.update(id, async () => {
      const path = this.recordPath(this.jobsDir, id);
      if (path) await rm(path, { force: true });
    });
  }

  async expireJob(id: string, seconds: number): Promise<void> {
    await this.update(id, async (file) => {
      const job = this.live(file);
      if (!job) return;
      job.deleteAt = Date.now() + seconds * 1000;
      await this.writeJob(job);
    });
  }

  async putFile(file: FileRecord): Promise<void> {
    const path = this.recordPath(this.filesDir, file.id);
    if (!path) throw new Error(`invalid file id ${file.id}`);
    await mkdir(this.filesDir, { recursive: true });
    await writeAtomic(path, JSON.stringify(file));
  }

  private liveFile(file: FileRecord | undefined, now = Date.now()): FileRecord | undefined {
    return file && (file.expiresAt === undefined || file.expiresAt * 1000 > now) ? file : undefined;
  }

  async getFile(id: string): Promise<FileRecord | undefined> {
    const path = this.recordPath(this.filesDir, id);
    const buf = path ? await readOrUndefined(path) : undefined;
    return this.liveFile(buf ? (JSON.parse(buf.toString("utf8")) as FileRecord) : undefined);
  }

  async listFiles(owner: string): Promise<FileRecord[]> {
    const names = (await entries(this.filesDir)).filter((n) => n.endsWith(".json"));
    const files = await Promise.all(names.map((n) => this.getFile(n.slice(0, -".json".length))));
    return files
      .filter((f): f is FileRecord => f !== undefined && f.owner === owner)
      .sort((a, b) => b.createdAt - a.createdAt)
      .slice(0, 1000);
  }

  async deleteFile(id: string): Promise<void> {
    const path = this.recordPath(this.filesDir, id);
    if (path) await rm(path, { force: true });
  }

  async putInstance(id: string, info: InstanceInfo, seconds: number): Promise<void> {
    const path = this.recordPath(this.instancesDir, id);
    if (!path) throw new Error(`invalid instance id ${id}`);
    await mkdir(this.instancesDir, { recursive: true });
    await writeAtomic(
      path,
      JSON.stringify({ ...info, until: Date.now() + seconds * 1000 } satisfies InstanceFile),
    );
  }

  async getInstance(id: string): Promise<InstanceInfo | undefined> {
    const path = this.recordPath(this.instancesDir, id);
    const buf = path ? await readOrUndefined(path) : undefined;
    if (!buf) return undefined;
    const { until, ...info } = JSON.parse(buf.toString("utf8")) as InstanceFile;
    return until > Date.now() ? info : undefined;
  }

  async deleteInstance(id: string): Promise<void> {
    const path = this.recordPath(this.instancesDir, id);
    if (path) await rm(path, { force: true });
  }

  /** Delete expired job and file records, lapsed instances and what crashed writers left. */
  async sweep(now = Date.now()): Promise<void> {
    const jobNames = await entries(this.jobsDir);
    for (const name of jobNames.filter((n) => n.endsWith(".json"))) {
      const id = name.slice(0, -".json".length);
      const expired = (file: JobFile | undefined) => file !== undefined && !this.live(file, now);
      if (!expired(await this.readJob(id))) continue;
      await this.update(id, async (file) => {
        if (expired(file)) await rm(join(this.jobsDir, name), { force: true });
      });
    }
    await removeStaleTemps(this.jobsDir, jobNames, now);
    const fileNames = await entries(this.filesDir);
    for (const name of fileNames.filter((n) => n.endsWith(".json"))) {
      const buf = await readOrUndefined(join(this.filesDir, name));
      const file = buf ? (JSON.parse(buf.toString("utf8")) as FileRecord) : undefined;
      if (file && !this.liveFile(file, now)) await rm(join(this.filesDir, name), { force: true });
    }
    await removeStaleTemps(this.filesDir, fileNames, now);
    const instanceNames = await entries(this.instancesDir);
    for (const name of instanceNames.filter((n) => n.endsWith(".json"))) {
      const buf = await readOrUndefined(join(this.instancesDir, name));
      const until = buf ? (JSON.parse(buf.toString("utf8")) as InstanceFile).until : 0;
      if (until < now - STALE_TMP_MS) await rm(join(this.instancesDir, name), { force: true });
    }
    await removeStaleTemps(this.instancesDir, instanceNames, now);
  }
}
