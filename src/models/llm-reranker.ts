import * as ort from "onnxruntime-node";
import { FlagserveError } from "../runtime/errors.js";
import type { JsonObject } from "../runtime/files.js";
import {
  batchFeeds,
  type OnnxSession,
  padBatch,
  type TokenIds,
  tensorToFloat32,
} from "../runtime/session.js";
import type { Side } from "../runtime/tokenizer.js";
import {
  AbsReranker,
  type RerankerOptions,
  type ResolvedScoreOptions,
  type ScoreOptions,
  type SentencePair,
} from "./abs-reranker.js";
import { loadAs } from "./base.js";
import { readFlagserveJson } from "./decoder-only.js";
import {
  type CompressSettings,
  type LLMPairRow,
  type LLMPairSettings,
  type LLMRerankInfo,
  llmPairEncoding,
  llmPairSettings,
  pickCutoffLayers,
} from "./decoder-prompts.js";
import type { LoadedModel } from "./loader.js";
import { positiveInt } from "./options.js";
import { lengthSortedOrder } from "./pooling.js";
import { sigmoid } from "./scoring.js";

export type { CompressSettings, LLMRerankInfo };

/** The class defaults of FlagEmbedding 1.4.2's LLM rerankers (used when flagserve.json omits them). */
const BASE_PROMPT =
  "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'.";
const LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A.";

/** A row for the server: ids, the lightweight part lengths, and which (layer, head) score to return. */
export type LLMScoreItem = TokenIds & {
  queryLength: number;
  promptLength: number;
  layer: number;
  head: number;
};

/** Constructor options of the LLM rerankers (FlagEmbedding's names, camelCase). */
export interface LLMRerankerOptions extends RerankerOptions {
  /** The instruction after the pair; default the class's (flagserve.json `prompt`). */
  prompt?: string | null;
  /** Layerwise / lightweight: layers to score with (an int means [int]); default the last one. */
  cutoffLayers?: number | number[] | null;
  /** Lightweight: passage tokens averaged in groups of this size (1: none). */
  compressRatio?: number | null;
  /** Lightweight: layers compressed before; default [8]; null: none. */
  compressLayers?: number[] | null;
}

/** Per-call options; unset (or null) means the constructor's. */
export interface LLMScoreOptions extends ScoreOptions {
  prompt?: string | null;
  cutoffLayers?: number | number[] | null;
  compressRatio?: number | null;
  compressLayers?: number[] | null;
}

export interface ResolvedLLMScoreOptions extends ResolvedScoreOptions {
  prompt: string;
  cutoffLayers: number[];
  compress: CompressSettings;
}

const intList = (v: unknown): number[] | undefined =>
  Array.isArray(v) && v.every((x) => Number.isInteger(x)) ? (v as number[]) : undefined;

function parseInfo(meta: JsonObject, modelClass: LLMRerankInfo["modelClass"]): LLMRerankInfo {
  const c = meta.cutoff_layers as JsonObject | null | undefined;
  const r = meta.compress_ratio as JsonObject | null | undefined;
  const l = meta.compress_layers as JsonObject | null | undefined;
  const available = intList(c?.available) ?? [];
  return {
    modelClass,
    prompt:
      typeof meta.prompt === "string"
        ? meta.prompt
        : modelClass === "decoder-only-lightweight"
          ? LIGHTWEIGHT_PROMPT
          : BASE_PROMPT,
    separator: typeof meta.separator === "string" ? meta.separator : "\n",
    bosTokenId:
      meta.prepend_bos !== false && typeof meta.bos_token_id === "number" ? meta.bos_token_id : null,
    queryMaxLength: typeof meta.query_max_length === "number" ? meta.query_max_length : null,
    cutoffLayers:
      modelClass === "decoder-only-base" || !c
        ? null
        : {
            default: intList(c.default) ?? [available[available.length - 1] as number],
            available,
            accepted: intList(c.accepted_by_flagembedding) ?? available,
            startLayer: typeof c.start_layer === "number" ? c.start_layer : (available[0] as number),
            headIsIndex: modelClass === "decoder-only-lightweight",
          },
    compressRatio:
      modelClass === "decoder-only-lightweight" && r
        ? {
            default: typeof r.default === "number" ? r.default : 1,
            available: intList(r.available) ?? [1, 2, 4, 8],
            anyInteger: r.any_integer === true,
          }
        : null,
    compressLayers:
      modelClass === "decoder-only-lightweight" && l
        ? { default: intList(l.default) ?? [8], available: intList(l.available) ?? [] }
        : null,
  };
}

