import type { SchedulerOptions } from "../config.js";
import { readJsonIfExists } from "../runtime/files.js";
import { TextTokenizer } from "../runtime/tokenizer.js";
import type { Executor, ModelInfo, ModelSpec } from "./executor.js";
import type { Metrics } from "./metrics.js";
import { ServedEmbedder, type ServedModel, ServedReranker } from "./served.js";
import type { TokenizerPool } from "./tokenizer-pool.js";

export interface ServeOptions {
  scheduler: Partial<SchedulerOptions>;
  metrics: Metrics;
  pool: TokenizerPool;
  /** Device workers batches are spread over. */
  devices: number;
}

/** Build the HTTP-side view of loaded models: tokenizers, prompts, schedulers. */
export async function serveModels(
  infos: ModelInfo[],
  specs: ModelSpec[],
  executor: Executor,
  o: ServeOptions,
): Promise<ServedModel[]> {
  const out: ServedModel[] = [];
  for (const [i, info] of infos.entries()) {
    const tokenizer = await TextTokenizer.fromDir(info.dir);
    const common = {
      pool: o.pool,
      scheduler: o.scheduler,
      devices: o.devices,
      observer: o.metrics.schedulerObserver(info.id),
    };
    if (info.kind === "rerank") {
      out.push(new ServedReranker(info, tokenizer, executor, common));
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
        ...common,
        prompts,
        ...(defaultInputType ? { defaultInputType } : {}),
      }),
    );
  }
  return out;
}
