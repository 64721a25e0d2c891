import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { FlagserveError } from "../runtime/errors.js";
import type { JsonObject } from "../runtime/files.js";
import type { Float32Matrix } from "../runtime/matrix.js";
import { type OnnxSession, OnnxSession as Session, type TokenIds } from "../runtime/session.js";
import type { Encoding } from "../runtime/tokenizer.js";
import type { EncodeOptions, ResolvedEncode } from "./abs-embedder.js";
import { loadAs } from "./base.js";
import { ICL_DEFAULTS, type IclExample, IclPrompter, iclPrefix } from "./decoder-prompts.js";
import { FlagModel, type FlagModelOptions } from "./encoder-only.js";
import { formatInstruction } from "./instruction.js";
import { type LoadedModel, sessionOptions } from "./loader.js";
import { positiveInt } from "./options.js";

/** A model directory's flagserve.json (written by scripts/export), or {} when it has none. */
export function readFlagserveJson(dir: string): JsonObject {
  const path = join(dir, "flagserve.json");
  if (!existsSync(path)) return {};
  try {
    return JSON.parse(readFileSync(path, "utf8")) as JsonObject;
  } catch (err) {
    throw new FlagserveError("model_files", `${path} is not valid JSON: ${(err as Error).message}`);
  }
}

const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
const int = (v: unknown): number | undefined =>
  typeof v === "number" && Number.isInteger(v) ? v : undefined;

/**
 * Fill unset options from flagserve.json (what the export recorded: the mapping's formats, the
 * class defaults, options given at export). Explicit options, null included, win.
 */
function withExportDefaults<T extends FlagModelOptions>(options: T, meta: JsonObject): T {
  const out: T = { ...options };
  const fill = <K extends keyof T>(key: K, value: T[K] | undefined) => {
    if (out[key] === undefined && value !== undefined) out[key] = value;
  };
  fill("queryInstructionFormat", str(meta.query_instruction_format) as T["queryInstructionFormat"]);
  fill("passageInstructionFormat", str(meta.passage_instruction_format) as T["passageInstructionFormat"]);
  fill(
    "queryInstructionForRetrieval",
    str(meta.query_instruction_for_retrieval) as T["queryInstructionForRetrieval"],
  );
  fill(
    "passageInstructionForRetrieval",
    str(meta.passage_instruction_for_retrieval) as T["passageInstructionForRetrieval"],
  );
  fill("queryMaxLength", int(meta.query_max_length) as T["queryMaxLength"]);
  fill("passageMaxLength", int(meta.passage_max_length) as T["passageMaxLength"]);
  if (typeof meta.normalize_embeddings === "boolean")
    fill("normalizeEmbeddings", meta.normalize_embeddings as T["normalizeEmbeddings"]);
  return out;
}

/** Per-call options of the decoder-only embedders. */
export interface LLMEncodeOptions extends EncodeOptions {
  /** FlagEmbedding passes it to the tokenizer's padding; it changes no vector (accepted, not needed). */
  padToMultipleOf?: number;
}

/** The ICL prompt a query-encoding call builds (internal: set by FlagICLModel.encodeQueries). */
const ICL_PROMPT = Symbol("iclPrompt");
type WithIcl = { [ICL_PROMPT]?: { prefix: string; suffix: string } };

/**
 * FlagEmbedding's FlagLLMModel (BaseLLMEmbedder, `decoder-only-base`): e5-mistral, gte-Qwen2,
 * Qwen3-Embedding, bge-multilingual-gemma2, ... The exported graph (scripts/export/decoder.py)
 * returns the last-token pooled, unnormalised vector; special tokens (BOS / EOS) are whatever the
 * model's tokenizer.json adds; batches are padded on the tokenizer's padding side.
 */
export class FlagLLMModel extends FlagModel {
  static override readonly DEFAULT_POOLING_METHOD = "last_token" as const;
  /** flagserve.json of the model directory ({} when there is none). */
  readonly exportMeta: JsonObject;

