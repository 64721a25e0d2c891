import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseFlags } from "../src/cli/args.js";
import { WORKER_FLAGS, workerConfig } from "../src/cli/worker.js";
import { AUTO_BATCH_TOKENS, DEFAULT_CONFIG, serverConfig } from "../src/config.js";
import { assertClose, loadGolden, modelPath, ROOT, tempDir } from "./helpers.js";
import { commitSha, FakeHub, filesOf } from "./support/fake-hub.js";

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function flagserve(args: string[], stdin = "", env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "src", "cli.ts"), ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

const golden = loadGolden("tiny-bge");
const caseOf = (name: string) => golden.cases.find((c: { name: string }) => c.name === name);

describe("flagserve embed", () => {
  test("one JSONL line per stdin line, equal to FlagEmbedding's vectors", async () => {
    const c = caseOf("corpus_normalized");
    const texts = (c.inputs as string[]).filter((t) => !/[\r\n]/.test(t));
    const run = await flagserve(
      ["embed", "--model", modelPath("tiny-bge"), "--pooling", "cls"],
      `${texts.join("\n")}\n`,
    );
    assert.equal(run.code, 0, run.stderr);
    const lines = run.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { index: number; embedding: number[] });
    assert.deepEqual(
      lines.map((l) => l.index),
      texts.map((_, i) => i),
    );
    const expected = texts.map((t) => c.output[(c.inputs as string[]).indexOf(t)] as number[]);
    assertClose(
      lines.map((l) => l.embedding),
      expected,
      1e-5,
      "cli",
    );
  });

  test("--query applies the query instruction", async () => {
    const c = caseOf("queries_with_instruction");
    const run = await flagserve(
      [
        "embed",
        "--model",
        modelPath("tiny-bge"),
        "--pooling",
        "cls",
        "--query",
        "--query-instruction",
        c.init.queryInstructionForRetrieval,
      ],
      `${(c.inputs as string[]).join("\n")}\n`,
    );
    assert.equal(run.code, 0, run.stderr);
    const vectors = run.stdout
      .trim()
      .split("\n")
      .map((l) => (JSON.parse(l) as { embedding: number[] }).embedding);
    assertClose(vectors, c.output, 1e-5, "queries");
  });

  test("bad input: one line on stderr naming the reason, non-zero exit, no stack trace", async () => {
    const cases: [string[], string, number, RegExp][] = [
      [["embed", "--model", modelPath("tiny-bge"), "--pooling", "cls"], "", 1, /no input on stdin/],
      [["embed", "--model", "./no/such/dir"], "x\n", 1, /model directory \.\/no\/such\/dir does not exist/],
      [
        ["embed", "--model", modelPath("tiny-bge")],
        "x\n",
        1,
        /"tiny-bge" is not in the model mapping and declares no pooling/,
      ],
      [
        // A reranker class is no embedder class.
        ["embed", "--model", modelPath("tiny-bge"), "--model-class", "decoder-only-layerwise"],
        "x\n",
        1,
        /unknown modelClass "decoder-only-layerwise"; expected one of encoder-only-base/,
      ],
      [["embed"], "x\n", 2, /--model is required/],
      [["embed", "--model", "x", "--bogus"], "x\n", 2, /Unknown option '--bogus'/],
      [["nope"], "", 2, /unknown command "nope"/],
    ];
    for (const [args, stdin, code, message] of cases) {
      const run = await flagserve(args, stdin);
      assert.equal(run.code, code, `${args.join(" ")}: ${run.stderr}`);
      assert.match(run.stderr, message);
      assert.doesNotMatch(run.stderr, /\n\s+at /, "no stack trace without --verbose");
    }
  });

  test("a corrupt model file is named; --verbose adds the stack", async () => {
    const dir = await tempDir();
    try {
      await cp(modelPath("tiny-bge"), join(dir.path, "m"), { recursive: true });
      await writeFile(join(dir.path, "m", "config.json"), "{ nope");
      const run = await flagserve(["embed", "--model", join(dir.path, "m"), "--pooling", "cls"], "x\n");
      assert.equal(run.code, 1);
      assert.match(run.stderr, /config\.json is not valid JSON/);
      assert.equal(run.stderr.trim().split("\n").length, 1);
      const verbose = await flagserve(
        ["embed", "--model", join(dir.path, "m"), "--pooling", "cls", "--verbose"],
        "x\n",
      );
      assert.match(verbose.stderr, /\n\s+at /);
    } finally {
      await dir.cleanup();
    }
  });
});

describe("flagserve download", () => {
  const hub = new FakeHub();
  let home: { path: string; cleanup: () => Promise<void> };
  before(async () => {
    home = await tempDir();
    const sha = commitSha("cli");
    hub.addRepo("BAAI/bge-small-en-v1.5", {
      refs: { main: sha },
      commits: { [sha]: await filesOf(modelPath("tiny-bge")) },
    });
    await hub.start();
  });
  after(async () => {
    await hub.stop();
    await home.cleanup();
  });

  test("pre-fetches a mapped name into HF_HOME, then embed works offline from the cache", async () => {
    const env = { HF_HOME: home.path, HF_ENDPOINT: hub.url, HF_HUB_OFFLINE: "" };
    const run = await flagserve(["download", "bge-small-en-v1.5"], "", env);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout.trim(), /hub\/models--BAAI--bge-small-en-v1\.5\/snapshots\/[0-9a-f]{40}$/);
    const offline = await flagserve(["embed", "--model", "BAAI/bge-small-en-v1.5"], "hello\n", {
      ...env,
      HF_HUB_OFFLINE: "1",
    });
    assert.equal(offline.code, 0, offline.stderr);
    assert.equal(JSON.parse(offline.stdout).embedding.length, 32);
    const missing = await flagserve(["download", "BAAI/bge-m3"], "", env);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /BAAI\/bge-m3 was not found on the hub/);
  });
});

