import { randomUUID } from "node:crypto";
import { splitLines } from "./lines.js";
import type { JobResults } from "./results.js";
import type { BlobStore, MetaStore } from "./store.js";
import { type FileRecord, fileKeys, JobNotFoundError, type JobRecord, keys } from "./types.js";

/** Bytes of an uploaded file per stored part. */
const FILE_PART_BYTES = 1 << 20;

/**
 * The OpenAI Files API over the job stores: uploads kept in parts of whole lines, and the output
 * and error files of finished batches, which are read from the batch's results, never copied.
 */
export class FileStore {
  constructor(
    private readonly meta: MetaStore,
    private readonly blobs: BlobStore,
    private readonly results: JobResults,
    /** Seconds an upload is kept. */
    private readonly ttlSeconds: number,
    private readonly getJob: (owner: string, id: string) => Promise<JobRecord>,
  ) {}

  /**
   * Store an upload in parts of whole lines (memory holds one part). Each part expires with the
   * file from the moment it is written, so an upload cut short leaves nothing that stays.
   */
  async put(
    owner: string,
    filename: string,
    purpose: string,
    content: AsyncIterable<Buffer>,
  ): Promise<FileRecord> {
    const now = Math.floor(Date.now() / 1000);
    const record: FileRecord = {
      id: `file-${randomUUID().replaceAll("-", "")}`,
      owner,
      filename,
      purpose,
      bytes: 0,
      parts: 0,
      createdAt: now,
      expiresAt: now + this.ttlSeconds,
    };
    const ttl = () => Math.max(1, (record.expiresAt as number) - Math.floor(Date.now() / 1000));
    const store = async (part: string) => {
      const p = record.parts;
      await this.blobs.put(keys.filePart(record.id, p), part);
      record.parts++;
      await this.blobs.expire(fileKeys(record.id, p + 1, p), ttl());
    };
    try {
      // A directory store marks the file's directory now; Redis expires each part as it is written.
      await this.blobs.expire(fileKeys(record.id, 0), ttl());
      let part = "";
      for await (const line of splitLines(content)) {
        part += `${line}\n`;
        record.bytes += Buffer.byteLength(line) + 1;
        if (part.length >= FILE_PART_BYTES) {
          await store(part);
          part = "";
        }
      }
      if (part.length) await store(part);
    } catch (err) {
      await this.blobs.remove(fileKeys(record.id, record.parts + 1)).catch(() => {});
      throw err;
    }
    await this.meta.putFile(record);
    return record;
  }

  async get(owner: string, id: string): Promise<FileRecord> {
    const derived = /^file-(batch_[0-9a-f]+)-(output|errors)$/.exec(id);
    if (derived) {
      const job = await this.getJob(owner, derived[1] as string);
      if (job.status !== "completed" && job.status !== "cancelled")
        throw new JobNotFoundError(`file ${id} not found`);
      return {
        id,
        owner,
        filename: `${job.id}_${derived[2]}.jsonl`,
        purpose: "batch_output",
        bytes: 0,
        parts: job.chunks,
        createdAt: Math.floor((job.finishedAt ?? job.createdAt) / 1000),
        derivedFrom: { job: job.id, which: derived[2] as "output" | "errors" },
      };
    }
    const file = await this.meta.getFile(id);
    if (!file || file.owner !== owner) throw new JobNotFoundError(`file ${id} not found`);
    return file;
  }

  list(owner: string): Promise<FileRecord[]> {
    return this.meta.listFiles(owner);
  }

  /** Change an uploaded file's purpose (multipart fields may come after the file). */
  async setPurpose(file: FileRecord, purpose: string): Promise<FileRecord> {
    const updated = { ...file, purpose };
    await this.meta.putFile(updated);
    return updated;
  }

  async *content(file: FileRecord): AsyncGenerator<Buffer> {
    if (file.derivedFrom) {
      const job = await this.getJob(file.owner, file.derivedFrom.job);
      yield* this.results.batchLines(job, file.derivedFrom.which);
      return;
    }
    for (let p = 0; p < file.parts; p++) {
      const buf = await this.blobs.get(keys.filePart(file.id, p));
      if (!buf) throw new Error(`part ${p} of ${file.id} is missing`);
      yield buf;
    }
  }

  /** The non-blank lines of a file. */
  async *lines(file: FileRecord): AsyncGenerator<string> {
    for await (const line of splitLines(this.content(file))) if (line.trim()) yield line;
  }

  async delete(owner: string, id: string): Promise<void> {
    const file = await this.get(owner, id);
    if (file.derivedFrom) return;
    await this.meta.deleteFile(id);
    await this.blobs.remove(fileKeys(id, file.parts));
  }
}