  protected constructor(nameOrPath: string, options: FlagModelOptions, model: LoadedModel, meta: JsonObject) {
    super(nameOrPath, { ...options, poolingMethod: options.poolingMethod ?? "last_token" }, model);
    this.exportMeta = meta;
    if (this.poolingMethod !== "last_token") {
      throw new FlagserveError("invalid_input", "pooling method must be 'last_token' for LLM-based models");
    }
  }

  /** Load a decoder-only embedder directory (or hub id); the first encode runs here. */
  static override async load(
    nameOrPath: string,
    options: FlagModelOptions = {},
    hubRepo?: string,
  ): Promise<FlagLLMModel> {
    return loadAs(
      nameOrPath,
      options,
      hubRepo,
      (model) => {
        const meta = readFlagserveJson(model.dir.path);
        return new FlagLLMModel(nameOrPath, withExportDefaults(options, meta), model, meta);
      },
      (m) => m.probeDimension(),
    );
  }

  override encodeQueries(queries: string, opts?: LLMEncodeOptions): Promise<Float32Array>;
  override encodeQueries(queries: string[], opts?: LLMEncodeOptions): Promise<Float32Matrix>;
  override encodeQueries(
    queries: string | string[],
    opts: LLMEncodeOptions = {},
  ): Promise<Float32Matrix | Float32Array> {
    return super.encodeQueries(queries as string[], opts) as Promise<Float32Matrix | Float32Array>;
  }

  override encodeCorpus(corpus: string, opts?: LLMEncodeOptions): Promise<Float32Array>;
  override encodeCorpus(corpus: string[], opts?: LLMEncodeOptions): Promise<Float32Matrix>;
  override encodeCorpus(
    corpus: string | string[],
    opts: LLMEncodeOptions = {},
  ): Promise<Float32Matrix | Float32Array> {
    return super.encodeCorpus(corpus as string[], opts) as Promise<Float32Matrix | Float32Array>;
  }

  override encode(sentences: string, opts?: LLMEncodeOptions): Promise<Float32Array>;
  override encode(sentences: string[], opts?: LLMEncodeOptions): Promise<Float32Matrix>;
  override encode(
    sentences: string | string[],
    opts: LLMEncodeOptions = {},
  ): Promise<Float32Matrix | Float32Array> {
    return super.encode(sentences as string[], opts) as Promise<Float32Matrix | Float32Array>;
  }

  /**
   * The exact token ids a method feeds the model for these texts (instruction, and for ICL
   * queries the prompt, applied), in input order, unpadded.
   */
  tokenizeFor(
    method: "encode" | "encodeQueries" | "encodeCorpus",
    texts: string[],
    opts: LLMEncodeOptions = {},
  ): Encoding[] {
    const o = this.options;
    const side =
      method === "encodeQueries"
        ? { max: o.queryMaxLength, ins: o.queryInstructionForRetrieval, fmt: o.queryInstructionFormat }
        : method === "encodeCorpus"
          ? {
              max: o.passageMaxLength,
              ins: o.passageInstructionForRetrieval,
              fmt: o.passageInstructionFormat,
            }
          : { max: o.passageMaxLength, ins: null, fmt: "{}{}" };
    const ins = side.ins;
    const instructed = ins === null ? texts : texts.map((t) => formatInstruction(side.fmt, ins, t));
    const maxLength = this.effectiveMaxLength(positiveInt("maxLength", opts.maxLength, side.max));
    return this.tokenizeSentences(
      instructed,
      maxLength,
      method === "encodeQueries" ? this.queryPrompt() : undefined,
    );
  }

  /** The ICL prompt queries get (none for the base class). */
  protected queryPrompt(): { prefix: string; suffix: string } | undefined {
    return undefined;
  }

  /** Tokenize instructed texts as FlagEmbedding does (ICL queries: through the prompt). */
  protected tokenizeSentences(
    sentences: string[],
    maxLength: number,
    icl: { prefix: string; suffix: string } | undefined,
  ): Encoding[] {
    const tok = this.model.tokenizer;
    if (!icl) return sentences.map((s) => tok.encode(s, maxLength));
    const prompter = new IclPrompter(tok, icl.prefix, icl.suffix, maxLength);
    return sentences.map((s) => prompter.prompt(s).encoding);
  }

