#!/usr/bin/env node
import { UsageError } from "./cli/args.js";
import { isFlagserveError } from "./runtime/errors.js";

type Run = (argv: string[]) => Promise<void>;

// Commands load only their own modules: `serve` must not map ONNX Runtime into the HTTP process
// (the device workers hold the models), and `jobs` is a plain HTTP client.
const COMMANDS: Record<string, { load: () => Promise<Run>; summary: string }> = {
  serve: {
    load: async () => (await import("./cli/serve.js")).serveCommand,
    summary: "start the HTTP server (OpenAI, Cohere/Jina, TEI APIs)",
  },
  worker: {
    load: async () => (await import("./cli/worker.js")).workerCommand,
    summary: "compute bulk-job chunks from Redis on this host's devices",
  },
  jobs: {
    load: async () => (await import("./cli/jobs.js")).jobsCommand,
    summary: "submit bulk jobs, follow them, download results",
  },
  embed: {
    load: async () => (await import("./cli/embed.js")).embedCommand,
    summary: "embed stdin lines to JSONL",
  },
  download: {
    load: async () => (await import("./cli/download.js")).downloadCommand,
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
    await (await command.load())(rest);
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
