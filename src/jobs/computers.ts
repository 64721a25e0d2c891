import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Value } from "@sinclair/typebox/value";
import { toApiError } from "../api/error-mapping.js";
import { ApiError } from "../api/errors.js";
import { embeddingsResponse } from "../api/openai-embeddings.js";
import { EmbeddingsRequest } from "../api/schemas.js";
import type { ServingContext } from "../serving/context.js";
import { embed } from "../serving/embed.js";
import { OverloadedError } from "../serving/scheduler.js";
import { batchErrorLine } from "./batch-lines.js";
import type { Computers } from "./chunks.js";

/**
 * Bulk work yields to interactive traffic: a full queue means wait and try again, until the
 * chunk's deadline; then the attempt fails (the queue retries it later, and gives up in the end).
 */
async function whenAdmitted<T>(work: () => Promise<T>, deadline: number): Promise<T> {
  for (let wait = 100; ; wait = Math.min(wait * 2, 5000)) {
    try {
      return await work();
    } catch (err) {
      if (!(err instanceof OverloadedError)) throw err;
      const left = deadline - Date.now();
      if (left <= 0) throw err;
      await sleep(Math.min(wait, left));
    }
  }
}

/**
 * How job chunks are computed with the served models, in the API process or a worker process.
 * A Batch API line is answered exactly as POST /v1/embeddings would answer it, so this module
 * uses that route's schema, error mapping and response format (none of which loads Fastify).
 */
export function jobComputers(ctx: ServingContext): Computers {
  const deadline = () => Date.now() + ctx.config.jobs.chunkTimeoutSeconds * 1000;
  return {
    embed: async (modelName, texts, opts) => {
      const until = deadline();
      // A chunk is one request of its own size, for the model it was created for.
      const limits = { ...ctx.config.limits, maxInputs: Math.max(ctx.config.limits.maxInputs, texts.length) };
      const result = await whenAdmitted(
        () =>
          embed(
            { ...ctx, config: { ...ctx.config, strictModels: true, limits } },
            {
              model: modelName,
              input: texts,
              param: "input",
              inputType: opts.inputType,
              truncate: true,
              idsAre: "model",
              dimensions: opts.dimensions,
              deadline: until,
            },
          ),
        until,
      );
      return { vectors: result.vectors as NonNullable<typeof result.vectors>, tokens: result.tokens };
    },

    batch: async (lines) => {
      const outputs: string[] = [];
      const errors: string[] = [];
      let tokens = 0;
      // The lines of a chunk run concurrently: their inputs share the scheduler's batches.
      const until = deadline();
      const answers = await Promise.all(lines.map((line) => answerLine(ctx, line, until)));
      answers.forEach((a, i) => {
        if (a.ok) {
          outputs.push(a.line);
          tokens += a.tokens;
        } else {
          errors.push(
            a.line ?? batchErrorLine(lines[i] as string, "invalid_request", "unreadable request line"),
          );
        }
      });
      return { outputs, errors, tokens };
    },
  };
}

type Answer = { ok: true; line: string; tokens: number } | { ok: false; line: string };

/** One Batch API request line -> its output line (200) or error-file line (4xx/5xx or malformed). */
async function answerLine(ctx: ServingContext, line: string, deadline: number): Promise<Answer> {
  let request: { custom_id?: unknown; method?: unknown; url?: unknown; body?: unknown };
  try {
    request = JSON.parse(line) as typeof request;
  } catch {
    return { ok: false, line: batchErrorLine(line, "invalid_json", "the request line is not valid JSON") };
  }
  const customId = typeof request.custom_id === "string" ? request.custom_id : null;
  const respond = (status: number, body: unknown) =>
    JSON.stringify({
      id: `batch_req_${randomUUID().replaceAll("-", "")}`,
      custom_id: customId,
      response: { status_code: status, request_id: randomUUID(), body },
      error: null,
    });
  if (request.method !== "POST" || (request.url !== "/v1/embeddings" && request.url !== "/embeddings")) {
    return {
      ok: false,
      line: batchErrorLine(line, "invalid_url", "only POST /v1/embeddings requests are supported in a batch"),
    };
  }
  if (!Value.Check(EmbeddingsRequest, request.body)) {
    const first = [...Value.Errors(EmbeddingsRequest, request.body)][0];
    const param = first?.path.replace(/^\//, "").split("/")[0] || null;
    const err = new ApiError(400, `${first?.path || "body"} ${first?.message ?? "is invalid"}`, { param });
    return {
      ok: false,
      line: respond(400, {
        error: { message: err.message, type: err.type, param: err.param, code: err.code },
      }),
    };
  }
  try {
    const { json, tokens } = await whenAdmitted(
      () => embeddingsResponse(ctx, request.body as EmbeddingsRequest, deadline),
      deadline,
    );
    return { ok: true, line: respond(200, JSON.parse(json)), tokens };
  } catch (err) {
    const e = toApiError(err);
    // Busy or restarting workers (503), or a server still saturated at the chunk's deadline (429):
    // retry the chunk later. Other failures are this line's answer.
    if (e.status === 503 || e.status === 429) throw err;
    return {
      ok: false,
      line: respond(e.status, { error: { message: e.message, type: e.type, param: e.param, code: e.code } }),
    };
  }
}