/**
 * The common part of FlagEmbedding's LLM rerankers on the graphs of scripts/export/reranker_llm.py,
 * whose `scores` output is the "Yes" logit ([batch]) or every (layer, head) logit ([batch, L, L]):
 * the pair prompt (decoder-prompts.ts), batching, padding, layer / head selection, sigmoid.
 */
abstract class LLMRerankerCore<TScores> extends AbsReranker<TScores> {
  /** The model directory's flagserve.json. */
  readonly exportMeta: JsonObject;
  readonly llm: LLMRerankInfo;
  readonly prompt: string | null;
  readonly cutoffLayers: number[] | null;
  readonly compressRatio: number;
  readonly compressLayers: number[];
  private readonly padTokenId: number;
  private readonly paddingSide: Side;
  /** Length of the lightweight graph's compress_layers input (num_hidden_layers). */
  private readonly flagCount: number;

  protected constructor(
    nameOrPath: string,
    options: LLMRerankerOptions,
    model: LoadedModel,
    meta: JsonObject,
    modelClass: LLMRerankInfo["modelClass"],
  ) {
    const pick = <T>(v: T | undefined, fallback: T): T => (v === undefined ? fallback : v);
    const str = (v: unknown, d: string) => (typeof v === "string" ? v : d);
    super(
      nameOrPath,
      {
        ...options,
        // FlagEmbedding's defaults ("A: " / "B: "); an explicit null means no instruction.
        queryInstructionForRerank: pick(
          options.queryInstructionForRerank,
          str(meta.query_instruction_for_rerank, "A: "),
        ),
        queryInstructionFormat: options.queryInstructionFormat ?? str(meta.query_instruction_format, "{}{}"),
        passageInstructionForRerank: pick(
          options.passageInstructionForRerank,
          str(meta.passage_instruction_for_rerank, "B: "),
        ),
        passageInstructionFormat:
          options.passageInstructionFormat ?? str(meta.passage_instruction_format, "{}{}"),
        ...(options.maxLength === undefined && typeof meta.max_length === "number"
          ? { maxLength: meta.max_length }
          : {}),
        ...(options.queryMaxLength === undefined && typeof meta.query_max_length === "number"
          ? { queryMaxLength: meta.query_max_length }
          : {}),
      },
      model,
    );
    this.exportMeta = meta;
    const declared = meta.model_class;
    if (declared !== undefined && declared !== modelClass) {
      throw new FlagserveError(
        "model_files",
        `${model.dir.path} holds a ${String(declared)} reranker export; it cannot be loaded as ${modelClass}`,
      );
    }
    this.llm = parseInfo(meta, modelClass);
    this.prompt = options.prompt ?? null;
    this.cutoffLayers =
      options.cutoffLayers === undefined || options.cutoffLayers === null
        ? null
        : toList(options.cutoffLayers);
    this.compressRatio =
      positiveInt("compressRatio", options.compressRatio, this.llm.compressRatio?.default ?? 1) ?? 1;
    this.compressLayers =
      options.compressLayers === undefined
        ? (this.llm.compressLayers?.default ?? [])
        : (options.compressLayers ?? []);
    this.padTokenId = typeof meta.pad_token_id === "number" ? meta.pad_token_id : model.tokenizer.padTokenId;
    this.paddingSide =
      modelClass === "decoder-only-lightweight"
        ? "right"
        : meta.padding_side === "right" || meta.padding_side === "left"
          ? meta.padding_side
          : model.tokenizer.paddingSide;
    const graph = (meta.graphs as Record<string, JsonObject> | undefined)?.[model.onnx.file];
    const flags = (graph?.inputs as JsonObject[] | undefined)?.find((i) => i.name === "compress_layers");
    const shape = Array.isArray(flags?.shape) ? (flags.shape[0] as number) : undefined;
    const layers = model.dir.config.num_hidden_layers;
    this.flagCount = typeof shape === "number" ? shape : typeof layers === "number" ? layers : 0;
  }

