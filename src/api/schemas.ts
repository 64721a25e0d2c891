import { Kind, type Static, Type as T, type TRef, type TSchema, TypeRegistry } from "@sinclair/typebox";
import { DefaultErrorFunction, SetErrorFunction } from "@sinclair/typebox/errors";
import type { ErrorDialect } from "./errors.js";

// ---------------------------------------------------------------- building blocks

// TypeBox's own check (the Batch API validates request lines with it) must know the enum kind,
// and say what it expects, as the HTTP routes do.
TypeRegistry.Set<{ enum: string[] }>(
  "StringEnum",
  (schema, value) => typeof value === "string" && schema.enum.includes(value),
);
SetErrorFunction((error) =>
  error.schema[Kind] === "StringEnum"
    ? `must be one of ${(error.schema.enum as string[]).map((v) => JSON.stringify(v)).join(", ")}`
    : DefaultErrorFunction(error),
);

/**
 * A string enum as JSON Schema writes it (`{"type": "string", "enum": [...]}`), so the OpenAPI
 * document and its clients see one enum rather than a union of single-value schemas.
 */
export function StringEnum<V extends string[]>(
  values: [...V],
  options: { description?: string; default?: V[number] } = {},
) {
  return T.Unsafe<V[number]>({ ...options, [Kind]: "StringEnum", type: "string", enum: values });
}

/** OpenAI's error body, used by every OpenAI-, Cohere- and Jina-style route. */
export const OpenAIError = T.Object(
  {
    error: T.Object({
      message: T.String(),
      type: T.String(),
      param: T.Union([T.String(), T.Null()]),
      code: T.Union([T.String(), T.Null()]),
    }),
  },
  { $id: "OpenAIError", description: "Error in OpenAI's format" },
);

/** TEI's error body; error_type is what ApiError.teiType can produce. */
export const TeiError = T.Object(
  {
    error: T.String(),
    error_type: StringEnum(["validation", "empty", "overloaded", "unhealthy", "backend"]),
  },
  { $id: "TeiError", description: "Error in text-embeddings-inference's format" },
);

/** Cohere's error body (its embed API). */
export const CohereError = T.Object(
  { id: T.String(), message: T.String() },
  { $id: "CohereError", description: "Error in Cohere's format" },
);

/** What an error status means, per dialect (TEI moves most 400s to 422, see errors.ts teiStatus). */
const MEANING: Record<ErrorDialect, Record<number, string>> = {
  openai: {
    400: "Invalid request: a field is missing or has a wrong type or value, or the body is not JSON",
    401: "Missing or wrong API key (when the server has --api-key)",
    404: "The named model, job, batch or file does not exist (for this API key)",
    409: "The job has not completed: its results do not exist yet",
    413: "The request body, an uploaded file, or the request's tokens exceed the server's limits",
    414: "A path parameter is longer than any id (100 characters)",
    415: "The request body's Content-Type is not one the operation accepts",
    429: "A model's queue is full, or too many request bytes are in flight; retry after Retry-After seconds",
    500: "Internal error (or a model produced non-finite outputs); see the server log",
    503: "Models loading, no device worker alive, the request's deadline passed, the job queue unreachable, or the server shutting down",
  },
  cohere: {
    400: "Invalid request: a field is missing or has a wrong type or value, or the body is not JSON",
    401: "Missing or wrong API key (when the server has --api-key)",
    404: "The named model is not served",
    413: "The request body or the request's tokens exceed the server's limits",
    415: "The request body's Content-Type is not application/json",
    429: "A model's queue is full, or too many request bytes are in flight; retry after Retry-After seconds",
    500: "Internal error (or a model produced non-finite outputs); see the server log",
    503: "Models loading, no device worker alive, the request's deadline passed, or the server shutting down",
  },
  tei: {
    400: "Empty input (error_type empty)",
    401: "Missing or wrong API key (when the server has --api-key)",
    404: "The model named by the `model` extension is not served",
    413: "The request body exceeds the server's limit, or an input is too long with truncate: false",
    415: "The request body's Content-Type is not application/json",
    422: "Invalid request: a field is missing or has a wrong type or value, or the body is not JSON",
    429: "A model's queue is full, or too many request bytes are in flight; retry after Retry-After seconds",
    500: "Internal error (or a model produced non-finite outputs); see the server log",
    503: "Models loading, no device worker alive, the request's deadline passed, or the server shutting down",
  },
};

