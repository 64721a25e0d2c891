import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type RunningServer, startServer } from "../src/api/start.js";
import { modelPath } from "./helpers.js";

// tiny-bge-nan answers NaN for every input containing "river" (scripts/fixtures/nan_model.py).
const NAN_MODEL = {
  source: modelPath("tiny-bge-nan"),
  alias: "nan",
  options: { poolingMethod: "cls" as const },
};

async function post(url: string, body: unknown): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

describe("non-finite model outputs: one rule on every route and format", () => {
  let server: RunningServer;
  before(async () => {
    server = await startServer([NAN_MODEL], {
      host: "127.0.0.1",
      port: 0,
      logLevel: "silent",
      jobs: { chunkAttempts: 1 },
    });
    await server.loaded;
  });
  after(() => server.close());

  test("finite inputs are served as usual", async () => {
    const res = await post(`${server.url}/v1/embeddings`, { model: "nan", input: ["a bank", "ok"] });
    assert.equal(res.status, 200);
  });

  for (const encoding_format of ["float", "base64"]) {
    test(`/v1/embeddings (${encoding_format}): 500 naming the input, never a 0 or NaN vector`, async () => {
      const res = await post(`${server.url}/v1/embeddings`, {
        model: "nan",
        input: ["ok", "the river bank"],
        encoding_format,
      });
      assert.equal(res.status, 500);
      const body = (await res.json()) as { error: { code: string; message: string; type: string } };
      assert.equal(body.error.code, "non_finite_output");
      assert.equal(body.error.type, "server_error");
      assert.match(body.error.message, /non-finite values .* for input 1;/);
    });
  }

  test("TEI /embed: 500 in TEI's shape", async () => {
    const res = await post(`${server.url}/embed`, { inputs: ["river"] });
    assert.equal(res.status, 500);
    const body = (await res.json()) as { error: string; error_type: string };
    assert.equal(body.error_type, "backend");
    assert.match(body.error, /non-finite values .* for input 0/);
  });

  test("rerank by an embedding model: 500 naming the document", async () => {
    for (const url of ["/v1/rerank", "/rerank"]) {
      const body =
        url === "/rerank"
          ? { query: "bank", texts: ["a river bank", "money"] }
          : { model: "nan", query: "bank", documents: ["a river bank", "money"] };
      const res = await post(`${server.url}${url}`, body);
      assert.equal(res.status, 500, url);
      assert.match(await res.text(), /non-finite values .* for document 0/);
    }
  });

  test("a bulk job with such an input fails with the reason, and writes no vectors", async () => {
    const created = await post(`${server.url}/v1/jobs`, { model: "nan", input: ["fine", "river"] });
    assert.equal(created.status, 202);
    const { id } = (await created.json()) as { id: string };
    let job: { status: string; errors: string[] } = { status: "", errors: [] };
    for (let i = 0; i < 200; i++) {
      job = (await (await fetch(`${server.url}/v1/jobs/${id}`)).json()) as typeof job;
      if (["completed", "failed", "cancelled"].includes(job.status)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(job.status, "failed");
    assert.match(job.errors.join("\n"), /non-finite values/);
    assert.equal((await fetch(`${server.url}/v1/jobs/${id}/results`)).status, 409);
  });
});
