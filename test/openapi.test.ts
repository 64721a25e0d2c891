import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { openApiDocument, stableJson } from "../src/api/openapi.js";
import { configurationMarkdown } from "../src/cli/config-docs.js";
import { ROOT } from "./helpers.js";

test("openapi/openapi.json is up to date with the route schemas (run npm run openapi)", async () => {
  const committed = await readFile(join(ROOT, "openapi", "openapi.json"), "utf8");
  assert.equal(
    committed,
    stableJson(await openApiDocument()),
    "stale: run `npm run openapi` and commit the result",
  );
});

test("docs/configuration.md is up to date with the flags and their defaults (run npm run docs:config)", async () => {
  const committed = await readFile(join(ROOT, "docs", "configuration.md"), "utf8");
  assert.equal(committed, configurationMarkdown(), "stale: run `npm run docs:config` and commit the result");
});