/** Statuses answered with a Retry-After header (not every 503 has one). */
const RETRY_AFTER = new Set([429, 503]);

/** Response declarations for error statuses, in a dialect's error body. */
export function errorResponses<S extends number>(dialect: ErrorDialect, statuses: S[]): Record<S, TRef> {
  const body = dialect === "tei" ? "TeiError" : dialect === "cohere" ? "CohereError" : "OpenAIError";
  return Object.fromEntries(
    statuses.map((status) => {
      const description = MEANING[dialect][status] ?? `Error ${status}`;
      const headers = RETRY_AFTER.has(status)
        ? { headers: { "Retry-After": T.Integer({ description: "Seconds to wait before retrying" }) } }
        : {};
      return [status, T.Ref(body, { description, ...headers })];
    }),
  ) as Record<S, TRef>;
}

/** Per-request limits the request schemas state (from the server's configuration). */
export interface SchemaLimits {
  /** Inputs (texts, token arrays, documents) per request; absent: no maxItems. */
  maxInputs?: number;
  /** Largest token id the OpenAI route accepts (cl100k_base mode); absent: no maximum. */
  maxTokenId?: number;
}

/** cl100k_base's largest id (<|endofprompt|>); the unused ids below it are refused by the service. */
export const CL100K_MAX_TOKEN_ID = 100276;

const arrayLimits = (limits: SchemaLimits) => ({
  minItems: 1,
  ...(limits.maxInputs !== undefined ? { maxItems: limits.maxInputs } : {}),
});

/** string | string[] | number[] | number[][]: texts, or token ids (one array per input). */
function inputsSchema(limits: SchemaLimits, description: string) {
  const n = arrayLimits(limits);
  const id = T.Integer({
    minimum: 0,
    ...(limits.maxTokenId !== undefined ? { maximum: limits.maxTokenId } : {}),
  });
  // A flat array of ids is one input: its length is bounded by the model's window, not maxInputs.
  return T.Union(
    [T.String(), T.Array(T.String(), n), T.Array(id, { minItems: 1 }), T.Array(T.Array(id), n)],
    {
      description,
    },
  );
}

export const InputType = StringEnum(
  ["query", "passage", "document", "search_query", "search_document", "classification", "clustering"],
  {
    description:
      'Extension (Cohere/Voyage convention): "query" / "search_query" apply the model\'s query instruction, "passage" / "document" / "search_document" its passage side, "classification" / "clustering" its task instruction where it has one (instruction-tuned models; else the passage side)',
  },
);

/** In-context examples of an ICL embedder (bge-en-icl): FlagICLModel's `examples_for_task`. */
export const IclExamples = T.Array(
  T.Object(
    {
      instruct: T.Optional(T.String({ description: "Task description (default: the query instruction)" })),
      query: T.Optional(T.String()),
      response: T.Optional(T.String()),
    },
    { additionalProperties: false },
  ),
  {
    maxItems: 64,
    description:
      "Extension (ICL models, e.g. bge-en-icl): in-context examples put before every query instead of the model's default ones ([] for none); implies input_type query. Other models: a 400",
  },
);

/** Matryoshka dimensions: at least 1; the most is the model's own size (a 400 names it). */
const Dimensions = T.Integer({
  minimum: 1,
  description: "Keep the first N dimensions, then re-normalise (Matryoshka); at most the model's size",
});

// ---------------------------------------------------------------- OpenAI

