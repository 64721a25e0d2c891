#!/usr/bin/env node
import { UsageError } from "./cli/args.js";
import { DOWNLOAD_USAGE, downloadCommand } from "./cli/download.js";
import { EMBED_USAGE, embedCommand } from "./cli/embed.js";
import { JOBS_USAGE, jobsCommand } from "./cli/jobs.js";
import { SERVE_USAGE, serveCommand } from "./cli/serve.js";
import { WORKER_USAGE, workerCommand } from "./cli/worker.js";
import { isFlagserveError } from "./runtime/errors.js";

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<void>; usage: string; summary: string }> = {
  serve: {
    run: serveCommand,
    usage: SERVE_USAGE,
    summary: "start the HTTP server (OpenAI, Cohere/Jina, TEI APIs)",
  },
  worker: {
    run: workerCommand,
    usage: WORKER_USAGE,
    summary: "compute bulk-job chunks from Redis on this host's devices",
  },
  jobs: { run: jobsCommand, usage: JOBS_USAGE, summary: "submit bulk jobs, follow them, download results" },
  embed: { run: embedCommand, usage: EMBED_USAGE, summary: "embed stdin lines to JSONL" },
  download: {
    run: downloadCommand,
    usage: DOWNLOAD_USAGE,
    summary: "pre-fetch a model into the Hugging Face cache",
  },
};

function mainUsage(): string {
  const rows = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`);
  return `Usage: flagserve COMMAND [options]\n\nCommands:\n${rows.join("\n")}\n\nRun "flagserve COMMAND --help" for a command's options.\n`;
}

async function main(argv: string[]): Promise<number> {
  // @huggingface/hub reports downloads with console.debug; stdout belongs to the command's output.
  console.debug = (...args: unknown[]) => console.error(...args);
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(mainUsage());
    return name ? 0 : 2;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`flagserve: unknown command "${name}"\n\n${mainUsage()}`);
    return 2;
  }
  const verbose = rest.includes("--verbose") || /^(1|true)$/i.test(process.env.FLAGSERVE_VERBOSE ?? "");
  try {
    await command.run(rest);
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`flagserve ${name}: ${err.message}\nRun "flagserve ${name} --help" for usage.\n`);
      return 2;
    }
    const message =
      isFlagserveError(err) || !(err instanceof Error) ? String((err as Error).message ?? err) : err.message;
    process.stderr.write(`flagserve ${name}: error: ${message}\n`);
    if (verbose && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`flagserve: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
