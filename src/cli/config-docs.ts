import { envName, type FlagSpecs } from "./args.js";
import { SERVE_FLAGS } from "./serve.js";
import { WORKER_FLAGS } from "./worker.js";

function table(specs: FlagSpecs): string {
  const rows = Object.entries(specs)
    .filter(([name]) => name !== "help" && name !== "verbose")
    .map(([name, s]) => {
      const flag = `\`--${name}${s.type === "string" ? " VALUE" : ""}\`${s.multiple ? " (repeatable)" : ""}`;
      const def = s.default !== undefined ? `\`${s.default}\`` : "";
      return `| ${flag} | \`${envName(name)}\` | ${def} | ${s.help.replaceAll("|", "\\|")} |`;
    });
  return ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |", ...rows].join("\n");
}

/** docs/configuration.md: every flag of serve and worker with its default, from the code that parses them. */
export function configurationMarkdown(): string {
  return `# Configuration

Generated from \`src/config.ts\` and the command definitions by \`npm run docs:config\`; a test
fails when it is stale. Every flag can also be given as the environment variable shown (a flag on
the command line wins). Numeric defaults live in \`src/config.ts\` (\`DEFAULT_CONFIG\`), the one place
they are written.

## flagserve serve

${table(SERVE_FLAGS)}

## flagserve worker

${table(WORKER_FLAGS)}
`;
}