  /** The session a call runs on (pseudo-MoE: its domain's graph). */
  protected sessionFor(device: number, _opts: LLMEncodeOptions): Promise<OnnxSession> | OnnxSession {
    return this.model.sessions[device] as OnnxSession;
  }

  protected override async encodeSingleDevice(
    sentences: string[],
    opts: ResolvedEncode & LLMEncodeOptions,
    device: number,
  ): Promise<Float32Matrix> {
    const session = await this.sessionFor(device, opts);
    const encodings = this.tokenizeSentences(sentences, opts.maxLength, (opts as WithIcl)[ICL_PROMPT]);
    return this.encodeEncodings(session, encodings, opts.batchSize);
  }

  /** A warm-up that also works for tokenizers that add no special token. */
  protected override async probeDimension(): Promise<void> {
    const session = this.model.sessions[0] as OnnxSession;
    const pooled = await this.forward(session, [this.model.tokenizer.encode("a", 8)]);
    if (pooled.dims < 1) throw new FlagserveError("model_files", `${session.path} produced empty embeddings`);
    this.nativeDimension = pooled.dims;
  }

  /** Zero-token rows have no last token: FlagEmbedding pools a neighbour's; refuse them instead. */
  protected override async forward(session: OnnxSession, encodings: TokenIds[]): Promise<Float32Matrix> {
    const empty = encodings.findIndex((e) => e.ids.length === 0);
    if (empty >= 0) {
      throw new FlagserveError(
        "invalid_input",
        `input ${empty} has no tokens (this tokenizer adds none to an empty text); a decoder embedder pools the last token`,
      );
    }
    return super.forward(session, encodings);
  }

  /** Attach the ICL prompt to a query call (used by FlagICLModel). */
  protected static withIclPrompt<T extends object>(opts: T, prompt: { prefix: string; suffix: string }): T {
    return { ...opts, [ICL_PROMPT]: prompt };
  }
}

/** Constructor options of FlagICLModel. */
export interface ICLModelOptions extends FlagModelOptions {
  /** Few-shot examples prepended to every query (`{instruct, query, response}`). */
  examplesForTask?: IclExample[] | null;
  /** Python-style template of one example: instruction, query, response. */
  examplesInstructionFormat?: string;
  /** Appended to every query. Default "\n<response>". */
  suffix?: string;
}

/**
 * FlagEmbedding's FlagICLModel (ICLLLMEmbedder, `decoder-only-icl`, bge-en-icl): queries carry
 * in-context examples and a suffix (see IclPrompter); corpus and encode() are FlagLLMModel's.
 */
export class FlagICLModel extends FlagLLMModel {
  readonly examplesForTask: IclExample[] | null;
  readonly examplesInstructionFormat: string;
  readonly suffix: string;
  private prefix = "";

  protected constructor(nameOrPath: string, options: ICLModelOptions, model: LoadedModel, meta: JsonObject) {
    super(
      nameOrPath,
      {
        ...options,
        queryInstructionFormat: options.queryInstructionFormat ?? ICL_DEFAULTS.queryInstructionFormat,
      },
      model,
      meta,
    );
    const metaExamples = Array.isArray(meta.examples_for_task)
      ? (meta.examples_for_task as IclExample[])
      : null;
    this.examplesForTask = options.examplesForTask === undefined ? metaExamples : options.examplesForTask;
    this.examplesInstructionFormat =
      options.examplesInstructionFormat ??
      str(meta.examples_instruction_format) ??
      ICL_DEFAULTS.examplesInstructionFormat;
    this.suffix = options.suffix ?? str(meta.suffix) ?? ICL_DEFAULTS.suffix;
    this.setExamples();
  }

  static override async load(
    nameOrPath: string,
    options: ICLModelOptions = {},
    hubRepo?: string,
  ): Promise<FlagICLModel> {
    return loadAs(
      nameOrPath,
      options,
      hubRepo,
      (model) => {
        const meta = readFlagserveJson(model.dir.path);
        return new FlagICLModel(nameOrPath, withExportDefaults(options, meta), model, meta);
      },
      (m) => m.probeDimension(),
    );
  }

  /** The examples prefix every query now gets. */
  get examplesPrefix(): string {
    return this.prefix;
  }

