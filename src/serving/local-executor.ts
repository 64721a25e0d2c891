// Runs batches with the model classes in this process: the device worker's engine. Importing this
// module loads ONNX Runtime, so only the device worker (and library-style tools) do.
import { BGEM3FlagModel } from "../models/m3.js";
import { defaultInstructions } from "../models/mapping.js";
import { type OpenedModel, type OpenOptions, openModel } from "../models/open.js";
import type { M3Raw } from "../models/scoring.js";
import { FlagserveError } from "../runtime/errors.js";
import type { Float32Matrix } from "../runtime/matrix.js";
import type { Encoding } from "../runtime/tokenizer.js";
import type { EmbedItem, Executor, ModelInfo, ModelSpec } from "./executor.js";

export function defaultAlias(source: string): string {
  const isPath = source.startsWith("/") || source.startsWith(".") || source.startsWith("~");
  if (!isPath) return source;
  const parts = source.replace(/\/+$/, "").split("/");
  return parts[parts.length - 1] as string;
}

/** Apply the model card's instructions unless the spec sets its own. */
export function withDefaultInstructions(spec: ModelSpec): OpenOptions {
  const d = defaultInstructions(spec.source);
  return {
    queryInstructionForRetrieval: d.query ?? null,
    passageInstructionForRetrieval: d.passage ?? null,
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
    return {
      ...base,
      kind: "rerank",
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
  return {
    ...base,
    kind: "embedding",
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
  };
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

  async score(model: string, items: Encoding[], slot: number): Promise<Float32Array> {
    const opened = this.get(model);
    if (opened.kind !== "rerank") throw new FlagserveError("invalid_input", `${model} is not a reranker`);
    return opened.model.scoreEncodings(items, slot % opened.model.deviceCount);
  }

  async close(): Promise<void> {
    await Promise.all([...this.models.values()].map((m) => m.model.close()));
    this.models.clear();
  }
}
