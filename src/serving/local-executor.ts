// Runs batches with the model classes in this process: the device worker's engine. Importing this
// module loads ONNX Runtime, so only the device worker (and library-style tools) do.
import { existsSync } from "node:fs";
import { FlagICLModel, FlagLLMModel, FlagPseudoMoEModel, readFlagserveJson } from "../models/decoder-only.js";
import type { DecoderServeInfo } from "../models/decoder-prompts.js";
import {
  FlagLLMReranker,
  LayerWiseFlagLLMReranker,
  LightWeightFlagLLMReranker,
} from "../models/llm-reranker.js";
import { BGEM3FlagModel } from "../models/m3.js";
import { defaultInstructions, mappingKey } from "../models/mapping.js";
import { type OpenedModel, type OpenOptions, openModel } from "../models/open.js";
import { FlagReranker } from "../models/reranker.js";
import type { M3Raw } from "../models/scoring.js";
import { FlagserveError } from "../runtime/errors.js";
import type { Float32Matrix } from "../runtime/matrix.js";
import type {
  EmbedItem,
  Executor,
  ModelInfo,
  ModelSpec,
  ScoreBatchOptions,
  ScoreItem,
  TaskInstructions,
} from "./executor.js";

export function defaultAlias(source: string): string {
  const isPath = source.startsWith("/") || source.startsWith(".") || source.startsWith("~");
  if (!isPath) return source;
  const parts = source.replace(/\/+$/, "").split("/");
  return parts[parts.length - 1] as string;
}

/**
 * Apply the model card's instructions unless the spec sets its own. An exported directory is
 * known by the mapped name its flagserve.json records.
 */
export function withDefaultInstructions(spec: ModelSpec): OpenOptions {
  let d = defaultInstructions(spec.source);
  if (d.query === undefined && d.passage === undefined && existsSync(spec.source)) {
    const mapped = readFlagserveJson(spec.source).mapped_name;
    if (typeof mapped === "string" && mapped !== mappingKey(spec.source)) d = defaultInstructions(mapped);
  }
  // Unset rather than null, so an export's own instruction (flagserve.json) still applies.
  return {
    ...(d.query !== undefined ? { queryInstructionForRetrieval: d.query } : {}),
    ...(d.passage !== undefined ? { passageInstructionForRetrieval: d.passage } : {}),
    ...spec.options,
  };
}

export function describeModel(spec: ModelSpec, opened: OpenedModel): ModelInfo {
  const id = spec.alias ?? defaultAlias(spec.source);
  const loaded = opened.model.loaded;
  const base = {
    id,
    source: spec.source,
    dir: loaded.dir.path,
    onnxFile: loaded.onnx.file,
    dtype: loaded.onnx.dtype,
  };
  if (opened.kind === "rerank") {
    const r = opened.model;
    const llm =
      r instanceof FlagLLMReranker ||
      r instanceof LayerWiseFlagLLMReranker ||
      r instanceof LightWeightFlagLLMReranker
        ? r.serveInfo()
        : undefined;
    return {
      ...base,
      kind: "rerank",
      modelClass: llm?.modelClass ?? "encoder-only-base",
      ...(llm ? { llm } : {}),
      maxLength: r.resolveScoreOptions().maxLength,
      dimension: 0,
      m3: false,
      colbertDimension: 0,
      pooling: "none",
      normalize: false,
      truncateDim: null,
      queryInstruction: r.options.queryInstructionForRerank,
      passageInstruction: r.options.passageInstructionForRerank,
      queryFormat: r.options.queryInstructionFormat,
      passageFormat: r.options.passageInstructionFormat,
    };
  }
  const m = opened.model;
  const o = m.options;
  const modelClass =
    m instanceof FlagICLModel
      ? "decoder-only-icl"
      : m instanceof FlagPseudoMoEModel
        ? "decoder-only-pseudo_moe"
        : m instanceof FlagLLMModel
          ? "decoder-only-base"
          : m instanceof BGEM3FlagModel
            ? "encoder-only-m3"
            : "encoder-only-base";
  let decoder: DecoderServeInfo | undefined;
  if (m instanceof FlagLLMModel) {
    decoder = {
      queryMaxLength: m.effectiveMaxLength(o.queryMaxLength),
      passageMaxLength: m.effectiveMaxLength(o.passageMaxLength),
      hardLimit: m.modelMaxLength ?? Number.MAX_SAFE_INTEGER,
      icl:
        m instanceof FlagICLModel
          ? { examplesFormat: m.examplesInstructionFormat, suffix: m.suffix, examples: m.examplesForTask }
          : null,
      domains: m instanceof FlagPseudoMoEModel ? Object.keys(m.domains) : null,
    };
  }
  return {
    ...base,
    kind: "embedding",
    modelClass,
    ...(decoder ? { decoder } : {}),
    maxLength: m.effectiveMaxLength(Math.max(o.passageMaxLength, o.queryMaxLength)),
    dimension: m.dimension,
    m3: m instanceof BGEM3FlagModel,
    colbertDimension: m instanceof BGEM3FlagModel ? m.colbertDimension : 0,
    pooling: m.poolingMethod,
    normalize: o.normalizeEmbeddings,
    truncateDim: o.truncateDim,
    queryInstruction: o.queryInstructionForRetrieval,
    passageInstruction: o.passageInstructionForRetrieval,
    queryFormat: o.queryInstructionFormat,
    passageFormat: o.passageInstructionFormat,
    ...taskInstructionsOf(spec, modelClass),
  };
}