export function embeddingsRequest(limits: SchemaLimits = {}) {
  return T.Object(
    {
      input: inputsSchema(
        limits,
        "Text, texts, or token ids (tiktoken cl100k_base by default, as OpenAI clients send them; one array per input)",
      ),
      model: T.String({
        description: "Served model name; with one embedding model served, any name is served by it",
      }),
      encoding_format: T.Optional(
        StringEnum(["float", "base64"], {
          description: "base64: little-endian float32 bytes, what the official clients request by default",
        }),
      ),
      dimensions: T.Optional(Dimensions),
      user: T.Optional(T.String()),
      input_type: T.Optional(InputType),
      embedding_type: T.Optional(
        StringEnum(["float", "int8", "uint8", "binary", "ubinary"], {
          description:
            "Extension (Cohere's embedding types): int8 / uint8 integers (each vector scaled by 127 / its largest absolute value; uint8 = int8 + 128), or ubinary / binary packed bits (1 where > 0, big-endian within each byte; binary = byte - 128). With encoding_format base64: the bytes",
        }),
      ),
      truncate: T.Optional(
        T.Boolean({ description: "Extension: cut over-long inputs (default) or refuse them with a 400" }),
      ),
      return: T.Optional(
        T.Array(StringEnum(["dense", "sparse", "colbert"]), {
          description:
            "Extension (BGE-M3): also return sparse_embedding {indices, values} and/or colbert_embedding (one vector per token)",
        }),
      ),
      return_tokens: T.Optional(
        T.Boolean({
          description:
            'Extension (BGE-M3): add the token text of each sparse index; needs return: ["sparse"]',
        }),
      ),
      instruction: T.Optional(
        T.String({
          description:
            "Extension: the task description queries get (through the model's query instruction format), instead of the model's default; implies input_type query",
        }),
      ),
      examples: T.Optional(IclExamples),
    },
    { additionalProperties: true },
  );
}

/** The OpenAI embeddings body without server limits (the Batch API checks request lines with it). */
export const EmbeddingsRequest = embeddingsRequest();
export type EmbeddingsRequest = Static<typeof EmbeddingsRequest>;

export const EmbeddingsResponse = T.Object({
  object: T.Literal("list"),
  data: T.Array(
    T.Object({
      object: T.Literal("embedding"),
      index: T.Integer(),
      embedding: T.Union([T.Array(T.Number()), T.String()], {
        description:
          "floats (or integers for a quantized embedding_type), or base64 of float32 LE (or of the quantized bytes)",
      }),
      sparse_embedding: T.Optional(
        T.Object({
          indices: T.Array(T.Integer()),
          values: T.Array(T.Number()),
          tokens: T.Optional(T.Array(T.String())),
        }),
      ),
      colbert_embedding: T.Optional(
        T.Union([T.Array(T.Array(T.Number())), T.Array(T.String())], {
          description: "One vector per token after the first: floats, or base64 float32 LE per vector",
        }),
      ),
    }),
  ),
  model: T.String(),
  usage: T.Object({ prompt_tokens: T.Integer(), total_tokens: T.Integer() }),
});

