// The OpenAPI document as a contract: what it states (statuses, security, limits, enums) and what
// the schema fuzzer (scripts/schemathesis.sh) found the server doing against it.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { openApiDocument } from "../src/api/openapi.js";
import { type RunningServer, startServer } from "../src/api/start.js";
import { modelPath, ROOT, tempDir } from "./helpers.js";

// biome-ignore lint/suspicious/noExplicitAny: the OpenAPI document is free-form JSON
type Doc = any;

const JSON_TYPE = { "content-type": "application/json" };

/** Any method, TRACE included (fetch refuses it): status, headers and body text. */
function raw(
  base: string,
  method: string,
  path: string,
): Promise<{ status: number; allow: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { method }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, allow: res.headers.allow as string | undefined, body }),
      );
    });
    req.on("error", reject);
    req.end();
  });
}

describe("the OpenAPI document", () => {
  let doc: Doc;
  before(async () => {
    doc = await openApiDocument();
  });

  const operations = () =>
    Object.entries(doc.paths as Record<string, Record<string, Doc>>).flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => ({ path, method: method.toUpperCase(), op })),
    );

  test("public routes need no key; every other route declares 401, 500 and 503", () => {
    const publicPaths = ["/health", "/ready", "/metrics", "/openapi.json"];
    for (const { path, method, op } of operations()) {
      const statuses = Object.keys(op.responses);
      if (publicPaths.includes(path)) {
        assert.deepEqual(op.security, [], `${method} ${path}`);
        assert.ok(!statuses.includes("401"), `${method} ${path}`);
      } else {
        assert.equal(op.security, undefined, `${method} ${path} inherits the bearer requirement`);
        for (const s of ["401", "500", "503"]) assert.ok(statuses.includes(s), `${method} ${path} ${s}`);
      }
    }
    assert.deepEqual(doc.security, [{ bearer: [] }]);
  });

  test("operations with a body declare the body parser's statuses in their dialect", () => {
    for (const { path, method, op } of operations()) {
      if (method !== "POST" && method !== "DELETE") continue;
      const statuses = Object.keys(op.responses);
      const tei = JSON.stringify(op.responses).includes("TeiError");
      for (const s of [tei ? "422" : "400", "413", "415", "429"]) {
        assert.ok(statuses.includes(s), `${method} ${path} ${s}`);
      }
    }
    // TEI answers empty input with 400 (error_type "empty"), validation with 422.
    const embed = doc.paths["/embed"].post.responses;
    assert.equal(embed["400"].content["application/json"].schema.$ref, "#/components/schemas/TeiError");
    assert.ok(embed["422"]);
  });

  test("the streamed job results are a 200 in their own media types, and 409 before completion", () => {
    const results = doc.paths["/v1/jobs/{id}/results"].get.responses;
    assert.deepEqual(Object.keys(results["200"].content).sort(), [
      "application/octet-stream",
      "application/x-ndjson",
    ]);
    assert.ok(results["409"]);
    assert.ok(doc.paths["/v1/files/{id}/content"].get.responses["200"].content["application/jsonl"]);
    assert.ok(doc.paths["/metrics"].get.responses["200"].content["text/plain"]);
  });

  test("limits, minimums and enums the server enforces are in the schemas", () => {
    const body = (path: string) => doc.paths[path].post.requestBody.content["application/json"].schema;
    const input = body("/v1/embeddings").properties.input.anyOf;
    for (const branch of input.filter((b: Doc) => b.type === "array")) {
      assert.equal(branch.minItems, 1);
      // A flat array of token ids is one input: only the arrays of inputs are bounded.
      const flatIds = branch.items.type === "integer";
      assert.equal(branch.maxItems, flatIds ? undefined : 2048, "the default --max-inputs");
    }
    assert.deepEqual(body("/v1/embeddings").properties.encoding_format.enum, ["float", "base64"]);
    assert.equal(body("/v1/embeddings").properties.dimensions.minimum, 1);
    assert.equal(body("/v1/rerank").properties.top_n.minimum, 1);
    assert.equal(body("/v1/rerank").properties.max_chunks_per_doc.maximum, 64);
    assert.equal(body("/rerank").properties.texts.minItems, 1);
    assert.deepEqual(body("/v1/batches").properties.endpoint.enum, ["/v1/embeddings"]);
    assert.deepEqual(body("/v1/jobs").oneOf, [{ required: ["input"] }, { required: ["input_file_id"] }]);
    const upload = doc.paths["/v1/files"].post.requestBody.content["multipart/form-data"].schema;
    assert.deepEqual(upload.required, ["file"]);
  });

  test("cancelling a job is POST .../cancel; DELETE deletes it", () => {
    assert.ok(doc.paths["/v1/jobs/{id}/cancel"].post);
    assert.deepEqual(
      Object.keys(
        doc.paths["/v1/jobs/{id}"].delete.responses["200"].content["application/json"].schema.properties,
      ),
      ["id", "object", "deleted"],
    );
  });
});

