import { createReadStream, createWriteStream, openAsBlob } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { bool, type FlagSpecs, helpText, int, parseFlags, str, UsageError } from "./args.js";

const COMMON: FlagSpecs = {
  server: { type: "string", help: "flagserve base URL", default: "http://127.0.0.1:8080" },
  "api-key": { type: "string", help: "bearer token, if the server wants one" },
  verbose: { type: "boolean", help: "stack traces on errors" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

const SUBMIT: FlagSpecs = {
  model: { type: "string", help: "served model name (required)" },
  "input-type": { type: "string", help: "passage or query", default: "passage" },
  dimensions: { type: "string", help: "keep the first N dimensions, re-normalised" },
  format: {
    type: "string",
    help: "jsonl (one JSON string or {text} per line) or text (one input per line); default by extension",
  },
  "no-wait": { type: "boolean", help: "print the job id and return without following progress" },
  ...COMMON,
};

const DOWNLOAD: FlagSpecs = {
  format: { type: "string", help: "jsonl or npy", default: "jsonl" },
  dtype: { type: "string", help: "npy element type: float32 or float16", default: "float32" },
  output: { type: "string", short: "o", help: "file to write (default: stdout)" },
  ...COMMON,
};

export const JOBS_USAGE = `Usage:
  flagserve jobs submit FILE --model NAME [--server URL]    upload inputs, create a job, follow its progress
  flagserve jobs status ID [--server URL]                   print a job's status as JSON
  flagserve jobs download ID [--format jsonl|npy] [-o FILE] stream a completed job's results
  flagserve jobs cancel ID [--server URL]                   stop a job; it and its results so far stay
  flagserve jobs delete ID [--server URL]                   delete a job and its data (cancelling it first)

${helpText("submit options:", SUBMIT)}
${helpText("download options:", DOWNLOAD)}`;

class HttpError extends Error {}

function client(values: Record<string, unknown>) {
  const base = String(values.server ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
  const key = typeof values["api-key"] === "string" ? values["api-key"] : undefined;
  const headers: Record<string, string> = key ? { authorization: `Bearer ${key}` } : {};
  return {
    base,
    async request(path: string, init: RequestInit = {}): Promise<Response> {
      let res: Response;
      try {
        res = await fetch(`${base}${path}`, {
          ...init,
          headers: { ...headers, ...((init.headers as Record<string, string> | undefined) ?? {}) },
        });
      } catch (err) {
        throw new HttpError(`cannot reach ${base}: ${(err as Error).cause ?? (err as Error).message}`);
      }
      if (!res.ok) {
        const text = await res.text();
        let message = text;
        try {
          message = (JSON.parse(text) as { error: { message: string } }).error.message;
        } catch {
          // not an error body: keep the text
        }
        throw new HttpError(`${init.method ?? "GET"} ${path}: HTTP ${res.status}: ${message}`);
      }
      return res;
    },
  };
}

interface JobJson {
  id: string;
  status: string;
  inputs: { total: number; done: number };
  errors: string[];
}

/** Text lines to a JSONL file of JSON strings (what the server's input files hold). */
async function textToJsonl(path: string): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "flagserve-submit-"));
  const out = join(dir, "inputs.jsonl");
  const sink = createWriteStream(out);
  for await (const line of createInterface({
    input: createReadStream(path),
    crlfDelay: Number.POSITIVE_INFINITY,
  })) {
    if (!sink.write(`${JSON.stringify(line)}\n`))
      await new Promise<void>((r) => sink.once("drain", () => r()));
  }
  await new Promise<void>((resolve, reject) =>
    sink.end((err?: Error | null) => (err ? reject(err) : resolve())),
  );
  return { path: out, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

function bar(done: number, total: number, started: number): string {
  const width = 30;
  const frac = total ? done / total : 1;
  const filled = Math.round(frac * width);
  const secs = (Date.now() - started) / 1000;
  const rate = secs > 0 ? done / secs : 0;
  const eta = rate > 0 ? Math.ceil((total - done) / rate) : 0;
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${(frac * 100).toFixed(1)}% ${done}/${total} inputs, ${rate.toFixed(0)}/s, ETA ${eta}s`;
}

async function submit(argv: string[]): Promise<void> {
  const { values, positionals } = parseFlags(argv, SUBMIT);
  if (bool(values, "help")) {
    process.stdout.write(JOBS_USAGE);
    return;
  }
  const [file] = positionals;
  const model = str(values, "model");
  if (!file) throw new UsageError("give the input file");
  if (!model) throw new UsageError("--model is required");
  const format = str(values, "format") ?? (file.endsWith(".jsonl") ? "jsonl" : "text");
  if (format !== "jsonl" && format !== "text") throw new UsageError("--format must be jsonl or text");
  const api = client(values);
  const prepared = format === "text" ? await textToJsonl(file) : { path: file, cleanup: async () => {} };
  let fileId: string;
  try {
    const form = new FormData();
    form.append("purpose", "batch");
    // The upload streams from disk: no input file is read into memory.
    form.append("file", await openAsBlob(prepared.path), "inputs.jsonl");
    fileId = (
      (await (await api.request("/v1/files", { method: "POST", body: form })).json()) as { id: string }
    ).id;
  } finally {
    await prepared.cleanup();
  }
  const dimensions = int(values, "dimensions");
  const created = (await (
    await api.request("/v1/jobs", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        input_file_id: fileId,
        input_type: str(values, "input-type") ?? "passage",
        ...(dimensions ? { dimensions } : {}),
      }),
    })
  ).json()) as JobJson;
  process.stdout.write(`${created.id}\n`);
  if (bool(values, "no-wait")) return;
  const started = Date.now();
  const tty = process.stderr.isTTY;
  let job = created;
  while (!["completed", "failed", "cancelled"].includes(job.status)) {
    await sleep(1000);
    job = (await (await api.request(`/v1/jobs/${created.id}`)).json()) as JobJson;
    const line = `${job.status} ${bar(job.inputs.done, job.inputs.total, started)}`;
    process.stderr.write(tty ? `\r${line}` : `${line}\n`);
  }
  if (tty) process.stderr.write("\n");
  if (job.status !== "completed")
    throw new HttpError(`job ${job.id} ${job.status}: ${job.errors.join("; ")}`);
}

async function status(argv: string[]): Promise<void> {
  const { values, positionals } = parseFlags(argv, COMMON);
  if (bool(values, "help")) {
    process.stdout.write(JOBS_USAGE);
    return;
  }
  const [id] = positionals;
  if (!id) throw new UsageError("give the job id");
  const job = await (await client(values).request(`/v1/jobs/${id}`)).json();
  process.stdout.write(`${JSON.stringify(job, null, 2)}\n`);
}

/** POST /v1/jobs/ID/cancel or DELETE /v1/jobs/ID; prints the answer as JSON. */
async function change(argv: string[], action: "cancel" | "delete"): Promise<void> {
  const { values, positionals } = parseFlags(argv, COMMON);
  if (bool(values, "help")) {
    process.stdout.write(JOBS_USAGE);
    return;
  }
  const [id] = positionals;
  if (!id) throw new UsageError("give the job id");
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const res = await client(values).request(action === "cancel" ? `${path}/cancel` : path, {
    method: action === "cancel" ? "POST" : "DELETE",
  });
  process.stdout.write(`${JSON.stringify(await res.json(), null, 2)}\n`);
}

async function download(argv: string[]): Promise<void> {
  const { values, positionals } = parseFlags(argv, DOWNLOAD);
  if (bool(values, "help")) {
    process.stdout.write(JOBS_USAGE);
    return;
  }
  const [id] = positionals;
  if (!id) throw new UsageError("give the job id");
  const format = str(values, "format") ?? "jsonl";
  if (format !== "jsonl" && format !== "npy") throw new UsageError("--format must be jsonl or npy");
  const dtype = str(values, "dtype") ?? "float32";
  const res = await client(values).request(`/v1/jobs/${id}/results?format=${format}&dtype=${dtype}`);
  const output = str(values, "output");
  const body = Readable.fromWeb(res.body as import("node:stream/web").ReadableStream);
  await pipeline(body, output ? createWriteStream(output) : process.stdout);
}

export async function jobsCommand(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub === "submit") return submit(rest);
  if (sub === "status") return status(rest);
  if (sub === "download") return download(rest);
  if (sub === "cancel" || sub === "delete") return change(rest, sub);
  if (sub === "--help" || sub === "-h" || sub === undefined) {
    process.stdout.write(JOBS_USAGE);
    if (sub === undefined)
      throw new UsageError("give a subcommand: submit, status, download, cancel or delete");
    return;
  }
  throw new UsageError(`unknown jobs subcommand "${sub}"`);
}
