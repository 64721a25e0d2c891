import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, test } from "node:test";
import { modelPath, ROOT } from "./helpers.js";
import { runtimeImports } from "./support/imports.js";
import { FlagserveProcess, freePort } from "./support/processes.js";

const HTTP_PACKAGES = [
  "fastify",
  "@fastify/cors",
  "@fastify/multipart",
  "@fastify/swagger",
  "@fastify/swagger-ui",
];

describe("layering", () => {
  test("the HTTP process (flagserve serve) does not import ONNX Runtime or the model classes", () => {
    const loaded = runtimeImports(ROOT, "src/cli/serve.ts");
    assert.ok(loaded.has("fastify"), "the analysis follows imports (sanity)");
    assert.ok(!loaded.has("onnxruntime-node"), "onnxruntime-node reachable from the HTTP process");
    const models = [...loaded].filter((f) =>
      /^src\/models\/(encoder-only|m3|reranker|loader|open|auto|decoder-only|llm-reranker)/.test(f),
    );
    assert.deepEqual(models, [], "model classes reachable from the HTTP process");
  });

  test("the job worker process (flagserve worker) does not import Fastify or the routes", () => {
    const loaded = runtimeImports(ROOT, "src/cli/worker.ts");
    assert.ok(loaded.has("bullmq"), "the analysis follows imports (sanity)");
    for (const p of HTTP_PACKAGES) assert.ok(!loaded.has(p), `${p} reachable from the worker`);
    const http = [...loaded].filter((f) => f.startsWith("src/api/routes/") || f === "src/api/server.ts");
    assert.deepEqual(http, []);
  });

  test("the library entry point loads neither Fastify nor the job queue", () => {
    const loaded = runtimeImports(ROOT, "src/index.ts");
    assert.ok(loaded.has("onnxruntime-node"), "the analysis follows imports (sanity)");
    for (const p of [...HTTP_PACKAGES, "bullmq", "ioredis"])
      assert.ok(!loaded.has(p), `${p} reachable from src/index.ts`);
  });

  test("no import cycle inside src/api/, and routes do not import each other", () => {
    const dir = join(ROOT, "src", "api");
    const files = walk(dir).map((f) => relative(ROOT, f));
    const edges = new Map<string, string[]>();
    for (const f of files) {
      const src = readFileSync(join(ROOT, f), "utf8");
      const targets = [...src.matchAll(/from\s+"(\.[^"]+)"/g)]
        .map((m) => join(f, "..", m[1] as string).replace(/\.js$/, ".ts"))
        .filter((t) => t.startsWith("src/api/"));
      edges.set(f, targets);
      if (f.startsWith("src/api/routes/")) {
        const siblings = targets.filter((t) => t.startsWith("src/api/routes/"));
        assert.deepEqual(siblings, [], `${f} imports another route`);
      }
    }
    const state = new Map<string, "visiting" | "done">();
    const visit = (f: string, path: string[]): void => {
      if (state.get(f) === "done") return;
      if (state.get(f) === "visiting") assert.fail(`import cycle: ${[...path, f].join(" -> ")}`);
      state.set(f, "visiting");
      for (const t of edges.get(f) ?? []) visit(t, [...path, f]);
      state.set(f, "done");
    };
    for (const f of files) visit(f, []);
  });

  test("a running server's HTTP process has not mapped libonnxruntime; its device worker has", async () => {
    const port = await freePort();
    const server = new FlagserveProcess([
      "serve",
      "--model",
      `${modelPath("tiny-bge")}=tiny`,
      "--pooling",
      "cls",
      "--port",
      String(port),
      "--log-level",
      "warn",
    ]);
    try {
      await server.waitReady(`http://127.0.0.1:${port}`);
      const res = await fetch(`http://127.0.0.1:${port}/v1/embeddings`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", input: "hello" }),
      });
      assert.equal(res.status, 200);
      const maps = (pid: number) => readFileSync(`/proc/${pid}/maps`, "utf8");
      assert.doesNotMatch(maps(server.pid), /libonnxruntime/);
      const children = readFileSync(`/proc/${server.pid}/task/${server.pid}/children`, "utf8")
        .trim()
        .split(/\s+/)
        .map(Number);
      assert.ok(
        children.some((pid) => /libonnxruntime/.test(maps(pid))),
        "the device worker runs ONNX Runtime (sanity)",
      );
    } finally {
      await server.kill();
    }
  });
});

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}
