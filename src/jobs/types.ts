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
  inputType: "query" | "passage";
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
}

export const TERMINAL: ReadonlySet<JobStatus> = new Set(["completed", "failed", "cancelled"]);

/** Keys of a job's stored data. */
export const keys = {
  input: (job: string, chunk: number) => `job:${job}:in:${chunk}`,
  output: (job: string, chunk: number) => `job:${job}:out:${chunk}`,
  errors: (job: string, chunk: number) => `job:${job}:err:${chunk}`,
  filePart: (file: string, part: number) => `file:${file}:part:${part}`,
};

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
  /** A file computed from a batch's results rather than uploaded. */
  derivedFrom?: { job: string; which: "output" | "errors" };
}

/** A job or file was not found for this owner (another key's records look the same as missing ones). */
export class JobNotFoundError extends Error {}
