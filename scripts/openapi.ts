// Regenerate openapi/openapi.json from the route schemas: npm run openapi
import { writeFile } from "node:fs/promises";
import { openApiDocument, stableJson } from "../src/api/openapi.js";

const target = new URL("../openapi/openapi.json", import.meta.url);
await writeFile(target, stableJson(await openApiDocument()));
process.stdout.write(`wrote ${target.pathname}\n`);