  /** What the serving side needs (prompt, separator, layers, compression) with this model's options. */
  serveInfo(): LLMRerankInfo {
    const i = this.llm;
    return {
      ...i,
      prompt: this.prompt ?? i.prompt,
      queryMaxLength: this.options.queryMaxLength,
      cutoffLayers: i.cutoffLayers
        ? { ...i.cutoffLayers, default: this.cutoffLayers ?? i.cutoffLayers.default }
        : null,
      compressRatio: i.compressRatio ? { ...i.compressRatio, default: this.compressRatio } : null,
      compressLayers: i.compressLayers ? { ...i.compressLayers, default: this.compressLayers } : null,
    };
  }

  override resolveScoreOptions(opts: LLMScoreOptions = {}): ResolvedLLMScoreOptions {
    const base = super.resolveScoreOptions(opts);
    const ratio = positiveInt("compressRatio", opts.compressRatio, this.compressRatio) ?? 1;
    const c = this.llm.compressRatio;
    if (c && !c.anyInteger && !c.available.includes(ratio)) {
      throw new FlagserveError(
        "invalid_input",
        `compressRatio ${ratio} is not one this export computes (${c.available.join(", ")})`,
      );
    }
    const requested = opts.cutoffLayers ?? this.cutoffLayers;
    return {
      ...base,
      prompt: opts.prompt ?? this.prompt ?? this.llm.prompt,
      // FlagEmbedding: no (or an empty) list means the last layer.
      cutoffLayers:
        requested === null || (Array.isArray(requested) && requested.length === 0)
          ? (this.llm.cutoffLayers?.default ?? [])
          : toList(requested),
      compress: { ratio, layers: opts.compressLayers ?? this.compressLayers },
    };
  }

  override computeScore(pairs: SentencePair[] | SentencePair, opts: LLMScoreOptions = {}): Promise<TScores> {
    return super.computeScore(pairs, opts);
  }

  /** The pair prompt's pieces for resolved options. */
  pairSettings(opts: ResolvedScoreOptions & { prompt: string }): LLMPairSettings {
    return llmPairSettings(this.model.tokenizer, {
      separator: this.llm.separator,
      prompt: opts.prompt,
      bosTokenId: this.llm.bosTokenId,
      maxLength: opts.maxLength,
      queryMaxLength: opts.queryMaxLength,
    });
  }

  /**
   * The rows FlagEmbedding feeds the model for these pairs (instructions applied), in input
   * order, unpadded, with the query / prompt lengths of each.
   */
  encodePairs(pairs: SentencePair[], opts: LLMScoreOptions = {}): LLMPairRow[] {
    const resolved = this.resolveScoreOptions(opts);
    const settings = this.pairSettings(resolved);
    return this.getDetailedInputs(pairs).map(([q, p]) =>
      llmPairEncoding(this.model.tokenizer, settings, q, p),
    );
  }