describe("flagserve serve, when a model cannot load", () => {
  test("the default model with no hub reachable: a clear line and exit 1, every time (no EPIPE crash)", async () => {
    const home = await tempDir();
    try {
      // Several runs: the crash this guards against (a write to the killed device worker) was a race.
      const runs = await Promise.all(
        Array.from({ length: 4 }, () =>
          flagserve(["serve", "--port", "0", "--log-level", "warn"], "", {
            HF_HOME: home.path,
            HF_ENDPOINT: "http://127.0.0.1:9",
            HF_HUB_OFFLINE: "",
          }),
        ),
      );
      for (const run of runs) {
        assert.equal(run.code, 1, run.stderr);
        assert.doesNotMatch(run.stderr, /EPIPE|Unhandled|node:events/);
        assert.match(run.stderr, /flagserve serve: error: BAAI\/bge-small-en-v1\.5 .* not in the cache/);
        assert.match(run.stderr, /--model \.\/dir/);
        // "listening" is only claimed once the models have loaded.
        assert.doesNotMatch(run.stdout + run.stderr, /listening on/);
      }
    } finally {
      await home.cleanup();
    }
  });
});

describe("flagserve serve, flags that cannot work together", () => {
  test("--job-concurrency 0 without --redis-url: a usage error, not jobs that never run", async () => {
    const run = await flagserve(["serve", "--model", modelPath("tiny-bge"), "--job-concurrency", "0"]);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /--job-concurrency 0 .* --redis-url/);
  });
});

describe("batch size", () => {
  test("unset (or 0) it follows the devices: small batches on CPU, large ones when a GPU is listed", () => {
    const of = (argv: string[]) =>
      workerConfig(parseFlags(argv, WORKER_FLAGS).values, "redis://x").scheduler.maxBatchTokens;
    assert.equal(of([]), AUTO_BATCH_TOKENS.cpu);
    assert.equal(of(["--devices", "cpu:2"]), AUTO_BATCH_TOKENS.cpu);
    assert.equal(of(["--devices", "cuda:1"]), AUTO_BATCH_TOKENS.gpu);
    assert.equal(of(["--devices", "cpu,cuda"]), AUTO_BATCH_TOKENS.gpu);
    assert.equal(of(["--max-batch-tokens", "0", "--devices", "cuda:0"]), AUTO_BATCH_TOKENS.gpu);
    assert.equal(of(["--max-batch-tokens", "4096", "--devices", "cuda:0"]), 4096, "a given size is kept");
    assert.equal(serverConfig({ devices: "cuda:0,cuda:1" }).scheduler.maxBatchTokens, AUTO_BATCH_TOKENS.gpu);
    assert.equal(serverConfig({ scheduler: { maxBatchTokens: 512 } }).scheduler.maxBatchTokens, 512);
  });
});

describe("flagserve worker", () => {
  test("takes the settings that shape its work from the same table as serve, with the same defaults", async () => {
    const defaults = workerConfig(parseFlags([], WORKER_FLAGS).values, "redis://x");
    assert.equal(defaults.jobs.chunkTimeoutSeconds, DEFAULT_CONFIG.jobs.chunkTimeoutSeconds);
    assert.equal(defaults.jobs.ttlSeconds, DEFAULT_CONFIG.jobs.ttlSeconds);
    assert.equal(defaults.pool.memoryReturnMib, DEFAULT_CONFIG.pool.memoryReturnMib);
    const argv = [
      ...["--job-chunk-timeout", "30", "--job-ttl-hours", "2", "--chunk-lock-seconds", "7"],
      ...["--max-batch-tokens", "4096", "--memory-return-mb", "0", "--request-timeout", "20"],
    ];
    const c = workerConfig(parseFlags(argv, WORKER_FLAGS).values, "redis://x");
    assert.equal(c.jobs.chunkTimeoutSeconds, 30);
    assert.equal(c.jobs.ttlSeconds, 7200, "results a worker writes expire as the API's do");
    assert.equal(c.jobs.chunkLockSeconds, 7);
    assert.equal(c.scheduler.maxBatchTokens, 4096);
    assert.equal(c.pool.memoryReturnMib, 0);
    assert.equal(c.limits.requestTimeoutMs, 20_000);
    const help = await flagserve(["worker", "--help"]);
    assert.equal(help.code, 0);
    for (const flag of ["--job-chunk-timeout", "--job-ttl-hours", "--memory-return-mb", "--max-batch-tokens"])
      assert.ok(help.stdout.includes(flag), `${flag} in worker --help`);
  });
});
