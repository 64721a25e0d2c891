// The OpenAI embeddings call without Fastify: the /v1/embeddings route and the Batch API's job
// workers (which answer request lines, and must not load the HTTP stack) share it.
import { float32Base64, float32Json } from "../runtime/float-format.js";
import type { ServingContext } from "../serving/context.js";
import { type Embedded, embed } from "../serving/embed.js";
import { invalid } from "../serving/errors.js";
import { type EmbeddingType, quantizeRow, rowBytes } from "../serving/quantize.js";
import type { EmbeddingsRequest } from "./schemas.js";

export interface OpenAIFormat {
  encodingFormat: "float" | "base64" | undefined;
  /** The dense vectors' type (extension): float, or Cohere's quantized types. */
  embeddingType?: EmbeddingType;
  /** BGE-M3 extras beside the dense vector. */
  sparse: boolean;
  colbert: boolean;
  /** Add the token text of each sparse index. */
  returnTokens: boolean;
}

/**
 * The OpenAI embeddings response body as JSON text. Built by hand: tens of thousands of floats
 * serialise faster as one string. The HTTP route and the Batch API (one call per request line)
 * both answer with it.
 */
export function embeddingsJson(result: Embedded, f: OpenAIFormat): string {
  const { model, raws, encodings, tokens } = result;
  const vectors = result.vectors;
  if (!vectors) throw new Error("embeddingsJson needs dense vectors");
  const base64 = f.encodingFormat === "base64";
  const vector = (v: Float32Array) => (base64 ? `"${float32Base64(v)}"` : float32Json(v));
  const type = f.embeddingType ?? "float";
  // Quantized vectors: integers in JSON, or their bytes in base64.
  const dense = (v: Float32Array) => {
    if (type === "float") return vector(v);
    const q = quantizeRow(v, type);
    return base64 ? `"${rowBytes(q).toString("base64")}"` : `[${q.join(",")}]`;
  };
  const parts: string[] = [];
  for (let i = 0; i < vectors.rows; i++) {
    let item = `{"object":"embedding","index":${i},"embedding":${dense(vectors.row(i))}`;
    const raw = raws[i];
    const encoding = encodings[i];
    if (f.sparse && raw && encoding) {
      const sparse = model.sparseVector(raw, encoding);
      const names = f.returnTokens
        ? sparse.indices.map((id) => model.tokenizer.decode([id], false))
        : undefined;
      item += `,"sparse_embedding":${JSON.stringify(names ? { ...sparse, tokens: names } : sparse)}`;
    }
    if (f.colbert && raw)
      item += `,"colbert_embedding":[${[...model.colbertVectors(raw)].map(vector).join(",")}]`;
    parts.push(`${item}}`);
  }
  return `{"object":"list","data":[${parts.join(",")}],"model":${JSON.stringify(model.id)},"usage":{"prompt_tokens":${tokens},"total_tokens":${tokens}}}`;
}

/**
 * The OpenAI embeddings response for a validated request body, as JSON text: the HTTP route and
 * the Batch API (one call per request line) both answer this way.
 */
export async function embeddingsResponse(
  ctx: ServingContext,
  body: EmbeddingsRequest,
  deadline: number,
  signal?: AbortSignal,
): Promise<{ json: string; tokens: number }> {
  const extras = body.return ?? [];
  const sparse = extras.includes("sparse");
  const colbert = extras.includes("colbert");
  if (body.return_tokens && !sparse) throw invalid('return_tokens needs return: ["sparse"]', "return_tokens");
  const result = await embed(ctx, {
    model: body.model,
    input: body.input,
    param: "input",
    inputType: body.input_type,
    ...(body.instruction !== undefined ? { instruction: body.instruction } : {}),
    ...(body.examples !== undefined ? { examples: body.examples } : {}),
    truncate: body.truncate ?? true,
    idsAre: ctx.config.tokenIds,
    dimensions: body.dimensions ?? null,
    want: { sparse, colbert },
    deadline,
    ...(signal ? { signal } : {}),
  });
  const json = embeddingsJson(result, {
    encodingFormat: body.encoding_format,
    ...(body.embedding_type ? { embeddingType: body.embedding_type } : {}),
    sparse,
    colbert,
    returnTokens: body.return_tokens ?? false,
  });
  return { json, tokens: result.tokens };
}
