import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type RunningServer, startServer } from "../src/api/start.js";
import { modelPath } from "./helpers.js";

async function post(url: string, body: unknown): Promise<Response> {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

describe("input checks that answer 400 (OpenAI) / 422 (TEI) instead of a wrong 200", () => {
  let server: RunningServer;
  before(async () => {
    server = await startServer(
      [{ source: modelPath("tiny-bge"), alias: "tiny", options: { poolingMethod: "cls" } }],
      { host: "127.0.0.1", port: 0, logLevel: "silent" },
    );
    await server.loaded;
  });
  after(() => server.close());

  test("cl100k token ids in the unused gaps of the vocabulary are refused", async () => {
    for (const id of [100256, 100261, 100275, 100277, -1]) {
      const res = await post(`${server.url}/v1/embeddings`, { model: "tiny", input: [id] });
      assert.equal(res.status, 400, String(id));
      // Ids beyond cl100k_base's range are refused by the schema (0..100276), the gaps by the service.
      assert.match(await res.text(), /outside the cl100k_base vocabulary|must be between 0 and 100276/);
    }
    // Real ranks and special tokens still decode.
    assert.equal(
      (await post(`${server.url}/v1/embeddings`, { model: "tiny", input: [100255, 100257] })).status,
      200,
    );
  });

  test("/decode refuses ids outside the model's vocabulary", async () => {
    for (const ids of [[-1], [1_000_000], [[1, 2], [99_999_999]]]) {
      const res = await post(`${server.url}/decode`, { ids });
      assert.equal(res.status, 422, JSON.stringify(ids));
      // Negative ids are refused by the schema (minimum 0), ids past the vocabulary by the service.
      assert.match(
        ((await res.json()) as { error: string }).error,
        /outside the model's vocabulary|at least 0/,
      );
    }
    assert.equal((await post(`${server.url}/decode`, { ids: [5, 6] })).status, 200);
  });

  test("/embed_all checks dimensions like /embed; /tokenize refuses an unknown prompt_name like /embed", async () => {
    for (const dimensions of [0, -1, 1e12]) {
      const res = await post(`${server.url}/embed_all`, { inputs: "x", dimensions });
      assert.equal(res.status, 422, String(dimensions));
      // Below 1 the schema refuses (minimum 1); above the model's size the service does.
      assert.match(
        ((await res.json()) as { error: string }).error,
        /dimensions must be (between 1 and 32|at least 1)/,
      );
    }
    for (const url of ["/tokenize", "/embed"]) {
      const res = await post(`${server.url}${url}`, { inputs: "x", prompt_name: "nope" });
      assert.equal(res.status, 422, url);
      assert.match(
        ((await res.json()) as { error: string }).error,
        /unknown prompt_name "nope"; known: query, passage/,
      );
    }
  });

  test("a wrong enum value names the accepted values", async () => {
    const res = await post(`${server.url}/v1/embeddings`, { model: "tiny", input: "x", input_type: "bogus" });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { message: string; param: string } };
    assert.equal(body.error.param, "input_type");
    assert.match(body.error.message, /input_type must be one of "query", "passage", "document"/);
  });
});