  /**
   * Use these examples for the following queries; without an argument (or null), the
   * constructor's examplesForTask again (none if it had none).
   */
  setExamples(examples?: IclExample[] | null): void {
    const chosen = examples ?? this.examplesForTask;
    this.prefix = iclPrefix(
      chosen,
      this.examplesInstructionFormat,
      this.options.queryInstructionForRetrieval,
    );
  }

  override encodeQueries(queries: string, opts?: LLMEncodeOptions): Promise<Float32Array>;
  override encodeQueries(queries: string[], opts?: LLMEncodeOptions): Promise<Float32Matrix>;
  override encodeQueries(
    queries: string | string[],
    opts: LLMEncodeOptions = {},
  ): Promise<Float32Matrix | Float32Array> {
    return super.encodeQueries(queries as string[], FlagLLMModel.withIclPrompt(opts, this.queryPrompt()));
  }

  protected override queryPrompt(): { prefix: string; suffix: string } {
    return { prefix: this.prefix, suffix: this.suffix };
  }
}

/** Constructor options of FlagPseudoMoEModel. */
export interface PseudoMoEOptions extends FlagModelOptions {
  /** Domain of every call that names none (general, coding, reasoning, ...). */
  domainForPseudoMoe?: string | null;
}

/** Per-call options of FlagPseudoMoEModel. */
export interface PseudoMoEEncodeOptions extends LLMEncodeOptions {
  domainForPseudoMoe?: string | null;
  domain?: string | null;
}

/**
 * FlagEmbedding's FlagPseudoMoEModel (PseudoMoELLMEmbedder, `decoder-only-pseudo_moe`): a
 * decoder embedder whose checkpoint routes by domain. The routing is fixed when a graph is
 * exported, so the export writes one graph per domain (flagserve.json `domains`); the domain of a
 * call is its `domainForPseudoMoe`, else `domain`, else the constructor's, else the one last used
 * (state, as the model object keeps it). Outputs go through nan_to_num before normalisation.
 */
export class FlagPseudoMoEModel extends FlagLLMModel {
  readonly domainForPseudoMoe: string | null;
  /** Domain -> graph folder (relative to the model directory). */
  readonly domains: Readonly<Record<string, string>>;
  private domain: string;
  private readonly defaultDomain: string;
  private readonly domainSessions = new Map<string, Promise<OnnxSession[]>>();
  private readonly runtime: PseudoMoEOptions;

  protected constructor(nameOrPath: string, options: PseudoMoEOptions, model: LoadedModel, meta: JsonObject) {
    super(nameOrPath, options, model, meta);
    this.runtime = options;
    this.domainForPseudoMoe = options.domainForPseudoMoe ?? null;
    const domains =
      meta.domains && typeof meta.domains === "object" ? (meta.domains as Record<string, string>) : {};
    this.defaultDomain = str(meta.default_domain) ?? Object.keys(domains)[0] ?? "general";
    this.domains = Object.keys(domains).length > 0 ? domains : { [this.defaultDomain]: "onnx/" };
    this.domain = this.defaultDomain;
  }

  static override async load(
    nameOrPath: string,
    options: PseudoMoEOptions = {},
    hubRepo?: string,
  ): Promise<FlagPseudoMoEModel> {
    return loadAs(
      nameOrPath,
      options,
      hubRepo,
      (model) => {
        const meta = readFlagserveJson(model.dir.path);
        const o = withExportDefaults(options, meta);
        const m = new FlagPseudoMoEModel(nameOrPath, o, model, meta);
        if (options.domainForPseudoMoe) m.checkDomain(options.domainForPseudoMoe);
        return m;
      },
      (m) => m.probeDimension(),
    );
  }

  /** The domain the model is set to now (the last one used). */
  get currentDomain(): string {
    return this.domain;
  }

  override encodeQueries(queries: string, opts?: PseudoMoEEncodeOptions): Promise<Float32Array>;
  override encodeQueries(queries: string[], opts?: PseudoMoEEncodeOptions): Promise<Float32Matrix>;
  override async encodeQueries(
    queries: string | string[],
    opts: PseudoMoEEncodeOptions = {},
  ): Promise<Float32Matrix | Float32Array> {
    return super.encodeQueries(queries as string[], this.routed(opts));
  }

