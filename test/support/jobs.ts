import assert from "node:assert/strict";
import { maxAbsDiff } from "../helpers.js";

/** A job as GET /v1/jobs/:id shows it. */
export interface JobView {
  id: string;
  status: string;
  inputs: { total: number; done: number };
  chunks: { total: number; done: number };
  expires_at: number | null;
  errors: string[];
}

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

const WORDS =
  "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split(
    " ",
  );

/** 1000 distinct texts; input i is DISTINCT[i % 1000], so one sync request gives every expected vector. */
export const DISTINCT = Array.from(
  { length: 1000 },
  (_, i) =>
    `${Array.from({ length: 2 + (i % 9) }, (_, k) => WORDS[(i * 7 + k * 3) % WORDS.length]).join(" ")} ${i}`,
);
export const text = (i: number) => DISTINCT[i % DISTINCT.length] as string;

export async function json<T>(res: Response): Promise<T> {
  return (await res.json()) as T;
}

export async function postJson(base: string, path: string, body: unknown): Promise<Response> {
  return fetch(`${base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

/** Create an embedding job of the model "tiny" over these texts (202 expected). */
export async function createJob(base: string, input: string[]): Promise<JobView> {
  const res = await postJson(base, "/v1/jobs", { model: "tiny", input });
  assert.equal(res.status, 202, await res.clone().text());
  return json<JobView>(res);
}

export async function getJob(base: string, id: string): Promise<JobView | undefined> {
  const res = await fetch(`${base}/v1/jobs/${id}`).catch(() => undefined);
  return res?.ok ? json<JobView>(res) : undefined;
}

export async function waitFor(
  check: () => Promise<boolean>,
  what: string,
  timeoutMs = 120_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Wait until the job is completed, failed or cancelled; a job that never ends fails the test. */
export async function waitFinal(base: string, id: string, timeoutMs = 120_000): Promise<JobView> {
  let last: JobView | undefined;
  await waitFor(
    async () => {
      last = (await getJob(base, id)) ?? last;
      return last !== undefined && ["completed", "failed", "cancelled"].includes(last.status);
    },
    `job ${id} to reach a final status`,
    timeoutMs,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last seen: ${JSON.stringify(last)}`);
  });
  return last as JobView;
}

/** The vectors the synchronous endpoint gives these texts. */
export async function syncVectors(base: string, texts: string[]): Promise<Map<string, number[]>> {
  const res = await postJson(base, "/v1/embeddings", {
    model: "tiny",
    input: texts,
    encoding_format: "float",
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = await json<{ data: { embedding: number[] }[] }>(res);
  return new Map(texts.map((t, i) => [t, body.data[i]?.embedding as number[]]));
}

/** JSONL results: every index exactly once, in order, equal to the synchronous vectors of its text. */
export async function checkResults(
  base: string,
  id: string,
  inputs: string[],
  expected: Map<string, number[]>,
): Promise<void> {
  const res = await fetch(`${base}/v1/jobs/${id}/results`);
  assert.equal(res.status, 200, await res.clone().text());
  const lines = (await res.text()).trim().split("\n");
  assert.equal(lines.length, inputs.length, "one line per input");
  let worst = 0;
  lines.forEach((line, i) => {
    const row = JSON.parse(line) as { index: number; embedding: number[] };
    assert.equal(row.index, i, "inputs in order, none twice, none missing");
    worst = Math.max(worst, maxAbsDiff(row.embedding, expected.get(inputs[i] as string) as number[]));
  });
  assert.ok(worst < 1e-6, `job vectors equal the synchronous endpoint's (max diff ${worst})`);
}

/** Upload a file through POST /v1/files as multipart/form-data. */
export async function upload(base: string, content: string | Buffer, purpose = "batch"): Promise<Response> {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", new Blob([content]), "input.jsonl");
  return fetch(`${base}/v1/files`, { method: "POST", body: form });
}