  /** Run rows through the graph: the raw `scores` values and L (1 for the base graph). */
  protected async run(
    rows: (TokenIds & { queryLength?: number; promptLength?: number })[],
    device: number,
    compress: CompressSettings,
  ): Promise<{ values: Float32Array; layers: number }> {
    const session = this.model.sessions[device] as OnnxSession;
    if (!session) throw new FlagserveError("invalid_input", `device index ${device} out of range`);
    const empty = rows.findIndex((r) => r.ids.length === 0);
    if (empty >= 0) throw new FlagserveError("invalid_input", `row ${empty} has no tokens`);
    const batch = padBatch(rows, this.padTokenId, this.paddingSide);
    const feeds = batchFeeds(session, batch, {
      query_lengths: () => int64(rows.map((r) => r.queryLength ?? 0)),
      prompt_lengths: () => int64(rows.map((r) => r.promptLength ?? 0)),
      compress_ratio: () => int64([compress.ratio]),
      compress_layers: () => {
        const flags = new Array<number>(this.flagCount).fill(0);
        for (const i of compress.layers) if (i > 0 && i < this.flagCount) flags[i] = 1;
        return int64(flags);
      },
    });
    const out = await session.run(feeds, ["scores"]);
    const t = out.scores;
    if (!t) throw new FlagserveError("model_files", `${session.path} did not return scores`);
    const values = tensorToFloat32(t);
    const layers = t.dims.length === 3 ? (t.dims[1] as number) : 1;
    if (values.length !== rows.length * layers * layers) {
      throw new FlagserveError(
        "model_files",
        `${session.path} returned ${values.length} scores for ${rows.length} rows`,
      );
    }
    return { values, layers };
  }

  /**
   * Raw scores of one batch of server rows, each with the (layer, head) it asks for: the
   * device worker's unit of work. Every row of a batch shares the compression settings.
   */
  async scoreRows(items: LLMScoreItem[], device = 0, compress?: CompressSettings): Promise<Float32Array> {
    const c = compress ?? { ratio: this.compressRatio, layers: this.compressLayers };
    const { values, layers } = await this.run(items, device, c);
    const out = new Float32Array(items.length);
    items.forEach((item, b) => {
      if (item.layer >= layers || item.head >= layers) {
        throw new FlagserveError("invalid_input", `layer / head index out of the graph's ${layers}`);
      }
      out[b] = values[(b * layers + item.layer) * layers + item.head] as number;
    });
    return out;
  }

  /** The (layer, head) pairs a cutoff list selects, or an invalid_input error saying why none. */
  picks(cutoffLayers: number[]): { layer: number; head: number }[] {
    const c = this.llm.cutoffLayers;
    if (!c) return [{ layer: 0, head: 0 }];
    const r = pickCutoffLayers(cutoffLayers, c);
    if ("error" in r) throw new FlagserveError("invalid_input", r.error);
    return r.picks;
  }

  protected async computeScoreSingleDevice(
    pairs: SentencePair[],
    opts: ResolvedScoreOptions,
    device: number,
  ): Promise<TScores> {
    const o = opts as ResolvedLLMScoreOptions;
    const picks = this.picks(o.cutoffLayers);
    const settings = this.pairSettings(o);
    const rows = pairs.map(([q, p]) => llmPairEncoding(this.model.tokenizer, settings, q, p));
    const lists = picks.map(() => new Array<number>(pairs.length));
    const order = lengthSortedOrder(rows.map((r) => r.ids.length));
    for (let start = 0; start < order.length; start += o.batchSize) {
      const idx = order.slice(start, start + o.batchSize);
      const { values, layers } = await this.run(
        idx.map((i) => ({ ...(rows[i] as LLMPairRow), typeIds: [] })),
        device,
        o.compress,
      );
      idx.forEach((orig, b) => {
        picks.forEach((p, k) => {
          (lists[k] as number[])[orig] = values[(b * layers + p.layer) * layers + p.head] as number;
        });
      });
    }
    const done = o.normalize ? lists.map((l) => l.map(sigmoid)) : lists;
    return (done.length === 1 ? done[0] : done) as TScores;
  }

  /** Per-layer lists join layer by layer; flat lists join end to end. */
  protected override joinScores(parts: TScores[]): TScores {
    const first = parts[0] as unknown as unknown[] | undefined;
    if (!first || !Array.isArray(first[0])) return (parts as unknown as number[][]).flat() as TScores;
    const lists = parts as unknown as number[][][];
    return (first as number[][]).map((_, k) => lists.flatMap((p) => p[k] as number[])) as TScores;
  }

  /** One pair scored at load (from the deepest exported layer), so a broken graph fails now. */
  protected async warmUp(): Promise<void> {
    const deepest = this.llm.cutoffLayers?.available.slice(-1);
    await this.computeScore([["", ""]], { batchSize: 1, ...(deepest ? { cutoffLayers: deepest } : {}) });
  }
}

