import type { ServingContext } from "./context.js";
import { requireEmbedder } from "./embed.js";
import { invalid } from "./errors.js";
import { checkVocabIds } from "./inputs.js";
import type { ServedEmbedder } from "./served.js";

/** The text a TEI `prompt_name` prepends; an unknown name is a 400 that lists the known ones. */
export function promptPrefix(model: ServedEmbedder, promptName: string | null | undefined): string {
  if (!promptName) return "";
  const found = model.promptFor(promptName);
  if (found === undefined) {
    const known = ["query", "passage", ...Object.keys(model.prompts)];
    throw invalid(`unknown prompt_name "${promptName}"; known: ${known.join(", ")}`, "prompt_name");
  }
  return found;
}

export interface TokenizeRequest {
  model: string | undefined;
  inputs: string | string[];
  addSpecialTokens: boolean;
  promptName: string | null | undefined;
  /** Aborted at the deadline or when the client goes away (the thread working on it is stopped). */
  signal?: AbortSignal;
}

/**
 * TEI's /tokenize body, `[[{id, text, special, start, stop}, ...], ...]` (character offsets are
 * not tracked), rendered in a tokenizer thread.
 */
export async function tokenize(ctx: ServingContext, req: TokenizeRequest): Promise<Buffer> {
  const model = requireEmbedder(ctx, req.model);
  const texts = typeof req.inputs === "string" ? [req.inputs] : req.inputs;
  if (texts.length === 0) throw invalid("inputs must not be empty", "inputs", "empty");
  if (texts.length > ctx.config.limits.maxInputs) {
    throw invalid(
      `inputs has ${texts.length} items; at most ${ctx.config.limits.maxInputs} are accepted per request`,
      "inputs",
    );
  }
  const prefix = promptPrefix(model, req.promptName);
  const bytes = await model.teiTokenize(
    texts,
    { kind: "tei-tokenize", prefix, addSpecialTokens: req.addSpecialTokens },
    req.signal,
  );
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Texts of token id sequences of the model's vocabulary. */
export function decode(
  ctx: ServingContext,
  req: { model: string | undefined; ids: number[][]; skipSpecialTokens: boolean },
): string[] {
  const model = requireEmbedder(ctx, req.model);
  checkVocabIds(req.ids, model.tokenizer.vocabSize, "ids");
  return req.ids.map((seq) => model.tokenizer.decode(seq, req.skipSpecialTokens));
}
