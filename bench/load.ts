// Heavy and hostile load: npm run bench -- --load --model DIR
//
// Each scenario runs against a fresh server with default flags; each figure is compared with a
// baseline measured on the same server moments before (idle latencies), never with a constant.
import { request } from "node:http";
import { availableParallelism } from "node:os";
import { TokenizerPool } from "../src/serving/tokenizer-pool.js";
import { metricValue, percentile, rssMiB, startFlagserve, stop, type Target } from "./common.js";

const WORDS =
  "the of and to in is was for on that with as by at from river mountain forest city village bridge castle museum library harbour railway station market garden history science music language computer network database protein climate energy economy football".split(
    " ",
  );

/** A passage of about `chars` characters, different for every seed. */
function passage(chars: number, seed: number): string {
  let s = "";
  let x = seed * 2654435761;
  while (s.length < chars) {
    x = (x * 1103515245 + 12345) >>> 0;
    s += `${WORDS[x % WORDS.length]} `;
  }
  return s.slice(0, chars);
}

const texts = (n: number, chars: number, seed: number) =>
  Array.from({ length: n }, (_, i) => passage(chars, seed * 100_000 + i));

async function post(t: Target, path: string, body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(`${t.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    ...(signal ? { signal } : {}),
  });
}

/**
 * POST with node:http, which reports a status the server sends before it has read the whole body
 * (a 413) instead of failing with EPIPE as fetch does.
 */
function rawPost(t: Target, path: string, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const req = request(
      `${t.url}${path}`,
      { method: "POST", headers: { "content-type": "application/json" } },
      (res) => {
        status = res.statusCode ?? 0;
        res.resume();
        res.on("end", () => resolve(status));
      },
    );
    // The server may close the connection after answering, while the body is still being sent.
    req.on("error", (err: NodeJS.ErrnoException) => {
      if (status && (err.code === "EPIPE" || err.code === "ECONNRESET")) resolve(status);
      else reject(err);
    });
    req.end(body);
  });
}

async function timed<T>(work: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await work();
  return { ms: performance.now() - t0, value };
}

async function embed(t: Target, input: string[], signal?: AbortSignal): Promise<number> {
  const res = await post(t, "/v1/embeddings", { model: t.model, input, encoding_format: "base64" }, signal);
  await res.arrayBuffer();
  return res.status;
}

/** Probe /health every 50 ms while `work` runs: the slowest answer, in ms. */
async function healthDuring<T>(t: Target, work: Promise<T>): Promise<{ worst: number; value: T }> {
  let done = false;
  let worst = 0;
  const probe = (async () => {
    while (!done) {
      const { ms } = await timed(() => fetch(`${t.url}/health`).then((r) => r.arrayBuffer()));
      worst = Math.max(worst, ms);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const value = await work;
  done = true;
  await probe;
  return { worst, value };
}

/** The event-loop delay p99 the server saw since the previous scrape (prom-client resets it). */
async function loopP99(t: Target): Promise<number> {
  const m = await (t.metrics as () => Promise<string>)();
  return metricValue(m, "flagserve_nodejs_eventloop_lag_p99_seconds") * 1000;
}

const fmt = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");

export async function loadBench(dir: string, say: (s: string) => void, serverArgs: string[]): Promise<void> {
  say(`\n## heavy and hostile load: ${dir.split("/").pop()} (default flags)`);
  const t = await startFlagserve("flagserve", dir, serverArgs);
  const pid = t.proc.pid as number;
  try {
    // Baselines on the idle server.
    await embed(t, texts(64, 2000, 1));
    const idleOne: number[] = [];
    for (let i = 0; i < 20; i++) idleOne.push((await timed(() => embed(t, texts(1, 60, 1000 + i)))).ms);
    const idleFull: number[] = [];
    for (let i = 0; i < 3; i++) idleFull.push((await timed(() => embed(t, texts(32, 2000, 2000 + i)))).ms);
    const ready = rssMiB(pid);
    const one = percentile(idleOne, 50);
    const full = percentile(idleFull, 50);
    say(
      `idle: one 1-input request ${fmt(one)} ms; one 32 x 2000-char request (32 x 512 tokens) ${fmt(full)} ms`,
    );
    say("| scenario | measured | goal |");
    say("| --- | --- | --- |");

    // /tokenize: 10 MB is over the route's size limit; 3 MB is tokenized in a thread.
    await loopP99(t);
    const ten = await timed(() =>
      rawPost(t, "/tokenize", JSON.stringify({ inputs: passage(10 * 2 ** 20, 7) })),
    );
    say(`| 10 MB /tokenize | ${ten.value} in ${fmt(ten.ms)} ms | a bounded answer |`);
    const three = await healthDuring(
      t,
      timed(async () => {
        const r = await post(t, "/tokenize", { inputs: passage(3 * 2 ** 20, 8) });
        await r.arrayBuffer();
        return r.status;
      }),
    );
    say(
      `| 3 MB /tokenize (${three.value.value} in ${fmt(three.value.ms / 1000, 1)} s) | /health worst ${fmt(three.worst)} ms, event-loop p99 ${fmt(await loopP99(t), 1)} ms | < 500 ms, < 20 ms |`,
    );

    // Four clients keep 128 x 2000-character requests in flight; a 1-input request arrives later.
    let stopBulk = false;
    let bulkDone = 0;
    const bulk = Array.from({ length: 4 }, async (_, c) => {
      for (let k = 0; !stopBulk; k++) {
        const status = await embed(t, texts(128, 2000, 10_000 + c * 1000 + k));
        if (status === 200) bulkDone += 128;
      }
    });
    await new Promise((r) => setTimeout(r, 12_000));
    const probe = await healthDuring(
      t,
      timed(() => embed(t, texts(1, 60, 99))),
    );
    const budget = 1.5 * full + 3 * one;
    say(
      `| 1-input request behind 4 bulk clients (queued > 10 s) | ${fmt(probe.value.ms)} ms (status ${probe.value.value}) | <= ${fmt(budget)} ms (1.5 x the 32-input request + 3 x own) |`,
    );
    await loopP99(t);
    const during = await healthDuring(t, new Promise((r) => setTimeout(r, 5000)));
    stopBulk = true;
    await Promise.all(bulk);
    say(
      `| during the 4 bulk clients | /health worst ${fmt(during.worst)} ms, event-loop p99 ${fmt(await loopP99(t), 1)} ms; ${bulkDone} passages done | < 500 ms, < 20 ms |`,
    );

    // 48 clients send 256 x 2000 characters each at once.
    let peak = rssMiB(pid);
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const r = rssMiB(pid);
        if (r.self > peak.self) peak = r;
        await new Promise((res) => setTimeout(res, 50));
      }
    })();
    const flood = await Promise.all(
      Array.from({ length: 48 }, async (_, c) => {
        const { ms, value } = await timed(() => embed(t, texts(256, 2000, 50_000 + c)));
        return { ms, status: value };
      }),
    );
    sampling = false;
    await sampler;
    const counts = new Map<number, number>();
    for (const f of flood) counts.set(f.status, (counts.get(f.status) ?? 0) + 1);
    const slow429 = Math.max(0, ...flood.filter((f) => f.status === 429).map((f) => f.ms));
    say(
      `| 48 clients x 256 x 2000 chars at once | ${[...counts].map(([s, n]) => `${n} x ${s}`).join(", ")}; slowest 429 ${fmt(slow429)} ms; API RSS peak ${fmt(peak.self)} MiB (device worker ${fmt(peak.children)} MiB) | only 200/429, 429 < 1 s, RSS < 600 MiB |`,
    );

    // One request that cannot finish within its deadline here.
    const huge = await timed(async () => {
      const r = await post(t, "/v1/embeddings", { model: t.model, input: texts(2048, 2000, 77) });
      return { status: r.status, body: (await r.text()).slice(0, 160) };
    });
    say(
      `| one 2048 x 2000-char request | ${huge.value.status} in ${fmt(huge.ms)} ms: ${huge.value.body} | 200, or a 4xx at once |`,
    );

    // A client that disconnects: how long until its inputs leave the queue. A blocker keeps the
    // device busy, so the leaving request's inputs sit in the queue.
    const depth = async () =>
      metricValue(await (t.metrics as () => Promise<string>)(), "flagserve_queue_depth", 'model="bench"');
    const blocker = embed(t, texts(128, 2000, 88));
    for (let i = 0; i < 500 && (await depth()) === 0; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300));
    const before = await depth();
    const abort = new AbortController();
    const leaving = embed(t, texts(256, 2000, 89), abort.signal).catch(() => 0);
    for (let i = 0; i < 1000 && (await depth()) < before + 200; i++)
      await new Promise((r) => setTimeout(r, 20));
    const atAbort = await depth();
    abort.abort();
    const gone = await timed(async () => {
      for (let i = 0; i < 1000 && (await depth()) > atAbort - 256; i++)
        await new Promise((r) => setTimeout(r, 10));
    });
    await leaving;
    await blocker;
    say(
      `| client disconnects with 256 inputs queued (depth ${atAbort}) | queue depth fell by them in ${fmt(gone.ms)} ms | < 1000 ms |`,
    );

    // Memory after the spikes: the device worker frees its grown arena once idle (5 s by default).
    const spiked = rssMiB(pid);
    const quiet = await timed(async () => {
      for (let i = 0; i < 80 && rssMiB(pid).children > spiked.children - 128; i++)
        await new Promise((r) => setTimeout(r, 250));
    });
    await new Promise((r) => setTimeout(r, 1000)); // the renewal may be half done when RSS drops
    const idle = rssMiB(pid);
    say(
      `| idle after the spikes | API ${fmt(idle.self)} MiB, device worker ${fmt(spiked.children)} -> ${fmt(idle.children)} MiB after ${fmt(quiet.ms / 1000, 1)} s (${fmt(ready.children)} MiB when ready) | memory returns |`,
    );
  } finally {
    await stop(t);
  }

  // Tokenizer threads: throughput with 1 thread and with one per core.
  const pieces = texts(512, 2000, 5);
  const rate = async (threads: number) => {
    const pool = new TokenizerPool({ threads, heapMb: 1024 });
    const spec = { kind: "text" as const, limit: 512, truncate: true, offset: 0 };
    const pass = () =>
      Promise.all(
        Array.from({ length: 8 }, (_, i) => pool.encode(dir, spec, pieces.slice(i * 64, i * 64 + 64))),
      );
    await pass(); // every thread loads the tokenizer and warms up
    const { ms } = await timed(pass);
    await pool.close();
    return (pieces.length * 2000) / (ms / 1000) / 1e6;
  };
  const cores = availableParallelism();
  const r1 = await rate(1);
  const rn = await rate(cores);
  say(
    `| tokenizer threads | 1: ${fmt(r1, 2)} Mchar/s; ${cores}: ${fmt(rn, 2)} Mchar/s (x${fmt(rn / r1, 2)}) | scales with cores |`,
  );
}
