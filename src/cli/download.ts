import { resolveModelDir } from "../models/loader.js";
import { hubRepoFor } from "../models/mapping.js";
import { modelFileSelector, parseDtype } from "../runtime/model-dir.js";
import { bool, type FlagSpecs, helpText, parseFlags, str, UsageError } from "./args.js";

const FLAGS: FlagSpecs = {
  dtype: {
    type: "string",
    help: "ONNX variant to fetch (auto = fp32 for cpu, fp16 for cuda)",
    default: "auto",
  },
  devices: {
    type: "string",
    help: "devices the model will run on (decides the auto variant)",
    default: "cpu",
  },
  revision: { type: "string", help: "branch, tag or commit", default: "main" },
  "onnx-file": { type: "string", help: "a specific graph file to fetch" },
  verbose: { type: "boolean", help: "stack traces on errors" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

export const DOWNLOAD_USAGE = helpText(
  "Usage: flagserve download MODEL_ID [options]\n\n" +
    "Fetch the files a model needs (config, tokenizer, the chosen ONNX graph) into the Hugging Face\n" +
    "cache (HF_HOME / HF_HUB_CACHE; HF_ENDPOINT and HF_TOKEN are honoured) and print the snapshot path.",
  FLAGS,
);

export async function downloadCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parseFlags(argv, FLAGS);
  if (bool(values, "help")) {
    process.stdout.write(DOWNLOAD_USAGE);
    return;
  }
  const [id, ...rest] = positionals;
  if (!id || rest.length) throw new UsageError("give exactly one model id");
  const onCuda = (str(values, "devices") ?? "cpu").includes("cuda");
  const dtype = parseDtype(str(values, "dtype") ?? "auto");
  const select = modelFileSelector(dtype, onCuda ? "cuda" : "cpu", str(values, "onnx-file"));
  const revision = str(values, "revision") ?? "main";
  const path = await resolveModelDir(id, select, { revision }, hubRepoFor(id));
  process.stdout.write(`${path}\n`);
}