export const ModelObject = T.Object({
  id: T.String(),
  object: T.Literal("model"),
  created: T.Integer(),
  owned_by: T.String(),
  kind: StringEnum(["embedding", "rerank"]),
  dimensions: T.Optional(T.Integer()),
  max_input_tokens: T.Integer(),
  source: T.String({ description: "Hugging Face id or directory the model was loaded from" }),
  input_type: T.Optional(
    StringEnum(["query"], {
      description: 'The "MODEL:query" name of an embedding model: it embeds every input as a query',
    }),
  ),
  model_class: T.Optional(
    T.String({
      description: "FlagEmbedding's class: encoder-only-base, encoder-only-m3, decoder-only-icl, ...",
    }),
  ),
  pooling: T.Optional(T.String({ description: "Embedding models: cls, mean or last_token" })),
  query_instruction_format: T.Optional(
    T.String({ description: "Embedding models: how a query and its instruction are put together" }),
  ),
  query_instruction: T.Optional(
    T.Union([T.String(), T.Null()], {
      description: "Embedding models: the default task description of queries",
    }),
  ),
  icl_examples: T.Optional(
    T.Integer({ description: "ICL embedders: how many in-context examples queries get by default" }),
  ),
  cutoff_layers: T.Optional(
    T.Object(
      { default: T.Array(T.Integer()), available: T.Array(T.Integer()) },
      {
        description:
          "Layerwise / lightweight LLM rerankers: the layers a score can come from (cutoff_layers)",
      },
    ),
  ),
  compress_ratio: T.Optional(
    T.Object(
      { default: T.Integer(), available: T.Array(T.Integer()), any_integer: T.Boolean() },
      { description: "Lightweight LLM rerankers: the token compression ratios (compress_ratio)" },
    ),
  ),
  compress_layers: T.Optional(
    T.Object(
      { default: T.Array(T.Integer()), available: T.Array(T.Integer()) },
      { description: "Lightweight LLM rerankers: the layers compression can come before (compress_layers)" },
    ),
  ),
});

export const ModelList = T.Object({ object: T.Literal("list"), data: T.Array(ModelObject) });

// ---------------------------------------------------------------- TEI

const TeiModel = T.String({
  description: "Extension: the served embedding model that answers (default: the first one)",
});

export const TruncationDirection = StringEnum(["Right", "Left", "right", "left"]);

export function teiEmbedRequest(limits: SchemaLimits = {}) {
  return T.Object(
    {
      inputs: inputsSchema(limits, "Text, texts, or token ids of the model's own vocabulary"),
      normalize: T.Optional(T.Boolean({ default: true })),
      truncate: T.Optional(T.Boolean({ description: "Cut over-long inputs (default true here)" })),
      truncation_direction: T.Optional(TruncationDirection),
      prompt_name: T.Optional(
        T.Union([T.String(), T.Null()], {
          description:
            'A prompt of the model\'s sentence-transformers config, or "query" / "passage"; others are a 422',
        }),
      ),
      dimensions: T.Optional(T.Union([Dimensions, T.Null()])),
      model: T.Optional(TeiModel),
    },
    { additionalProperties: true },
  );
}
export type TeiEmbedRequest = Static<ReturnType<typeof teiEmbedRequest>>;

export function teiTokenizeRequest(limits: SchemaLimits = {}) {
  return T.Object(
    {
      inputs: T.Union([T.String(), T.Array(T.String(), arrayLimits(limits))]),
      add_special_tokens: T.Optional(T.Boolean({ default: true })),
      prompt_name: T.Optional(T.Union([T.String(), T.Null()])),
      model: T.Optional(TeiModel),
    },
    { additionalProperties: true },
  );
}
export type TeiTokenizeRequest = Static<ReturnType<typeof teiTokenizeRequest>>;

const TokenId = T.Integer({ minimum: 0, description: "An id of the model's vocabulary (a 422 outside it)" });

export const TeiDecodeRequest = T.Object(
  {
    ids: T.Union([T.Array(TokenId), T.Array(T.Array(TokenId))]),
    skip_special_tokens: T.Optional(T.Boolean({ default: true })),
    model: T.Optional(TeiModel),
  },
  { additionalProperties: true },
);
export type TeiDecodeRequest = Static<typeof TeiDecodeRequest>;

export const TeiToken = T.Object({
  id: T.Integer(),
  text: T.String(),
  special: T.Boolean(),
  start: T.Union([T.Integer(), T.Null()], { description: "Character offsets are not tracked: always null" }),
  stop: T.Union([T.Integer(), T.Null()]),
});

// ---------------------------------------------------------------- bodies that are not JSON

/** A response body in a media type of its own (streams, text), as the OpenAPI document lists it. */
export function mediaResponse(description: string, media: Record<string, TSchema>) {
  return {
    description,
    content: Object.fromEntries(Object.entries(media).map(([type, schema]) => [type, { schema }])),
  };
}
