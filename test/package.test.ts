import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { promisify } from "node:util";
import { modelPath, ROOT, tempDir } from "./helpers.js";

const run = promisify(execFile);
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const env = {
  ...process.env,
  ONNXRUNTIME_NODE_INSTALL: "skip",
  npm_config_fund: "false",
  npm_config_audit: "false",
};

/** The seed's classes, as a TypeScript user imports them from the package. */
const CLASSES = [
  "FlagAutoModel",
  "FlagAutoReranker",
  "FlagModel",
  "BGEM3FlagModel",
  "FlagReranker",
  "FlagLLMModel",
  "FlagICLModel",
  "FlagPseudoMoEModel",
  "FlagLLMReranker",
  "LayerWiseFlagLLMReranker",
  "LightWeightFlagLLMReranker",
  "AbsEmbedder",
  "AbsReranker",
  "Float32Matrix",
  "TextTokenizer",
  "FlagserveError",
];

describe("the npm package", () => {
  test("npm pack ships the library without tests or benchmarks; an app installs it and uses every class", async () => {
    const dir = await tempDir("flagserve-pack-");
    try {
      const { stdout } = await run(npm, ["pack", "--json", "--pack-destination", dir.path], {
        cwd: ROOT,
        env,
        maxBuffer: 64 * 1024 * 1024,
      });
      const [packed] = JSON.parse(stdout.slice(stdout.indexOf("["))) as {
        filename: string;
        files: { path: string }[];
      }[];
      assert.ok(packed);
      const files = packed.files.map((f) => f.path);
      for (const must of [
        "dist/src/index.js",
        "dist/src/index.d.ts",
        "dist/src/server.js",
        "dist/src/cli.js",
      ]) {
        assert.ok(files.includes(must), `${must} is in the tarball`);
      }
      assert.ok(files.includes("dist/src/serving/device-worker.js"), "the device worker ships");
      const unwanted = files.filter((f) => /^(test|bench|scripts|docs)\//.test(f) || f.endsWith(".onnx"));
      assert.deepEqual(unwanted, [], "no fixtures, benchmarks or scripts in the tarball");

      const app = join(dir.path, "app");
      await mkdir(app);
      await writeFile(
        join(app, "package.json"),
        JSON.stringify({ name: "app", private: true, type: "module" }),
      );
      await run(
        npm,
        ["install", "--prefer-offline", "--no-audit", "--no-fund", join(dir.path, packed.filename)],
        {
          cwd: app,
          env,
          maxBuffer: 64 * 1024 * 1024,
        },
      );
      // FlagAutoModel maps by directory name, as FlagEmbedding does.
      await symlink(modelPath("tiny-bge"), join(app, "bge-small-en-v1.5"));
      await symlink(modelPath("tiny-reranker-bert"), join(app, "bge-reranker-base"));
      await writeFile(
        join(app, "use.mjs"),
        `import * as lib from "flagserve";
import { startServer } from "flagserve/server";
const missing = ${JSON.stringify(CLASSES)}.filter((n) => typeof lib[n] !== "function");
if (missing.length) throw new Error("missing: " + missing);
if (typeof startServer !== "function") throw new Error("no startServer");
const model = await lib.FlagAutoModel.fromFinetuned("./bge-small-en-v1.5");
const v = await model.encode(["hello world"]);
const reranker = await lib.FlagAutoReranker.fromFinetuned("./bge-reranker-base");
const s = await reranker.computeScore([["q", "p"]], { normalize: true });
console.log(JSON.stringify({ embedder: model.constructor.name, rows: v.rows, dims: v.dims, reranker: reranker.constructor.name, score: s[0] }));
await model.close();
await reranker.close();
`,
      );
      const out = await run(process.execPath, ["use.mjs"], { cwd: app, env });
      const got = JSON.parse(out.stdout) as {
        embedder: string;
        rows: number;
        dims: number;
        reranker: string;
        score: number;
      };
      assert.equal(got.embedder, "FlagModel");
      assert.equal(got.rows, 1);
      assert.equal(got.dims, 32);
      assert.equal(got.reranker, "FlagReranker");
      assert.ok(got.score > 0 && got.score < 1);

      // The types resolve through the exports map, as a TypeScript user's editor sees them.
      await writeFile(
        join(app, "use.ts"),
        `import { BGEM3FlagModel, FlagAutoModel, FlagModel, type FlagModelOptions, FlagReranker } from "flagserve";
import { startServer, type ServerConfigInput } from "flagserve/server";
const opts: FlagModelOptions = { poolingMethod: "cls", normalizeEmbeddings: true };
const cfg: ServerConfigInput = { port: 0 };
export const used = [BGEM3FlagModel, FlagAutoModel, FlagModel, FlagReranker, startServer, opts, cfg];
`,
      );
      await writeFile(
        join(app, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: {
            module: "NodeNext",
            moduleResolution: "NodeNext",
            target: "ES2022",
            strict: true,
            noEmit: true,
            skipLibCheck: true,
            // A Node.js app has @types/node; this one borrows the repository's.
            typeRoots: [join(ROOT, "node_modules", "@types")],
            types: ["node"],
          },
          files: ["use.ts"],
        }),
      );
      await run(
        process.execPath,
        [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"],
        {
          cwd: app,
          env,
        },
      ).catch((err: { stdout?: string }) => assert.fail(`tsc failed:\n${err.stdout}`));
    } finally {
      await dir.cleanup();
    }
  });
});
