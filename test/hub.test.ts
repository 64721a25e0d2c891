import assert from "node:assert/strict";
import { readFile, readlink, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { FlagAutoModel } from "../src/models/auto.js";
import { FlagModel } from "../src/models/encoder-only.js";
import { isFlagserveError } from "../src/runtime/errors.js";
import { hubOptionsFromEnv } from "../src/runtime/hub.js";
import { loadGolden, maxAbsDiff, modelPath, tempDir } from "./helpers.js";
import { commitSha, FakeHub, filesOf } from "./support/fake-hub.js";

const golden = loadGolden("tiny-bge");
const corpus = golden.cases.find((c: { name: string }) => c.name === "corpus_normalized");

describe("model store against a hub-like HTTP server", () => {
  const hub = new FakeHub();
  let cache: { path: string; cleanup: () => Promise<void> };
  const main = commitSha("main");
  const v1 = commitSha("v1");
  const hubOpts = () => ({ endpoint: hub.url, cacheDir: cache.path, offline: false });

  before(async () => {
    cache = await tempDir("flagserve-hf-cache-");
    const files = await filesOf(modelPath("tiny-bge"), {
      // a weight file the ONNX runtime never needs: it must not be downloaded
      "pytorch_model.bin": Buffer.alloc(4096, 7),
      "README.md": "# tiny",
    });
    hub.addRepo("test-org/tiny-bge", {
      refs: { main, v1 },
      commits: { [main]: files, [v1]: { ...files, "README.md": Buffer.from("# v1") } },
    });
    hub.addRepo("BAAI/bge-small-en-v1.5", { refs: { main }, commits: { [main]: files } });
    hub.addRepo("test-org/private", { token: "hf_secret", refs: { main }, commits: { [main]: files } });
    const noOnnx = Object.fromEntries(Object.entries(files).filter(([k]) => !k.endsWith(".onnx")));
    hub.addRepo("test-org/no-onnx", { refs: { main }, commits: { [main]: noOnnx } });
    await hub.start();
  });
  after(async () => {
    await hub.stop();
    await cache.cleanup();
  });

  test("downloads only the needed files into the standard cache layout and embeds like the local copy", async () => {
    const m = await FlagModel.load("test-org/tiny-bge", { hub: hubOpts() });
    const out = await m.encodeCorpus(corpus.inputs as string[]);
    assert.ok(maxAbsDiff(out.toArrays(), corpus.output) <= 1e-5);
    await m.close();

    const repoDir = join(cache.path, "models--test-org--tiny-bge");
    assert.equal((await readFile(join(repoDir, "refs", "main"), "utf8")).trim(), main);
    const snap = join(repoDir, "snapshots", main);
    // snapshot entries are symlinks into blobs/, as huggingface_hub lays them out
    assert.match(await readlink(join(snap, "onnx", "model.onnx")), /blobs\/[0-9a-f]{64}$/);
    const fetched = hub.downloads().filter((p) => !p.endsWith("(probe)"));
    assert.ok(fetched.some((p) => p.endsWith("/onnx/model.onnx")));
    assert.ok(fetched.some((p) => p.endsWith("/tokenizer.json")));
    for (const never of ["pytorch_model.bin", "README.md", "model_fp16.onnx", "model_quantized.onnx"]) {
      assert.ok(!fetched.some((p) => p.endsWith(never)), `${never} must not be fetched`);
    }
  });

  test("a second load fetches no file again", async () => {
    const before = hub.downloads().length;
    const m = await FlagModel.load("test-org/tiny-bge", { hub: hubOpts() });
    await m.close();
    assert.equal(hub.downloads().length, before);
  });

  test("dtype decides which variant is fetched", async () => {
    const m = await FlagModel.load("test-org/tiny-bge", { hub: hubOpts(), dtype: "fp16" });
    assert.equal(m.loaded.onnx.file, "onnx/model_fp16.onnx");
    await m.close();
    assert.ok(hub.downloads().some((p) => p.endsWith("/model_fp16.onnx")));
  });

  test("revision pinning resolves a tag to its commit and records the ref", async () => {
    const m = await FlagModel.load("test-org/tiny-bge", { hub: { ...hubOpts(), revision: "v1" } });
    await m.close();
    const repoDir = join(cache.path, "models--test-org--tiny-bge");
    assert.equal((await readFile(join(repoDir, "refs", "v1"), "utf8")).trim(), v1);
    assert.ok((await stat(join(repoDir, "snapshots", v1, "onnx", "model.onnx"))).isFile());
    const byCommit = await FlagModel.load("test-org/tiny-bge", { hub: { ...hubOpts(), revision: main } });
    await byCommit.close();
  });

  test("offline mode reads the cache without a single request", async () => {
    const before = hub.log.length;
    const m = await FlagModel.load("test-org/tiny-bge", { hub: { ...hubOpts(), offline: true } });
    await m.close();
    assert.equal(hub.log.length, before);
    await assert.rejects(
      FlagModel.load("test-org/private", { hub: { ...hubOpts(), offline: true } }),
      (e) => {
        assert.ok(isFlagserveError(e, "hub_offline"));
        assert.match(
          e.message,
          /test-org\/private \(revision main\) is not in the cache .* HF_HUB_OFFLINE is set/,
        );
        return true;
      },
    );
    // a variant that was never downloaded is missing from the snapshot
    await assert.rejects(
      FlagModel.load("test-org/tiny-bge", { hub: { ...hubOpts(), offline: true }, dtype: "q8" }),
      /the model has no q8 graph/,
    );
  });

  test("404s: unknown repository, unknown revision", async () => {
    await assert.rejects(
      FlagModel.load("test-org/missing", { hub: { ...hubOpts(), token: "hf_any" } }),
      (e) => {
        assert.ok(isFlagserveError(e, "hub_not_found"));
        assert.match(e.message, /test-org\/missing was not found on the hub \(HTTP 404\)/);
        return true;
      },
    );
    await assert.rejects(
      FlagModel.load("test-org/tiny-bge", { hub: { ...hubOpts(), revision: "v9" } }),
      (e) => {
        assert.ok(isFlagserveError(e, "hub_not_found"));
        assert.match(e.message, /revision v9 was not found/);
        return true;
      },
    );
  });

  test("auth failures on a private repository, success with the right token", async () => {
    for (const token of [undefined, "hf_wrong"]) {
      await assert.rejects(
        FlagModel.load("test-org/private", { hub: { ...hubOpts(), ...(token ? { token } : {}) } }),
        (e) => {
          assert.ok(isFlagserveError(e, "hub_auth"), String(e));
          assert.match(e.message, /refused access to test-org\/private \(HTTP 401\).*HF_TOKEN/);
          return true;
        },
      );
    }
    await assert.rejects(
      FlagModel.load("test-org/private", { hub: { ...hubOpts(), token: "not-a-token" } }),
      /HF_TOKEN is not a valid hub token/,
    );
    const m = await FlagModel.load("test-org/private", { hub: { ...hubOpts(), token: "hf_secret" } });
    await m.close();
  });

  test("a repository without an ONNX graph says so", async () => {
    await assert.rejects(
      FlagModel.load("test-org/no-onnx", { hub: hubOpts() }),
      /the model has no ONNX graph; ONNX files present: none/,
    );
  });

  test("FlagAutoModel fetches a bare mapped name from its organisation", async () => {
    const m = await FlagAutoModel.fromFinetuned("bge-small-en-v1.5", { hub: hubOpts() });
    assert.equal(m.poolingMethod, "cls");
    await m.close();
    assert.ok(hub.log.some((r) => r.path.startsWith("/api/models/BAAI/bge-small-en-v1.5/")));
  });

  test("an unreachable hub falls back to a cached snapshot, and says so when there is none", async () => {
    const warnings: string[] = [];
    const dead = {
      ...hubOpts(),
      endpoint: "http://127.0.0.1:9",
      onCacheFallback: (m: string) => warnings.push(m),
    };
    const m = await FlagModel.load("test-org/tiny-bge", { hub: dead });
    await m.close();
    // The fallback is not silent: a user who set HF_ENDPOINT learns that it was not used.
    assert.equal(warnings.length, 1);
    assert.match(
      warnings[0] as string,
      /cannot be reached at http:\/\/127\.0\.0\.1:9 .* using the cached snapshot/,
    );
    await assert.rejects(FlagModel.load("test-org/never-cached", { hub: dead }), (e) => {
      assert.ok(isFlagserveError(e, "hub_offline"));
      assert.match(e.message, /not in the cache .* the hub cannot be reached/);
      // What a newcomer can do about it.
      assert.match(e.message, /--model \.\/dir/);
      assert.match(e.message, /HF_ENDPOINT/);
      assert.match(e.message, /HF_HUB_OFFLINE/);
      return true;
    });
  });

  test("environment variables give the defaults", () => {
    const env = hubOptionsFromEnv({
      HF_HOME: "/h",
      HF_ENDPOINT: "http://mirror/",
      HF_TOKEN: "hf_x",
      HF_HUB_OFFLINE: "1",
    });
    assert.deepEqual(env, {
      revision: "main",
      cacheDir: "/h/hub",
      endpoint: "http://mirror",
      token: "hf_x",
      offline: true,
    });
    assert.equal(hubOptionsFromEnv({ HF_HUB_CACHE: "/c", HF_HOME: "/h" }).cacheDir, "/c");
  });
});
