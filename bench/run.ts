// Benchmarks: npm run bench [-- --quick] [--model DIR]... [--dtype fp32 --dtype int8] [--peer infinity] [--load]
//
// Every ratio is measured in this one run, against a baseline run on the same machine moments
// before: a raw ONNX Runtime session on the same batches, batching switched off, a peer server.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import * as ort from "onnxruntime-node";
import { serverConfig } from "../src/config.js";
import { type Dtype, ModelDir, parseDtype } from "../src/runtime/model-dir.js";
import { batchFeeds, OnnxSession, padBatch } from "../src/runtime/session.js";
import { type Encoding, TextTokenizer } from "../src/runtime/tokenizer.js";
import {
  corpus,
  embedRequest,
  metricValue,
  percentile,
  queries,
  ROOT,
  startFlagserve,
  stop,
  type Target,
  takePort,
  waitReady,
} from "./common.js";
import { llmRerankBench } from "./llm.js";
import { loadBench } from "./load.js";

const { values } = parseArgs({
  options: {
    model: { type: "string", multiple: true },
    quick: { type: "boolean" },
    peer: { type: "string", multiple: true },
    passages: { type: "string" },
    load: { type: "boolean" },
    // Several: each is served in turn (raw baseline on the same graph) and compared with the first.
    dtype: { type: "string", multiple: true },
  },
});

const QUICK = values.quick === true;
const PASSAGES = Number(values.passages ?? (QUICK ? 2000 : 10_000));
const CLIENTS = 64;
const QUERIES_PER_CLIENT = QUICK ? 8 : 25;
const REQUEST_SIZE = 256;
const BULK_CONCURRENCY = 4;
// The server's default batching limits on CPU (where the benchmarks run), for the raw baseline too.
const { maxBatchSize: MAX_BATCH_SIZE, maxBatchTokens: MAX_BATCH_TOKENS } = serverConfig().scheduler;

// ---------------------------------------------------------------- inputs

// ---------------------------------------------------------------- measurements

/** The raw baseline: tokenized once, sorted by length, packed like the server packs, run on one session. */
async function rawOrt(
  dir: string,
  texts: string[],
  dtype: Dtype,
): Promise<{ perSecond: number; efficiency: number }> {
  const model = await ModelDir.open(dir);
  const tok = await TextTokenizer.fromDir(dir);
  const session = await OnnxSession.create(model.resolve(model.onnx(dtype, "cpu").file));
  const limit = Math.min(512, model.maxPositions ?? 512, tok.modelMaxLength ?? 512);
  const encodings = texts.map((t) => tok.encode(t, limit)).sort((a, b) => b.ids.length - a.ids.length);
  const batches: Encoding[][] = [];
  let current: Encoding[] = [];
  let longest = 0;
  for (const e of encodings) {
    const l = Math.max(longest, e.ids.length);
    if (
      current.length > 0 &&
      (current.length >= MAX_BATCH_SIZE || (current.length + 1) * l > MAX_BATCH_TOKENS)
    ) {
      batches.push(current);
      current = [];
    }
    current.push(e);
    longest = current.length === 1 ? e.ids.length : Math.max(longest, e.ids.length);
  }
  if (current.length) batches.push(current);
  const output = session.outputNames.includes("last_hidden_state")
    ? "last_hidden_state"
    : (session.outputNames[0] as string);
  let real = 0;
  let computed = 0;
  const started = performance.now();
  for (const b of batches) {
    const padded = padBatch(b, tok.padTokenId, tok.paddingSide);
    real += b.reduce((n, e) => n + e.ids.length, 0);
    computed += padded.size * padded.seqLen;
    const out = await session.run(batchFeeds(session, padded), [output]);
    (out[output] as ort.Tensor).dispose?.();
  }
  const seconds = (performance.now() - started) / 1000;
  await session.release();
  return { perSecond: texts.length / seconds, efficiency: real / computed };
}

