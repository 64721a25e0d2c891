import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Value } from "@sinclair/typebox/value";
import type { Computers } from "../jobs/engine.js";
import { batchErrorLine } from "../jobs/engine.js";
import { OverloadedError } from "../serving/scheduler.js";
import { finalizeEmbeddings } from "./encode.js";
import { ApiError } from "./errors.js";
import { type EmbeddingsContext, embeddingsResponse } from "./routes/openai.js";
import { EmbeddingsRequest } from "./schemas.js";
import { toApiError } from "./server.js";

/** A job chunk may wait this long for the device workers (jobs are not interactive). */
const JOB_DEADLINE_MS = 15 * 60_000;

/** Bulk work yields to interactive traffic: a full queue means wait and try again, not fail. */
async function whenAdmitted<T>(work: () => Promise<T>): Promise<T> {
  for (let wait = 100; ; wait = Math.min(wait * 2, 5000)) {
    try {
      return await work();
    } catch (err) {
      if (!(err instanceof OverloadedError)) throw err;
      await sleep(wait);
    }
  }
}

/** How job chunks are computed with the served models, in the API process or a worker process. */
export function jobComputers(ctx: EmbeddingsContext): Computers {
  return {
    embed: async (modelName, texts, opts) => {
      const model = ctx.registry.embedder(modelName, true);
      if (!model) throw new Error(`model ${modelName} is not served by this worker`);
      const deadline = Date.now() + JOB_DEADLINE_MS;
      const encodings = await whenAdmitted(() =>
        model.tokenize({ texts, inputType: opts.inputType, truncate: true, deadline }),
      );
      const pooled = await whenAdmitted(() => model.embed(encodings, deadline));
      const vectors = finalizeEmbeddings(pooled, {
        dimensions: opts.dimensions,
        normalize: model.info.normalize,
        truncateDim: model.info.truncateDim,
      });
      const tokens = encodings.reduce((n, e) => n + e.ids.length, 0);
      ctx.metrics.inputs.inc({ model: model.id }, texts.length);
      ctx.metrics.tokens.inc({ model: model.id }, tokens);
      return { vectors, tokens };
    },

    batch: async (lines) => {
      const outputs: string[] = [];
      const errors: string[] = [];
      let tokens = 0;
      // The lines of a chunk run concurrently: their inputs share the scheduler's batches.
      const answers = await Promise.all(lines.map((line) => answerLine(ctx, line)));
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
async function answerLine(ctx: EmbeddingsContext, line: string): Promise<Answer> {
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
    const { json, tokens } = await whenAdmitted(() =>
      embeddingsResponse(ctx, request.body as EmbeddingsRequest, Date.now() + JOB_DEADLINE_MS),
    );
    return { ok: true, line: respond(200, JSON.parse(json)), tokens };
  } catch (err) {
    const e = toApiError(err);
    if (e.status >= 500) throw err; // busy or broken workers: retry the chunk later
    return {
      ok: false,
      line: respond(e.status, { error: { message: e.message, type: e.type, param: e.param, code: e.code } }),
    };
  }
}
