import type { SchedulerOptions } from "../config.js";
import { readJsonIfExists } from "../runtime/files.js";
import { TextTokenizer } from "../runtime/tokenizer.js";
import type { Executor, ModelInfo, ModelSpec } from "./executor.js";
import type { Metrics } from "./metrics.js";
import { ServedEmbedder, type ServedModel, ServedReranker } from "./served.js";

/** Build the HTTP-side view of loaded models: tokenizers, prompts, schedulers. */
export async function serveModels(
  infos: ModelInfo[],
  specs: ModelSpec[],
  executor: Executor,
  scheduler: Partial<SchedulerOptions>,
  metrics: Metrics,
): Promise<ServedModel[]> {
  const out: ServedModel[] = [];
  for (const [i, info] of infos.entries()) {
    const tokenizer = await TextTokenizer.fromDir(info.dir);
    if (info.kind === "rerank") {
      out.push(
        new ServedReranker(info, tokenizer, executor, {
          scheduler,
          observer: metrics.schedulerObserver(info.id),
        }),
      );
      continue;
    }
    const st = await readJsonIfExists(`${info.dir}/config_sentence_transformers.json`);
    const prompts = Object.fromEntries(
      Object.entries((st?.prompts as Record<string, unknown> | undefined) ?? {}).filter(
        (e): e is [string, string] => typeof e[1] === "string",
      ),
    );
    const defaultInputType = specs[i]?.defaultInputType;
    out.push(
      new ServedEmbedder(info, tokenizer, executor, {
        prompts,
        scheduler,
        observer: metrics.schedulerObserver(info.id),
        ...(defaultInputType ? { defaultInputType } : {}),
      }),
    );
  }
  return out;
}