async function startInfinity(dir: string, env: Record<string, string> = {}): Promise<Target | undefined> {
  const script = join(ROOT, "bench", "peers", "infinity.sh");
  if (!existsSync(script)) return undefined;
  const port = takePort();
  const proc = spawn("bash", [script, dir, String(port)], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitReady(`${url}/health`, proc, 600);
  const models = (await (await fetch(`${url}/models`)).json()) as { data: { id: string }[] };
  return {
    name: "infinity-emb",
    url,
    embeddings: `${url}/embeddings`,
    model: models.data[0]?.id ?? "bench",
    proc,
  };
}

async function bulk(
  t: Target,
  texts: string[],
): Promise<{ perSecond: number; efficiency: number; loopP99Ms: number }> {
  const before = t.metrics ? await t.metrics() : "";
  const chunks: string[][] = [];
  for (let i = 0; i < texts.length; i += REQUEST_SIZE) chunks.push(texts.slice(i, i + REQUEST_SIZE));
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: BULK_CONCURRENCY }, async () => {
      while (next < chunks.length) await embedRequest(t, chunks[next++] as string[]);
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  let efficiency = Number.NaN;
  let loopP99Ms = Number.NaN;
  if (t.metrics) {
    const after = await t.metrics();
    const d = (kind: string) =>
      metricValue(after, "flagserve_batch_tokens_total", `model="bench",kind="${kind}"`) -
      (metricValue(before, "flagserve_batch_tokens_total", `model="bench",kind="${kind}"`) || 0);
    efficiency = d("real") / d("computed");
    loopP99Ms = metricValue(after, "flagserve_nodejs_eventloop_lag_p99_seconds") * 1000;
  }
  return { perSecond: texts.length / seconds, efficiency, loopP99Ms };
}

async function concurrent(
  t: Target,
  qs: string[],
): Promise<{ perSecond: number; p50: number; p99: number; loopP99Ms: number; healthWorstMs: number }> {
  if (t.metrics) await t.metrics();
  const latencies: number[] = [];
  let next = 0;
  let running = true;
  let healthWorstMs = Number.NaN;
  // flagserve's /health, probed every 100 ms while the clients run: liveness under load.
  const probe = t.metrics
    ? (async () => {
        healthWorstMs = 0;
        while (running) {
          const t0 = performance.now();
          await (await fetch(`${t.url}/health`)).arrayBuffer();
          healthWorstMs = Math.max(healthWorstMs, performance.now() - t0);
          await new Promise((r) => setTimeout(r, 100));
        }
      })()
    : Promise.resolve();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      for (let k = 0; k < QUERIES_PER_CLIENT; k++) {
        const q = qs[next++ % qs.length] as string;
        const t0 = performance.now();
        await embedRequest(t, [q]);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  running = false;
  await probe;
  const loopP99Ms = t.metrics
    ? metricValue(await t.metrics(), "flagserve_nodejs_eventloop_lag_p99_seconds") * 1000
    : Number.NaN;
  return {
    perSecond: latencies.length / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    loopP99Ms,
    healthWorstMs,
  };
}

/** One served precision: the raw baseline on its graph, bulk, 64 clients (and unbatched once). */
async function serveAndMeasure(dir: string, dtype: Dtype, pooling: string[], withUnbatched: boolean) {
  if (dtype !== "auto") say(`\n### --dtype ${dtype}`);
  const raw = await rawOrt(dir, texts, dtype);
  say(
    `raw ONNX Runtime session, same batches: ${fmt(raw.perSecond)} passages/s (padding efficiency ${fmt(raw.efficiency, 3)})`,
  );

  const flags = dtype === "auto" ? pooling : [...pooling, "--dtype", dtype];
  const server = await startFlagserve("flagserve", dir, flags);
  let on: Awaited<ReturnType<typeof concurrent>>;
  let b: Awaited<ReturnType<typeof bulk>>;
  try {
    await bulk(server, texts.slice(0, 512)); // warm-up
    b = await bulk(server, texts);
    on = await concurrent(server, qs);
  } finally {
    await stop(server);
  }
  let off: Awaited<ReturnType<typeof concurrent>> | undefined;
  if (withUnbatched) {
    const offServer = await startFlagserve("flagserve (batch size 1)", dir, [
      ...flags,
      "--max-batch-size",
      "1",
    ]);
    try {
      await concurrent(offServer, qs.slice(0, 64));
      off = await concurrent(offServer, qs);
    } finally {
      await stop(offServer);
    }
  }
  say("| measurement | value | goal |");
  say("| --- | --- | --- |");
  say(`| bulk through HTTP | ${fmt(b.perSecond)} passages/s | |`);
  say(`| bulk, ratio to the raw session | **${fmt(b.perSecond / raw.perSecond, 2)}** | >= 0.90 |`);
  say(`| padding efficiency (real / computed tokens) | **${fmt(b.efficiency, 3)}** | >= 0.85 |`);
  say(`| event-loop delay p99 during bulk | **${fmt(b.loopP99Ms)} ms** | < 20 ms |`);
  say(
    `| 64 clients, batching on | ${fmt(on.perSecond)} req/s, p50 ${fmt(on.p50)} ms, p99 ${fmt(on.p99)} ms | |`,
  );
  if (off) {
    say(
      `| 64 clients, batch size 1 | ${fmt(off.perSecond)} req/s, p50 ${fmt(off.p50)} ms, p99 ${fmt(off.p99)} ms | |`,
    );
    say(`| batching speed-up | **${fmt(on.perSecond / off.perSecond, 2)}x** | >= 4x |`);
  }
  say(`| event-loop delay p99 during 64 clients | **${fmt(on.loopP99Ms)} ms** | < 20 ms |`);
  say(`| /health worst during 64 clients | **${fmt(on.healthWorstMs)} ms** | < 500 ms |`);

  return { bulk: b, on };
}

/**
 * A peer serving the same model at the same precision. infinity's int8 on CPU is the graph it
 * prefers there: the dynamically quantized `*quantize*` file (its --dtype applies to torch only).
 */
async function peerRows(
  peer: string,
  dir: string,
  dtype: Dtype,
  b: { perSecond: number },
  on: { perSecond: number; p99: number },
): Promise<void> {
  if (peer !== "infinity") {
    say(`(unknown peer ${peer})`);
    return;
  }
  const quantized = join("onnx", "model_quantized.onnx");
  const int8 = dtype === "int8" || dtype === "q8";
  if (int8 && !existsSync(join(dir, quantized))) {
    say(`(infinity at int8 needs ${quantized} in ${dir})`);
    return;
  }
  const t = await startInfinity(dir, int8 ? { INFINITY_ONNX_FILE: quantized } : {});
  if (!t) {
    say("(infinity peer script missing: bench/peers/infinity.sh)");
    return;
  }
  const label = int8 ? "infinity-emb (model_quantized.onnx)" : "infinity-emb";
  try {
    await bulk(t, texts.slice(0, 512));
    const pb = await bulk(t, texts);
    const pc = await concurrent(t, qs);
    say(
      `| ${label} bulk | ${fmt(pb.perSecond)} passages/s; flagserve / infinity = **${fmt(b.perSecond / pb.perSecond, 2)}** | > 1 |`,
    );
    say(
      `| ${label} 64 clients | ${fmt(pc.perSecond)} req/s, p50 ${fmt(pc.p50)} ms, p99 ${fmt(pc.p99)} ms; throughput ratio **${fmt(on.perSecond / pc.perSecond, 2)}**, p99 ratio ${fmt(on.p99 / pc.p99, 2)} | > 1, < 1 |`,
    );
  } finally {
    await stop(t);
  }
}

// ---------------------------------------------------------------- run

const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");
const lines: string[] = [];
const say = (s: string) => {
  lines.push(s);
  process.stdout.write(`${s}\n`);
};

const models = values.model?.length
  ? values.model
  : [
      join(ROOT, ".cache", "models", "all-MiniLM-L6-v2"),
      join(ROOT, "test", "fixtures", "models", "tiny-bge"),
      // A decoder-only embedder (Qwen3 architecture, last-token pooling), served with no flags.
      join(ROOT, "test", "fixtures", "models", "tiny-qwen3-embed"),
    ].filter((d) => existsSync(join(d, "tokenizer.json")));
if (!existsSync(join(ROOT, ".cache", "models", "all-MiniLM-L6-v2")) && !values.model?.length) {
  say(
    "(no real model at .cache/models/all-MiniLM-L6-v2: run PARITY_VENV=... bash scripts/parity/run.sh to export it)",
  );
}

say(
  `machine: ${cpus().length} x ${cpus()[0]?.model ?? "cpu"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; node ${process.version}; onnxruntime-node ${ort.env.versions.common}`,
);
say(
  `corpus: ${PASSAGES} mixed-length passages, requests of ${REQUEST_SIZE}, ${BULK_CONCURRENCY} in flight; ${CLIENTS} clients x ${QUERIES_PER_CLIENT} one-query requests`,
);
const texts = corpus(PASSAGES);
const qs = queries(2000);

for (const dir of models) {
  // sentence-transformers exports and flagserve exports (flagserve.json) say their own pooling.
  const pooling =
    existsSync(join(dir, "1_Pooling", "config.json")) || existsSync(join(dir, "flagserve.json"))
      ? []
      : ["--pooling", "cls"];
  if (values.load) {
    await loadBench(dir, say, pooling);
    continue;
  }
  say(`\n## ${dir.split("/").pop()}`);
  const dtypes = (values.dtype ?? ["auto"]).map(parseDtype);
  let first: { dtype: Dtype; bulk: number; on: Awaited<ReturnType<typeof concurrent>> } | undefined;
  // Peers read a sentence-transformers model's own pooling; the fixture model has none.
  const peers = existsSync(join(dir, "1_Pooling", "config.json")) ? (values.peer ?? []) : [];
  for (const dtype of dtypes) {
    const { bulk: b, on } = await serveAndMeasure(dir, dtype, pooling, first === undefined);
    if (first) {
      say(`| ${dtype} / ${first.dtype}: bulk throughput | **${fmt(b.perSecond / first.bulk, 2)}x** | |`);
      say(
        `| ${dtype} / ${first.dtype}: 64 clients throughput, p99 | ${fmt(on.perSecond / first.on.perSecond, 2)}x, p99 ${fmt(on.p99 / first.on.p99, 2)}x | |`,
      );
    } else first = { dtype, bulk: b.perSecond, on };
    for (const peer of peers) await peerRows(peer, dir, dtype, b, on);
  }
}

// The LLM rerankers' rows (test fixtures): pairs per second and the ratio to a raw session.
if (!values.load && !values.model?.length) await llmRerankBench(say, QUICK);