/** Classification / clustering instructions: the spec's, else the model card's, else none. */
function taskInstructionsOf(spec: ModelSpec, modelClass: string): { taskInstructions?: TaskInstructions } {
  const tasks = spec.taskInstructions ?? defaultInstructions(spec.source, modelClass).tasks;
  return tasks && Object.keys(tasks).length > 0 ? { taskInstructions: tasks } : {};
}

/**
 * Models loaded in this process, with one ONNX session per configured device; slot N runs on
 * device N. A device worker process is exactly one of these behind an IPC channel.
 */
export class LocalExecutor implements Executor {
  private readonly models = new Map<string, OpenedModel>();
  private slotCount = 1;

  get slots(): number {
    return this.slotCount;
  }

  async load(specs: ModelSpec[]): Promise<ModelInfo[]> {
    const infos: ModelInfo[] = [];
    for (const spec of specs) {
      const opened = await openModel(spec.source, withDefaultInstructions(spec));
      const info = describeModel(spec, opened);
      if (this.models.has(info.id)) {
        await opened.model.close();
        throw new FlagserveError(
          "invalid_input",
          `two models are served as "${info.id}"; give one an alias (--model ID=ALIAS)`,
        );
      }
      this.models.set(info.id, opened);
      this.slotCount = Math.max(this.slotCount, opened.model.deviceCount);
      infos.push(info);
    }
    return infos;
  }

  private get(id: string): OpenedModel {
    const m = this.models.get(id);
    if (!m) throw new FlagserveError("invalid_input", `model ${id} is not loaded here`);
    return m;
  }

  async embed(model: string, items: EmbedItem[], slot: number): Promise<M3Raw[]> {
    const opened = this.get(model);
    if (opened.kind !== "embedding")
      throw new FlagserveError("invalid_input", `${model} is not an embedding model`);
    const device = slot % opened.model.deviceCount;
    if (opened.model instanceof BGEM3FlagModel) {
      const want = {
        dense: items.some((i) => i.want.dense),
        sparse: items.some((i) => i.want.sparse),
        colbert: items.some((i) => i.want.colbert || i.want.tokens === true),
      };
      return opened.model.runRaw(items, device, want);
    }
    // A batch may mix requests for pooled vectors and for token vectors: compute what is needed.
    const states = items.some((i) => i.want.tokens)
      ? await opened.model.tokenStates(items, device)
      : undefined;
    const dense: Float32Matrix | undefined = items.some((i) => i.want.dense)
      ? await opened.model.denseBatch(items, device)
      : undefined;
    return items.map((_, r) => ({
      ...(dense ? { dense: dense.row(r) } : {}),
      ...(states ? { colbert: states[r] as Float32Matrix } : {}),
    }));
  }

  async score(
    model: string,
    items: ScoreItem[],
    slot: number,
    _signal?: AbortSignal,
    options?: ScoreBatchOptions,
  ): Promise<Float32Array> {
    const opened = this.get(model);
    if (opened.kind !== "rerank") throw new FlagserveError("invalid_input", `${model} is not a reranker`);
    const r = opened.model;
    const device = slot % r.deviceCount;
    if (r instanceof FlagReranker) return r.scoreEncodings(items, device);
    // An LLM reranker row says which (layer, head) score it wants and its part lengths.
    const rows = items.map((item, i) => {
      if (!item.llm)
        throw new FlagserveError(
          "invalid_input",
          `row ${i} of a batch for ${model} lacks its LLM prompt data`,
        );
      return { ids: item.ids, typeIds: item.typeIds, ...item.llm };
    });
    return r.scoreRows(rows, device, options?.compress);
  }

  /** Recreate every model's CPU sessions, between batches (see device-worker.ts). */
  async renewSessions(): Promise<void> {
    for (const m of this.models.values()) await m.model.renewSessions();
  }

  async close(): Promise<void> {
    await Promise.all([...this.models.values()].map((m) => m.model.close()));
    this.models.clear();
  }
}