  override encodeCorpus(corpus: string, opts?: PseudoMoEEncodeOptions): Promise<Float32Array>;
  override encodeCorpus(corpus: string[], opts?: PseudoMoEEncodeOptions): Promise<Float32Matrix>;
  override async encodeCorpus(
    corpus: string | string[],
    opts: PseudoMoEEncodeOptions = {},
  ): Promise<Float32Matrix | Float32Array> {
    return super.encodeCorpus(corpus as string[], this.routed(opts));
  }

  override encode(sentences: string, opts?: PseudoMoEEncodeOptions): Promise<Float32Array>;
  override encode(sentences: string[], opts?: PseudoMoEEncodeOptions): Promise<Float32Matrix>;
  override async encode(
    sentences: string | string[],
    opts: PseudoMoEEncodeOptions = {},
  ): Promise<Float32Matrix | Float32Array> {
    return super.encode(sentences as string[], this.routed(opts));
  }

  private checkDomain(domain: string): string {
    if (!Object.hasOwn(this.domains, domain)) {
      const known = Object.keys(this.domains);
      throw new FlagserveError(
        known.length > 1 ? "invalid_input" : "not_supported",
        known.length > 1
          ? `unknown domain "${domain}"; this export has graphs for ${known.join(", ")}`
          : `this export routes to domain "${known[0]}" only (routing is fixed at export); ` +
              `export one graph per domain with scripts/export/decoder.py --domains`,
      );
    }
    return domain;
  }

  /** Resolve the call's domain (as _resolve_domain does) and make it the model's current one. */
  private routed(opts: PseudoMoEEncodeOptions): PseudoMoEEncodeOptions {
    const domain = opts.domainForPseudoMoe ?? opts.domain ?? this.domainForPseudoMoe;
    if (domain !== null && domain !== undefined) this.domain = this.checkDomain(domain);
    return { ...opts, domain: this.domain };
  }

  protected override sessionFor(
    device: number,
    opts: PseudoMoEEncodeOptions,
  ): Promise<OnnxSession> | OnnxSession {
    const domain = opts.domain ?? this.domain;
    const folder = this.domains[domain] ?? "onnx/";
    const file = this.model.onnx.file;
    const base = file.slice(file.lastIndexOf("/") + 1);
    if (domain === this.defaultDomain || `${folder}${base}` === file) return super.sessionFor(device, opts);
    let sessions = this.domainSessions.get(domain);
    if (!sessions) {
      sessions = Promise.all(
        this.model.devices.map((d) =>
          Session.create(this.model.dir.resolve(`${folder}${base}`), sessionOptions(this.runtime, d)),
        ),
      );
      this.domainSessions.set(domain, sessions);
      // A failed load is not cached: the next call tries again.
      sessions.catch(() => this.domainSessions.delete(domain));
    }
    return sessions.then((s) => s[device] as OnnxSession);
  }

  /** Truncate, replace NaN / infinities (nan_to_num), then normalise, as PseudoMoELLMEmbedder does. */
  protected override postprocess(pooled: Float32Matrix): Float32Matrix {
    const t = this.options.truncateDim;
    const cut = t === null ? pooled : pooled.truncateColumns(t);
    const d = cut.data;
    for (let i = 0; i < d.length; i++) {
      const x = d[i] as number;
      if (Number.isNaN(x)) d[i] = 0;
      else if (x === Number.POSITIVE_INFINITY) d[i] = 1e4;
      else if (x === Number.NEGATIVE_INFINITY) d[i] = -1e4;
    }
    return this.options.normalizeEmbeddings ? cut.normalizeRows() : cut;
  }

  override async close(): Promise<void> {
    const extra = await Promise.all([...this.domainSessions.values()].map((p) => p.catch(() => [])));
    await Promise.all(extra.flat().map((s) => s.release()));
    this.domainSessions.clear();
    await super.close();
  }
}

/** FlagEmbedding's decoder-only embedder classes. */
export type DecoderEmbedder = FlagLLMModel | FlagICLModel | FlagPseudoMoEModel;
