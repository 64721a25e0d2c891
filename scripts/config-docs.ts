// Regenerate docs/configuration.md from the flag definitions: npm run docs:config
import { writeFile } from "node:fs/promises";
import { configurationMarkdown } from "../src/cli/config-docs.js";

const target = new URL("../docs/configuration.md", import.meta.url);
await writeFile(target, configurationMarkdown());
process.stdout.write(`wrote ${target.pathname}\n`);
