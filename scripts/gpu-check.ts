// The CUDA execution provider with the fp16 variant: same vectors as the CPU (fp32) within fp16
// error, the fp16 graph chosen automatically, and a server whose device worker owns the GPU.

import { startServer } from "../src/api/start.js";
import { FlagModel } from "../src/models/encoder-only.js";
import { dot } from "../src/runtime/matrix.js";

const dir = "test/fixtures/models/tiny-bge";
const texts = Array.from(
  { length: 256 },
  (_, i) => `passage ${i} about retrieval and embeddings ${"x ".repeat(i % 50)}`,
);

const cpu = await FlagModel.load(dir, { poolingMethod: "cls", devices: "cpu" });
const gpu = await FlagModel.load(dir, { poolingMethod: "cls", devices: "cuda:0" });
console.log(`cuda:0 loads ${gpu.loaded.onnx.file} (dtype ${gpu.loaded.onnx.dtype})`);
if (gpu.loaded.onnx.dtype !== "fp16") throw new Error("the fp16 variant should be chosen on CUDA");
const a = await cpu.encode(texts);
const t0 = performance.now();
const b = await gpu.encode(texts);
const ms = performance.now() - t0;
let worst = 1;
for (let i = 0; i < a.rows; i++) worst = Math.min(worst, dot(a.row(i), b.row(i)));
console.log(`256 passages on cuda:0 in ${ms.toFixed(1)} ms; worst cosine to CPU fp32: ${worst.toFixed(6)}`);
if (worst < 0.999) throw new Error("CUDA fp16 vectors differ from CPU beyond fp16 error");
await Promise.all([cpu.close(), gpu.close()]);

const server = await startServer([{ source: dir, alias: "tiny", options: { poolingMethod: "cls" } }], {
  port: 0,
  devices: "cuda:0",
  logLevel: "warn",
});
await server.loaded;
const res = await fetch(`${server.url}/v1/embeddings`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ model: "tiny", input: texts }),
});
const ready = await (await fetch(`${server.url}/ready`)).json();
console.log(
  `server on cuda:0: HTTP ${res.status}, workers ${JSON.stringify((ready as { workers: unknown }).workers)}`,
);
await server.close();
if (res.status !== 200) process.exit(1);
console.log("gpu-check: OK");
