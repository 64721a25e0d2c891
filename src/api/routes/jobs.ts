import { Readable } from "node:stream";
import { type Static, Type as T } from "@sinclair/typebox";
import type { JobEngine } from "../../jobs/engine.js";
import type { JobSystem } from "../../jobs/system.js";
import type { JobRecord } from "../../jobs/types.js";
import { checkDimensions } from "../../serving/inputs.js";
import type { App, AppContext } from "../context.js";
import { ApiError, badRequest } from "../errors.js";
import { withJobs } from "../jobs-access.js";
import { openaiErrors } from "../schemas.js";

const JobView = T.Object({
  id: T.String(),
  object: T.Literal("job"),
  model: T.String(),
  status: T.String({ description: "preparing, queued, running, completed, failed or cancelled" }),
  inputs: T.Object({ total: T.Integer(), done: T.Integer() }),
  chunks: T.Object({ total: T.Integer(), done: T.Integer() }),
  tokens: T.Integer(),
  input_type: T.String(),
  dimensions: T.Union([T.Integer(), T.Null()]),
  created_at: T.Integer(),
  started_at: T.Union([T.Integer(), T.Null()]),
  finished_at: T.Union([T.Integer(), T.Null()]),
  expires_at: T.Union([T.Integer(), T.Null()]),
  errors: T.Array(T.String()),
});

const seconds = (ms: number | null) => (ms === null ? null : Math.floor(ms / 1000));

export function jobView(j: JobRecord): Static<typeof JobView> {
  return {
    id: j.id,
    object: "job",
    model: j.model,
    status: j.status,
    inputs: { total: j.total, done: j.inputsDone },
    chunks: { total: j.chunks, done: j.chunksDone },
    tokens: j.tokens,
    input_type: j.inputType,
    dimensions: j.dimensions,
    created_at: Math.floor(j.createdAt / 1000),
    started_at: seconds(j.startedAt),
    finished_at: seconds(j.finishedAt),
    expires_at: j.expiresAt,
    errors: j.errors,
  };
}

const CreateJob = T.Object(
  {
    model: T.String(),
    input: T.Optional(T.Array(T.String(), { description: "Inline inputs" })),
    input_file_id: T.Optional(
      T.String({
        description: 'An uploaded JSONL file (POST /v1/files): one string or {"text": ...} per line',
      }),
    ),
    input_type: T.Optional(T.Union([T.Literal("query"), T.Literal("passage"), T.Literal("document")])),
    dimensions: T.Optional(T.Integer()),
  },
  { additionalProperties: true },
);

/** Texts of an uploaded JSONL input file: a JSON string, or an object with a text field, per line. */
async function* fileTexts(engine: JobEngine, owner: string, fileId: string): AsyncGenerator<string> {
  const file = await engine.files.get(owner, fileId);
  let n = 0;
  for await (const line of engine.files.lines(file)) {
    n++;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw badRequest(`line ${n} of ${fileId} is not JSON`, "input_file_id");
    }
    if (typeof value === "string") yield value;
    else if (value && typeof (value as { text?: unknown }).text === "string")
      yield (value as { text: string }).text;
    else
      throw badRequest(
        `line ${n} of ${fileId} is neither a string nor an object with a text field`,
        "input_file_id",
      );
  }
}

const IdParam = T.Object({ id: T.String() });

export async function jobRoutes(app: App, ctx: AppContext): Promise<void> {
  const openai = { dialect: "openai" as const };

  app.post(
    "/v1/jobs",
    {
      schema: {
        summary: "Create a bulk embedding job",
        tags: ["Jobs"],
        body: CreateJob,
        response: { 202: JobView, ...openaiErrors },
      },
      config: openai,
    },
    async (request, reply) => {
      const b = request.body;
      const model = ctx.registry.embedder(b.model, true);
      if (!model)
        throw new ApiError(404, `The model \`${b.model}\` is not an embedding model served here`, {
          code: "model_not_found",
          param: "model",
        });
      checkDimensions(b.dimensions, model.dimension);
      if ((b.input === undefined) === (b.input_file_id === undefined)) {
        throw badRequest(
          "give exactly one of input (inline) and input_file_id",
          b.input ? "input_file_id" : "input",
        );
      }
      const job = await withJobs(ctx, async (engine) => {
        if (b.input_file_id) await engine.files.get(request.owner, b.input_file_id);
        return engine.createEmbedJob(request.owner, {
          model: model.id,
          inputType: b.input_type === "query" ? "query" : "passage",
          dimensions: b.dimensions ?? null,
          texts: b.input ?? fileTexts(engine, request.owner, b.input_file_id as string),
        });
      });
      return reply.code(202).send(jobView(job));
    },
  );

  app.get(
    "/v1/jobs",
    {
      schema: {
        summary: "List the caller's jobs",
        tags: ["Jobs"],
        response: { 200: T.Object({ object: T.Literal("list"), data: T.Array(JobView) }), ...openaiErrors },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => ({
        object: "list" as const,
        data: (await engine.list(request.owner)).filter((j) => j.kind === "embed").map(jobView),
      })),
  );

  app.get(
    "/v1/jobs/:id",
    {
      schema: {
        summary: "A job's status and progress",
        tags: ["Jobs"],
        params: IdParam,
        response: { 200: JobView, ...openaiErrors },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => jobView(await engine.get(request.owner, request.params.id))),
  );

  app.delete(
    "/v1/jobs/:id",
    {
      schema: {
        summary: "Cancel a job",
        tags: ["Jobs"],
        params: IdParam,
        response: { 200: JobView, ...openaiErrors },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => jobView(await engine.cancel(request.owner, request.params.id))),
  );

  app.get(
    "/v1/jobs/:id/results",
    {
      schema: {
        summary: "A completed job's embeddings, streamed: JSONL, or a NumPy .npy matrix",
        tags: ["Jobs"],
        params: IdParam,
        querystring: T.Object({
          format: T.Optional(T.Union([T.Literal("jsonl"), T.Literal("npy")])),
          dtype: T.Optional(T.Union([T.Literal("float32"), T.Literal("float16")])),
        }),
        ...{ response: openaiErrors },
      },
      config: openai,
    },
    async (request, reply) => {
      const job = await withJobs(ctx, (engine) => engine.get(request.owner, request.params.id));
      if (job.status !== "completed") {
        throw new ApiError(409, `job ${job.id} is ${job.status}; results exist once it is completed`, {
          code: "job_not_completed",
        });
      }
      const engine = (ctx.jobs as JobSystem).engine;
      if (request.query.format === "npy") {
        return reply
          .type("application/octet-stream")
          .header("content-disposition", `attachment; filename="${job.id}.npy"`)
          .send(Readable.from(engine.results.npy(job, request.query.dtype ?? "float32")));
      }
      return reply.type("application/x-ndjson").send(Readable.from(engine.results.jsonl(job)));
    },
  );
}
