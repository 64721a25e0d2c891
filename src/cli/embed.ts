import { createInterface } from "node:readline";
import { openEmbedder } from "../models/open.js";
import { FlagserveError } from "../runtime/errors.js";
import { Float32Matrix } from "../runtime/matrix.js";
import { bool, type FlagSpecs, helpText, parseFlags, str, UsageError } from "./args.js";
import { MODEL_FLAGS, modelOptions } from "./model-flags.js";

const FLAGS: FlagSpecs = {
  model: { type: "string", help: "model directory or Hugging Face id (required)" },
  query: { type: "boolean", help: "encode the lines as queries (query instruction and max length)" },
  ...MODEL_FLAGS,
  verbose: { type: "boolean", help: "stack traces on errors" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

export const EMBED_USAGE = helpText(
  "Usage: flagserve embed --model ID_OR_DIR [--query] [options] < texts.txt > embeddings.jsonl\n\n" +
    'One input per line; one output line per input: {"index": i, "embedding": [...]}.',
  FLAGS,
);

/** Inputs embedded per step: bounds memory for any stdin size and paces progress reports. */
const CHUNK = 1024;

async function write(out: NodeJS.WritableStream, text: string): Promise<void> {
  if (!out.write(text)) await new Promise<void>((resolve) => out.once("drain", () => resolve()));
}

export async function embedCommand(argv: string[]): Promise<void> {
  const { values } = parseFlags(argv, FLAGS);
  if (bool(values, "help")) {
    process.stdout.write(EMBED_USAGE);
    return;
  }
  const source = str(values, "model");
  if (!source) throw new UsageError("--model is required");
  const embedder = await openEmbedder(source, modelOptions(values, source));
  const asQuery = bool(values, "query");
  const started = Date.now();
  let lastReport = started;
  let done = 0;

  const flush = async (lines: string[]) => {
    const out = asQuery ? await embedder.encodeQueries(lines) : await embedder.encodeCorpus(lines);
    // BGE-M3 answers with all its outputs; the CLI writes the dense vectors.
    const matrix = out instanceof Float32Matrix ? out : (out.denseVecs as Float32Matrix);
    let text = "";
    for (let r = 0; r < matrix.rows; r++) {
      text += `{"index":${done + r},"embedding":[${Array.from(matrix.row(r)).join(",")}]}\n`;
    }
    await write(process.stdout, text);
    done += lines.length;
    const now = Date.now();
    if (now - lastReport >= 2000) {
      lastReport = now;
      const rate = (done / ((now - started) / 1000)).toFixed(0);
      process.stderr.write(`flagserve embed: ${done} inputs embedded (${rate}/s)\n`);
    }
  };

  try {
    let chunk: string[] = [];
    const lines = createInterface({ input: process.stdin, crlfDelay: Number.POSITIVE_INFINITY });
    for await (const line of lines) {
      chunk.push(line);
      if (chunk.length >= CHUNK) {
        await flush(chunk);
        chunk = [];
      }
    }
    if (chunk.length) await flush(chunk);
    if (done === 0) throw new FlagserveError("invalid_input", "no input on stdin: give one text per line");
    if (done > CHUNK) {
      const secs = (Date.now() - started) / 1000;
      process.stderr.write(`flagserve embed: ${done} inputs in ${secs.toFixed(1)}s\n`);
    }
  } finally {
    await embedder.close();
  }
}
