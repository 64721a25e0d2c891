import { type Static, Type as T } from "@sinclair/typebox";

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

/** TEI's error body. */
export const TeiError = T.Object(
  { error: T.String(), error_type: T.String() },
  { $id: "TeiError", description: "Error in text-embeddings-inference's format" },
);

export const openaiErrors = {
  400: T.Ref("OpenAIError"),
  401: T.Ref("OpenAIError"),
  404: T.Ref("OpenAIError"),
  413: T.Ref("OpenAIError"),
  429: T.Ref("OpenAIError"),
  503: T.Ref("OpenAIError"),
};

export const teiErrors = {
  401: T.Ref("TeiError"),
  413: T.Ref("TeiError"),
  422: T.Ref("TeiError"),
  429: T.Ref("TeiError"),
  503: T.Ref("TeiError"),
};

export const InputType = T.Union([T.Literal("query"), T.Literal("passage"), T.Literal("document")], {
  description:
    'Extension (Cohere/Voyage convention): "query" applies the model\'s query instruction, "passage"/"document" its passage instruction',
});

export const EmbeddingsRequest = T.Object(
  {
    input: T.Union([T.String(), T.Array(T.String()), T.Array(T.Integer()), T.Array(T.Array(T.Integer()))], {
      description:
        "Text, texts, or token ids (tiktoken cl100k_base by default, as OpenAI clients send them; one array per input)",
    }),
    model: T.String({
      description: "Served model name; with one embedding model served, any name is served by it",
    }),
    encoding_format: T.Optional(
      T.Union([T.Literal("float"), T.Literal("base64")], {
        description: "base64: little-endian float32 bytes, what the official clients request by default",
      }),
    ),
    dimensions: T.Optional(
      T.Integer({ description: "Keep the first N dimensions, then re-normalise (Matryoshka)" }),
    ),
    user: T.Optional(T.String()),
    input_type: T.Optional(InputType),
    truncate: T.Optional(
      T.Boolean({ description: "Extension: cut over-long inputs (default) or refuse them with a 400" }),
    ),
    return: T.Optional(
      T.Array(T.Union([T.Literal("dense"), T.Literal("sparse"), T.Literal("colbert")]), {
        description:
          "Extension (BGE-M3): also return sparse_embedding {indices, values} and/or colbert_embedding (one vector per token)",
      }),
    ),
    return_tokens: T.Optional(
      T.Boolean({ description: "Extension (BGE-M3): add the token text of each sparse index" }),
    ),
  },
  { additionalProperties: true },
);
export type EmbeddingsRequest = Static<typeof EmbeddingsRequest>;

export const EmbeddingsResponse = T.Object({
  object: T.Literal("list"),
  data: T.Array(
    T.Object({
      object: T.Literal("embedding"),
      index: T.Integer(),
      embedding: T.Union([T.Array(T.Number()), T.String()], { description: "floats, or base64 float32 LE" }),
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
  kind: T.String({ description: "embedding, or rerank" }),
  dimensions: T.Optional(T.Integer()),
  max_input_tokens: T.Integer(),
  source: T.String({ description: "Hugging Face id or directory the model was loaded from" }),
});

export const ModelList = T.Object({ object: T.Literal("list"), data: T.Array(ModelObject) });

// ---------------------------------------------------------------- TEI

export const TeiInputs = T.Union(
  [T.String(), T.Array(T.String()), T.Array(T.Integer()), T.Array(T.Array(T.Integer()))],
  {
    description: "Text, texts, or token ids of the model's own vocabulary",
  },
);

export const TruncationDirection = T.Union([
  T.Literal("Right"),
  T.Literal("Left"),
  T.Literal("right"),
  T.Literal("left"),
]);

export const TeiEmbedRequest = T.Object(
  {
    inputs: TeiInputs,
    normalize: T.Optional(T.Boolean({ default: true })),
    truncate: T.Optional(T.Boolean({ description: "Cut over-long inputs (default true here)" })),
    truncation_direction: T.Optional(TruncationDirection),
    prompt_name: T.Optional(
      T.Union([T.String(), T.Null()], {
        description: 'A prompt of the model\'s sentence-transformers config, or "query" / "passage"',
      }),
    ),
    dimensions: T.Optional(T.Union([T.Integer(), T.Null()])),
  },
  { additionalProperties: true },
);
export type TeiEmbedRequest = Static<typeof TeiEmbedRequest>;

export const TeiTokenizeRequest = T.Object(
  {
    inputs: T.Union([T.String(), T.Array(T.String())]),
    add_special_tokens: T.Optional(T.Boolean({ default: true })),
    prompt_name: T.Optional(T.Union([T.String(), T.Null()])),
  },
  { additionalProperties: true },
);
export type TeiTokenizeRequest = Static<typeof TeiTokenizeRequest>;

export const TeiDecodeRequest = T.Object(
  {
    ids: T.Union([T.Array(T.Integer()), T.Array(T.Array(T.Integer()))]),
    skip_special_tokens: T.Optional(T.Boolean({ default: true })),
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
