/** What a job computes: native embedding jobs, or an OpenAI Batch API batch of /v1/embeddings requests. */
export type JobKind = "embed" | "batch";

export type JobStatus = "preparing" | "queued" | "running" | "completed" | "failed" | "cancelled";

export interface JobRecord {
  id: string;
  kind: JobKind;
  /** Hash of the API key that created the job ("anonymous" without auth). */
  owner: string;
  model: string;
  status: JobStatus;
  /** Inputs (embed) or request lines (batch). */
  total: number;
  chunks: number;
  chunkSize: number;
  /** Chunks whose results are stored. */
  chunksDone: number;
  /** Inputs (or request lines) of those chunks. */
  inputsDone: number;
  tokens: number;
  /** Inputs / request lines that failed (batch: error file lines). */
  failed: number;
  inputType: "query" | "passage" | "classification" | "clustering";
  dimensions: number | null;
  /** Width of the stored vectors (embed jobs), known once the first chunk ran. */
  dims: number;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  /** Epoch seconds after which the job and its data are deleted. */
  expiresAt: number | null;
  errors: string[];
  /** Free-form data of the OpenAI facade (input file id, metadata, completion window). */
  meta: Record<string, string>;
  /**
   * The job-system instance that runs the job where no durable queue does: the one storing its
   * inputs ("preparing"), and in the embedded mode the one whose in-process queue holds its chunks.
   * When that instance is gone, another one takes the job over (see JobEngine.reconcile).
   */
  runner?: string;
}

export const TERMINAL: ReadonlySet<JobStatus> = new Set(["completed", "failed", "cancelled"]);
export const OPEN: readonly JobStatus[] = ["preparing", "queued", "running"];

/** Keys of a job's stored data. */
export const keys = {
  input: (job: string, chunk: number) => `job:${job}:in:${chunk}`,
  output: (job: string, chunk: number) => `job:${job}:out:${chunk}`,
  errors: (job: string, chunk: number) => `job:${job}:err:${chunk}`,
  filePart: (file: string, part: number) => `file:${file}:part:${part}`,
};

/**
 * The keys of one job or one uploaded file: all start with `prefix`, and `keys` names every one
 * that may exist, so a store expires or deletes exactly those (Redis) or the prefix's directory.
 */
export interface KeyGroup {
  prefix: string;
  keys: string[];
}

/** Every key a job with `chunks` chunks may have written. */
export function jobKeys(job: string, chunks: number, from = 0): KeyGroup {
  const list: string[] = [];
  for (let c = from; c < chunks; c++) list.push(keys.input(job, c), keys.output(job, c), keys.errors(job, c));
  return { prefix: `job:${job}:`, keys: list };
}

/** The stored parts of an uploaded file. */
export function fileKeys(file: string, parts: number, from = 0): KeyGroup {
  const list: string[] = [];
  for (let p = from; p < parts; p++) list.push(keys.filePart(file, p));
  return { prefix: `file:${file}:`, keys: list };
}

/** An uploaded file (OpenAI Files API). */
export interface FileRecord {
  id: string;
  owner: string;
  filename: string;
  purpose: string;
  bytes: number;
  /** Content is stored in parts of whole lines. */
  parts: number;
  createdAt: number;
  /** Epoch seconds after which the file and its content are deleted (uploads only). */
  expiresAt?: number;
  /** A file computed from a batch's results rather than uploaded. */
  derivedFrom?: { job: string; which: "output" | "errors" };
}

/** A job or file was not found for this owner (another key's records look the same as missing ones). */
export class JobNotFoundError extends Error {}