describe("the server keeps the contract", () => {
  let server: RunningServer;
  let url: string;
  let jobsDir: Awaited<ReturnType<typeof tempDir>>;
  before(async () => {
    jobsDir = await tempDir();
    server = await startServer(
      [
        { source: modelPath("tiny-bge"), alias: "bge", options: { poolingMethod: "cls" } },
        { source: modelPath("tiny-m3"), alias: "m3", options: { modelClass: "encoder-only-m3" } },
      ],
      {
        host: "127.0.0.1",
        port: 0,
        logLevel: "silent",
        limits: { maxInputs: 5 },
        jobs: { resultsDir: jobsDir.path },
      },
    );
    await server.loaded;
    url = server.url;
  });
  after(async () => {
    await server.close();
    await jobsDir.cleanup();
  });

  const post = (path: string, body: unknown, headers: Record<string, string> = JSON_TYPE) =>
    fetch(`${url}${path}`, { method: "POST", headers, body: JSON.stringify(body) });

  test("a known path with another method is a 405 with Allow, in the route's error shape", async () => {
    const cases: [string, string, string][] = [
      ["PUT", "/v1/embeddings", "POST"],
      ["GET", "/embed", "POST"],
      ["DELETE", "/health", "GET, HEAD"],
      ["POST", "/v1/jobs/job-x", "DELETE, GET, HEAD"],
      ["DELETE", "/v1/models/BAAI/bge-small-en-v1.5", "GET, HEAD"],
      ["OPTIONS", "/v1/rerank", "POST"],
      ["TRACE", "/v1/batches", "GET, HEAD, POST"],
    ];
    for (const [method, path, allow] of cases) {
      const res = await raw(url, method, path);
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.allow, allow, `${method} ${path}`);
      const body = JSON.parse(res.body) as { error: unknown; error_type?: string };
      if (path === "/embed") assert.equal(body.error_type, "validation", "TEI's shape");
      else assert.equal((body.error as { code: string }).code, "method_not_allowed");
    }
  });

  test("405 comes before the body is read: QUERY without a Content-Type is not a 400", async () => {
    const res = await raw(url, "QUERY", "/v1/models");
    assert.equal(res.status, 405);
    assert.equal(res.allow, "GET, HEAD");
  });

  test("the router's own refusals come in the route's error shape and are documented (fuzzer: ST103)", async () => {
    const long = await raw(url, "POST", `/v1/batches/${"x".repeat(101)}/cancel`);
    assert.equal(long.status, 414);
    assert.equal((JSON.parse(long.body) as { error: { code: string } }).error.code, "path_too_long");
    const bad = await raw(url, "GET", "/v1/jobs/%E0%A4%A");
    assert.equal(bad.status, 400);
    assert.equal((JSON.parse(bad.body) as { error: { code: string } }).error.code, "invalid_url");
    const doc = (await (await fetch(`${url}/openapi.json`)).json()) as Doc;
    for (const s of ["400", "414"]) assert.ok(doc.paths["/v1/batches/{id}/cancel"].post.responses[s], s);
    assert.ok(doc.paths["/v1/models/{*}"].get.responses["400"]);
  });

  test("an unknown path stays a 404", async () => {
    for (const method of ["GET", "POST", "TRACE"]) {
      assert.equal((await raw(url, method, "/v1/nothing-here")).status, 404, method);
    }
  });

  test("the served document follows the configuration (--max-inputs 5)", async () => {
    const doc = (await (await fetch(`${url}/openapi.json`)).json()) as Doc;
    const input =
      doc.paths["/v1/embeddings"].post.requestBody.content["application/json"].schema.properties.input;
    const arrays = input.anyOf.filter((b: Doc) => b.type === "array" && b.items.type !== "integer");
    assert.ok(arrays.length === 2 && arrays.every((b: Doc) => b.maxItems === 5));
    const res = await post("/v1/embeddings", { model: "bge", input: ["a", "b", "c", "d", "e", "f"] });
    assert.equal(res.status, 400);
    assert.match(await res.text(), /input has 6 items; at most 5 are accepted per request/);
  });

  test("empty inputs: 400 with code empty (OpenAI), 400 error_type empty (TEI)", async () => {
    const openai = await post("/v1/embeddings", { model: "bge", input: [] });
    assert.equal(openai.status, 400);
    const o = (await openai.json()) as { error: { code: string; param: string } };
    assert.deepEqual([o.error.code, o.error.param], ["empty", "input"]);
    for (const [path, body] of [
      ["/embed", { inputs: [] }],
      ["/tokenize", { inputs: [] }],
      ["/rerank", { query: "q", texts: [] }],
    ] as const) {
      const res = await post(path, body);
      assert.equal(res.status, 400, path);
      assert.equal(((await res.json()) as { error_type: string }).error_type, "empty", path);
    }
  });

  test("bodies in media types no route takes are a 415 (fuzzer: POST /v1/files with JSON was a 400)", async () => {
    const text = await post("/v1/embeddings", "hello", { "content-type": "text/plain" });
    assert.equal(text.status, 415);
    const json = await post("/v1/files", { file: "x" });
    assert.equal(json.status, 415);
    assert.equal(((await json.json()) as { error: { code: string } }).error.code, "unsupported_media_type");
    const none = await fetch(`${url}/v1/files`, { method: "POST" });
    assert.equal(none.status, 415);
  });

  test("a multipart body without a boundary is a 400, not a 500 (fuzzer: ST102)", async () => {
    const res = await fetch(`${url}/v1/files`, {
      method: "POST",
      headers: { "content-type": "multipart/form-data" },
      body: "--x\r\n\r\n",
    });
    assert.equal(res.status, 400);
  });

  test("a JSON body of the wrong type is a 400, also where the schema has a oneOf (fuzzer: ST101)", async () => {
    for (const body of ["AAA", 12, null, [1]]) {
      const res = await post("/v1/jobs", body);
      assert.equal(res.status, 400, JSON.stringify(body));
      const e = (await res.json()) as { error: { message: string } };
      assert.match(e.error.message, /must be (an )?object/, JSON.stringify(body));
    }
    const both = await post("/v1/jobs", { model: "bge", input: ["x"], input_file_id: "file-x" });
    assert.equal(both.status, 400);
    assert.deepEqual(((await both.json()) as { error: { message: string; param: string } }).error, {
      message: "give exactly one of input, input_file_id",
      type: "invalid_request_error",
      param: "input_file_id",
      code: null,
    });
    const neither = await post("/v1/jobs", { model: "bge" });
    assert.equal(neither.status, 400);
    assert.equal(((await neither.json()) as { error: { param: string } }).error.param, "input");
  });

  test("mode_weights near the float limit give finite scores, not a 500 (fuzzer: ST101)", async () => {
    const documents = ["BGE M3 is an embedding model.", "Pizza."];
    const huge = await post("/v1/rerank", {
      model: "m3",
      query: "What is BGE M3?",
      documents,
      mode_weights: [1.6e308, 1.5e84, 3.1e307],
    });
    assert.equal(huge.status, 200);
    const scaled = await post("/v1/rerank", {
      model: "m3",
      query: "What is BGE M3?",
      documents,
      mode_weights: [1.6, 1.5e-224, 0.31],
    });
    type Ranked = { results: { index: number; relevance_score: number }[] };
    const a = ((await huge.json()) as Ranked).results;
    const b = ((await scaled.json()) as Ranked).results;
    // Weights are relative: the same weights at another scale give the same scores.
    assert.deepEqual(
      a.map((r) => r.index),
      b.map((r) => r.index),
    );
    for (let i = 0; i < a.length; i++) {
      assert.ok(Number.isFinite(a[i]?.relevance_score));
      assert.ok(Math.abs((a[i]?.relevance_score as number) - (b[i]?.relevance_score as number)) < 1e-12);
    }
  });

  test("DELETE /v1/jobs/{id} deletes the job: GET answers 404 afterwards (fuzzer: ST301)", async () => {
    const created = (await (await post("/v1/jobs", { model: "bge", input: ["a", "b"] })).json()) as {
      id: string;
    };
    let status = "";
    for (let i = 0; i < 200 && status !== "completed"; i++) {
      status = ((await (await fetch(`${url}/v1/jobs/${created.id}`)).json()) as { status: string }).status;
      if (status !== "completed") await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(status, "completed");
    const del = await fetch(`${url}/v1/jobs/${created.id}`, { method: "DELETE" });
    assert.equal(del.status, 200);
    assert.deepEqual(await del.json(), { id: created.id, object: "job", deleted: true });
    assert.equal((await fetch(`${url}/v1/jobs/${created.id}`)).status, 404);
    assert.equal((await fetch(`${url}/v1/jobs/${created.id}/results`)).status, 404);
    assert.equal((await fetch(`${url}/v1/jobs/${created.id}`, { method: "DELETE" })).status, 404);
    const listed = (await (await fetch(`${url}/v1/jobs`)).json()) as { data: { id: string }[] };
    assert.ok(!listed.data.some((j) => j.id === created.id));
  });

  test("flagserve jobs cancel / delete use the same routes", async () => {
    const cli = (...args: string[]) =>
      new Promise<{ code: number; stdout: string }>((resolve) => {
        execFile(
          process.execPath,
          ["--import", "tsx", join(ROOT, "src", "cli.ts"), "jobs", ...args, "--server", url],
          { cwd: ROOT },
          (err, stdout) => resolve({ code: err ? ((err.code as number) ?? 1) : 0, stdout }),
        );
      });
    const created = (await (await post("/v1/jobs", { model: "bge", input: ["a"] })).json()) as { id: string };
    const cancelled = await cli("cancel", created.id);
    assert.equal(cancelled.code, 0);
    assert.equal((JSON.parse(cancelled.stdout) as { id: string }).id, created.id);
    const deleted = await cli("delete", created.id);
    assert.equal(deleted.code, 0);
    assert.equal((JSON.parse(deleted.stdout) as { deleted: boolean }).deleted, true);
    assert.equal((await fetch(`${url}/v1/jobs/${created.id}`)).status, 404);
    assert.notEqual((await cli("delete", created.id)).code, 0, "a second delete: 404");
  });

  test("POST /v1/jobs/{id}/cancel cancels and keeps the job", async () => {
    const inputs = Array.from({ length: 3000 }, (_, i) => `passage ${i}`);
    const created = (await (await post("/v1/jobs", { model: "bge", input: inputs })).json()) as {
      id: string;
    };
    const res = await fetch(`${url}/v1/jobs/${created.id}/cancel`, { method: "POST" });
    assert.equal(res.status, 200);
    const job = (await res.json()) as { id: string; status: string };
    // A small job may finish before the cancel arrives; either way it ends and stays readable.
    assert.ok(["cancelled", "completed"].includes(job.status), job.status);
    assert.equal((await fetch(`${url}/v1/jobs/${created.id}`)).status, 200);
    assert.equal((await fetch(`${url}/v1/jobs/job-none/cancel`, { method: "POST" })).status, 404);
  });
});

describe("405 and authentication", () => {
  let server: RunningServer;
  let jobsDir: Awaited<ReturnType<typeof tempDir>>;
  before(async () => {
    jobsDir = await tempDir();
    server = await startServer(
      [{ source: modelPath("tiny-bge"), alias: "bge", options: { poolingMethod: "cls" } }],
      {
        host: "127.0.0.1",
        port: 0,
        logLevel: "silent",
        apiKeys: ["key-a"],
        jobs: { resultsDir: jobsDir.path },
      },
    );
    await server.loaded;
  });
  after(async () => {
    await server.close();
    await jobsDir.cleanup();
  });

  test("a wrong method is a 405 with or without a key (the paths are public); unknown paths want a key", async () => {
    const noKey = await raw(server.url, "DELETE", "/health");
    assert.equal(noKey.status, 405);
    assert.equal(noKey.allow, "GET, HEAD");
    assert.equal((await raw(server.url, "PUT", "/v1/embeddings")).status, 405);
    assert.equal((await raw(server.url, "GET", "/v1/nothing-here")).status, 401);
    assert.equal((await raw(server.url, "GET", "/health")).status, 200);
  });
});
