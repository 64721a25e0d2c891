// LLM reranker rows of npm run bench: pairs per second through /v1/rerank against a raw ONNX
// Runtime session fed the same rows (the pair prompt built once, batched as the server batches).
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { serverConfig } from "../src/config.js";
import type { LLMPairRow } from "../src/models/decoder-prompts.js";
import type { LLMReranker } from "../src/models/llm-reranker.js";
import { openReranker } from "../src/models/open.js";
import { ModelDir } from "../src/runtime/model-dir.js";
import { OnnxSession, padBatch } from "../src/runtime/session.js";
import { corpus, queries, ROOT, startFlagserve, stop } from "./common.js";

const FIXTURES = ["tiny-gemma-reranker", "tiny-minicpm-layerwise", "tiny-gemma2-lightweight"];
const DOCS_PER_REQUEST = 64;
const IN_FLIGHT = 4;
// The server's default batching limits on CPU (where the benchmarks run).
const { maxBatchSize: MAX_BATCH_SIZE, maxBatchTokens: MAX_BATCH_TOKENS } = serverConfig().scheduler;

const int64 = (v: number[]) => new ort.Tensor("int64", BigInt64Array.from(v.map(BigInt)), [v.length]);

/** The rows run on a bare session, in length-sorted batches under the server's default limits. */
async function rawPairsPerSecond(
  dir: string,
  rows: LLMPairRow[],
  meta: Record<string, unknown>,
): Promise<number> {
  const model = await ModelDir.open(dir);
  const session = await OnnxSession.create(model.resolve(model.onnx("auto", "cpu").file));
  const sorted = [...rows].sort((a, b) => b.ids.length - a.ids.length);
  const layers = typeof model.config.num_hidden_layers === "number" ? model.config.num_hidden_layers : 0;
  const side = meta.model_class === "decoder-only-lightweight" ? "right" : "left";
  const started = performance.now();
  for (let i = 0; i < sorted.length; ) {
    const longest = (sorted[i] as LLMPairRow).ids.length;
    const size = Math.max(1, Math.min(MAX_BATCH_SIZE, Math.floor(MAX_BATCH_TOKENS / longest)));
    const batch = sorted.slice(i, i + size);
    i += size;
    const padded = padBatch(
      batch.map((r) => ({ ids: r.ids, typeIds: [] })),
      meta.pad_token_id as number,
      side,
    );
    const dims = [padded.size, padded.seqLen];
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", padded.inputIds, dims),
      attention_mask: new ort.Tensor("int64", padded.attentionMask, dims),
    };
    if (session.inputNames.includes("query_lengths")) {
      feeds.query_lengths = int64(batch.map((r) => r.queryLength));
      feeds.prompt_lengths = int64(batch.map((r) => r.promptLength));
      feeds.compress_ratio = int64([1]);
      feeds.compress_layers = int64(new Array<number>(layers).fill(0));
    }
    await session.run(feeds, ["scores"]);
  }
  const seconds = (performance.now() - started) / 1000;
  await session.release();
  return rows.length / seconds;
}

/** Pairs per second through /v1/rerank with a few requests in flight. */
async function servedPairsPerSecond(dir: string, query: string, docs: string[]): Promise<number> {
  const server = await startFlagserve("flagserve", dir, []);
  try {
    const requests: string[][] = [];
    for (let i = 0; i < docs.length; i += DOCS_PER_REQUEST)
      requests.push(docs.slice(i, i + DOCS_PER_REQUEST));
    const send = async (documents: string[]) => {
      const res = await fetch(`${server.url}/v1/rerank`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "bench", query, documents }),
      });
      if (!res.ok) throw new Error(`rerank: HTTP ${res.status} ${await res.text()}`);
      await res.arrayBuffer();
    };
    await send(docs.slice(0, DOCS_PER_REQUEST)); // warm-up
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next < requests.length) await send(requests[next++] as string[]);
      }),
    );
    return docs.length / ((performance.now() - started) / 1000);
  } finally {
    await stop(server);
  }
}

/** One row per LLM reranker class, on the test fixtures. */
export async function llmRerankBench(say: (s: string) => void, quick: boolean): Promise<void> {
  const docs = corpus(quick ? 256 : 1024, 5);
  const query = queries(1, 3)[0] as string;
  const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");
  say(
    `\n## LLM rerankers (test fixtures; ${docs.length} pairs, ${DOCS_PER_REQUEST} per request, ${IN_FLIGHT} in flight)`,
  );
  say("| model (class) | raw session | through /v1/rerank | ratio |");
  say("| --- | --- | --- | --- |");
  for (const fixture of FIXTURES) {
    const dir = join(ROOT, "test", "fixtures", "models", fixture);
    // flagserve.json names the class, as the server reads it.
    const m = (await openReranker(dir)) as LLMReranker;
    const rows = m.encodePairs(docs.map((d) => [query, d] as [string, string]));
    const meta = m.exportMeta;
    await m.close();
    const raw = await rawPairsPerSecond(dir, rows, meta);
    const served = await servedPairsPerSecond(dir, query, docs);
    say(
      `| ${fixture} (${meta.model_class}) | ${fmt(raw)} pairs/s | ${fmt(served)} pairs/s | **${fmt(served / raw, 2)}** |`,
    );
  }
}
