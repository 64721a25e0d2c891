// Helpers shared by the benchmark scripts (run.ts, load.ts).
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dirname, "..");

export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

export const VOCAB = (
  "the of and to in is was for on that with as by at from his her they this which be or an are not have " +
  "embedding retrieval passage query model vector search index token batch server request latency throughput " +
  "river mountain forest city village bridge castle museum library harbour railway station market garden " +
  "history science music language computer network database protein climate energy economy football " +
  "quickly slowly carefully important different general national international traditional modern"
).split(" ");

/** A mixed-length corpus: many short passages, fewer long ones, a few near the model's window. */
export function corpus(n: number, seed = 7): string[] {
  const r = rng(seed);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const u = r();
    const words =
      u < 0.5 ? 5 + Math.floor(r() * 25) : u < 0.85 ? 30 + Math.floor(r() * 90) : 120 + Math.floor(r() * 280);
    const ws: string[] = [];
    for (let k = 0; k < words; k++) ws.push(VOCAB[Math.floor(r() * VOCAB.length)] as string);
    out.push(`${ws.join(" ")}.`);
  }
  return out;
}

export function queries(n: number, seed = 11): string[] {
  const r = rng(seed);
  return Array.from({ length: n }, () =>
    Array.from({ length: 4 + Math.floor(r() * 8) }, () => VOCAB[Math.floor(r() * VOCAB.length)]).join(" "),
  );
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

export interface Target {
  name: string;
  url: string;
  /** The OpenAI-style embeddings route. */
  embeddings: string;
  model: string;
  proc: ChildProcess;
  /** Prometheus text, when the target is flagserve. */
  metrics?: () => Promise<string>;
}

export async function waitReady(url: string, proc: ChildProcess, seconds = 180): Promise<void> {
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${url} not ready after ${seconds}s`);
}

let nextPort = 18900;

/** A free-looking port for the next server a benchmark starts. */
export function takePort(): number {
  return nextPort++;
}

export async function startFlagserve(name: string, dir: string, extra: string[]): Promise<Target> {
  const port = nextPort++;
  const proc = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      join(ROOT, "src", "cli.ts"),
      "serve",
      "--model",
      `${dir}=bench`,
      "--port",
      String(port),
      "--log-level",
      "warn",
      ...extra,
    ],
    { cwd: ROOT, stdio: ["ignore", "inherit", "inherit"] },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitReady(`${url}/ready`, proc);
  return {
    name,
    url,
    embeddings: `${url}/v1/embeddings`,
    model: "bench",
    proc,
    metrics: async () => (await fetch(`${url}/metrics`)).text(),
  };
}

export async function stop(t: Target): Promise<void> {
  if (t.proc.exitCode !== null) return;
  const exited = new Promise((r) => t.proc.once("exit", r));
  t.proc.kill("SIGTERM");
  const timer = setTimeout(() => t.proc.kill("SIGKILL"), 15_000);
  await exited;
  clearTimeout(timer);
}

export async function embedRequest(t: Target, input: string[]): Promise<void> {
  // base64, as the official OpenAI clients ask for it
  const res = await fetch(t.embeddings, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: t.model, input, encoding_format: "base64" }),
  });
  if (!res.ok) throw new Error(`${t.name}: HTTP ${res.status} ${await res.text()}`);
  await res.arrayBuffer();
}

/** A sample's value in Prometheus text format: `name{labels} value`. */
export function metricValue(text: string, name: string, labels = ""): number {
  const prefix = labels ? `${name}{${labels}} ` : `${name} `;
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line ? Number(line.slice(prefix.length)) : Number.NaN;
}

/** Resident memory of a process in MiB (and of its children), from /proc. */
export function rssMiB(pid: number): { self: number; children: number } {
  const rss = (p: number) => {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, "utf8"));
      return m ? Number(m[1]) / 1024 : 0;
    } catch {
      return 0;
    }
  };
  let children: number[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    children = [];
  }
  return { self: rss(pid), children: children.reduce((n, c) => n + rss(c), 0) };
}