function toList(v: number | number[]): number[] {
  return typeof v === "number" ? [v] : [...v];
}

function int64(values: number[]): ort.Tensor {
  return new ort.Tensor("int64", BigInt64Array.from(values.map((v) => BigInt(v))), [values.length]);
}

async function loadLLM<T extends LLMRerankerCore<unknown>>(
  nameOrPath: string,
  options: LLMRerankerOptions,
  hubRepo: string | undefined,
  make: (model: LoadedModel, meta: JsonObject) => T,
): Promise<T> {
  return loadAs(
    nameOrPath,
    options,
    hubRepo,
    (model) => {
      const meta = readFlagserveJson(model.dir.path);
      if (Object.keys(meta).length === 0) {
        throw new FlagserveError(
          "model_files",
          `${model.dir.path} has no flagserve.json: LLM rerankers need a graph exported by scripts/export/reranker_llm.py`,
        );
      }
      return make(model, meta);
    },
    (m) => (m as unknown as { warmUp(): Promise<void> }).warmUp(),
  );
}

/**
 * FlagEmbedding's FlagLLMReranker (BaseLLMReranker, `decoder-only-base`, bge-reranker-v2-gemma):
 * the logit of "Yes" after the pair prompt.
 */
export class FlagLLMReranker extends LLMRerankerCore<number[]> {
  protected constructor(
    nameOrPath: string,
    options: LLMRerankerOptions,
    model: LoadedModel,
    meta: JsonObject,
  ) {
    super(nameOrPath, options, model, meta, "decoder-only-base");
  }

  static async load(
    nameOrPath: string,
    options: LLMRerankerOptions = {},
    hubRepo?: string,
  ): Promise<FlagLLMReranker> {
    return loadLLM(
      nameOrPath,
      options,
      hubRepo,
      (model, meta) => new FlagLLMReranker(nameOrPath, options, model, meta),
    );
  }
}

/**
 * FlagEmbedding's LayerWiseFlagLLMReranker (`decoder-only-layerwise`,
 * bge-reranker-v2-minicpm-layerwise): scores from the chosen cutoff layers, one list per layer
 * when several are asked.
 */
export class LayerWiseFlagLLMReranker extends LLMRerankerCore<number[] | number[][]> {
  protected constructor(
    nameOrPath: string,
    options: LLMRerankerOptions,
    model: LoadedModel,
    meta: JsonObject,
  ) {
    super(nameOrPath, options, model, meta, "decoder-only-layerwise");
  }

  static async load(
    nameOrPath: string,
    options: LLMRerankerOptions = {},
    hubRepo?: string,
  ): Promise<LayerWiseFlagLLMReranker> {
    return loadLLM(
      nameOrPath,
      options,
      hubRepo,
      (model, meta) => new LayerWiseFlagLLMReranker(nameOrPath, options, model, meta),
    );
  }
}

/**
 * FlagEmbedding's LightWeightFlagLLMReranker (`decoder-only-lightweight`,
 * bge-reranker-v2.5-gemma2-lightweight): cutoff layers, and the passage token compression
 * (compressRatio at compressLayers) of FlagEmbedding's own Gemma2 model code.
 */
export class LightWeightFlagLLMReranker extends LLMRerankerCore<number[] | number[][]> {
  protected constructor(
    nameOrPath: string,
    options: LLMRerankerOptions,
    model: LoadedModel,
    meta: JsonObject,
  ) {
    super(nameOrPath, options, model, meta, "decoder-only-lightweight");
  }

  static async load(
    nameOrPath: string,
    options: LLMRerankerOptions = {},
    hubRepo?: string,
  ): Promise<LightWeightFlagLLMReranker> {
    return loadLLM(
      nameOrPath,
      options,
      hubRepo,
      (model, meta) => new LightWeightFlagLLMReranker(nameOrPath, options, model, meta),
    );
  }
}

/** FlagEmbedding's LLM reranker classes. */
export type LLMReranker = FlagLLMReranker | LayerWiseFlagLLMReranker | LightWeightFlagLLMReranker;
