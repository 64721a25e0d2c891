import { Readable } from "node:stream";
import { type Static, Type as T } from "@sinclair/typebox";
import type { JobEngine } from "../../jobs/engine.js";
import type { JobSystem } from "../../jobs/system.js";
import { JobNotFoundError, type JobRecord } from "../../jobs/types.js";
import { INPUT_TYPES } from "../../serving/embed.js";
import type { InputType as Side } from "../../serving/executor.js";
import { checkDimensions } from "../../serving/inputs.js";
import type { App, AppContext } from "../context.js";
import { ApiError, badRequest } from "../errors.js";
import { withJobs } from "../jobs-access.js";
import { errorResponses, InputType, mediaResponse, StringEnum } from "../schemas.js";

const JobView = T.Object({
  id: T.String(),
  object: T.Literal("job"),
  model: T.String(),
  status: StringEnum(["preparing", "queued", "running", "completed", "failed", "cancelled"]),
  inputs: T.Object({ total: T.Integer(), done: T.Integer() }),
  chunks: T.Object({ total: T.Integer(), done: T.Integer() }),
  tokens: T.Integer(),
  input_type: StringEnum(["query", "passage", "classification", "clustering"]),
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
    input_type: T.Optional(InputType),
    dimensions: T.Optional(
      T.Integer({
        minimum: 1,
        description: "Keep the first N dimensions, re-normalised; at most the model's size",
      }),
    ),
  },
  // Exactly one source of inputs.
  { additionalProperties: true, oneOf: [{ required: ["input"] }, { required: ["input_file_id"] }] },
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

/** A body naming a file that does not exist is a bad request (as POST /v1/batches answers it). */
async function inputFile(engine: JobEngine, owner: string, id: string): Promise<void> {
  try {
    await engine.files.get(owner, id);
  } catch (err) {
    if (!(err instanceof JobNotFoundError)) throw err;
    throw badRequest(`input_file_id ${id} does not exist`, "input_file_id", "file_not_found");
  }
}

/** A native job of this owner: batches are the Batch API's (/v1/batches), as GET /v1/jobs lists. */
async function embedJob(engine: JobEngine, owner: string, id: string): Promise<JobRecord> {
  const job = await engine.get(owner, id);
  if (job.kind !== "embed") throw new JobNotFoundError(`job ${id} not found`);
  return job;
}

export async function jobRoutes(app: App, ctx: AppContext): Promise<void> {
  const openai = { dialect: "openai" as const };

  app.post(
    "/v1/jobs",
    {
      schema: {
        summary: "Create a bulk embedding job",
        tags: ["Jobs"],
        body: CreateJob,
        response: { 202: JobView, ...errorResponses("openai", [404]) },
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
        if (b.input_file_id) await inputFile(engine, request.owner, b.input_file_id);
        return engine.createEmbedJob(request.owner, {
          model: model.id,
          inputType: INPUT_TYPES[b.input_type ?? "passage"] as Side,
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
        response: { 200: T.Object({ object: T.Literal("list"), data: T.Array(JobView) }) },
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
        response: { 200: JobView, ...errorResponses("openai", [404]) },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => jobView(await embedJob(engine, request.owner, request.params.id))),
  );

  app.post(
    "/v1/jobs/:id/cancel",
    {
      schema: {
        summary: "Cancel a job: its remaining chunks are dropped; the job and what it computed stay",
        tags: ["Jobs"],
        params: IdParam,
        response: { 200: JobView, ...errorResponses("openai", [404]) },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => {
        await embedJob(engine, request.owner, request.params.id);
        return jobView(await engine.cancel(request.owner, request.params.id));
      }),
  );

  // DELETE removes the job (a later GET is a 404), as DELETE /v1/files does a file; cancelling
  // without deleting is POST .../cancel, as the Batch API does it.
  app.delete(
    "/v1/jobs/:id",
    {
      schema: {
        summary: "Delete a job with its inputs and results (an unfinished job is cancelled first)",
        tags: ["Jobs"],
        params: IdParam,
        response: {
          200: T.Object({ id: T.String(), object: T.Literal("job"), deleted: T.Literal(true) }),
          ...errorResponses("openai", [404]),
        },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => {
        await embedJob(engine, request.owner, request.params.id);
        await engine.delete(request.owner, request.params.id);
        return { id: request.params.id, object: "job" as const, deleted: true as const };
      }),
  );

  app.get(
    "/v1/jobs/:id/results",
    {
      schema: {
        summary: "A completed job's embeddings, streamed: JSONL, or a NumPy .npy matrix",
        tags: ["Jobs"],
        params: IdParam,
        querystring: T.Object({
          format: T.Optional(StringEnum(["jsonl", "npy"], { description: "Default jsonl" })),
          dtype: T.Optional(
            StringEnum(["float32", "float16", "int8", "uint8", "binary", "ubinary"], {
              description:
                "Default float32. float16: half precision (npy), or the floats it keeps (JSONL). int8 / uint8 / binary / ubinary: quantized as /v1/embeddings' embedding_type (packed bits: ceil(dims / 8) bytes per vector)",
            }),
          ),
        }),
        response: {
          200: mediaResponse("The embeddings in input order", {
            "application/x-ndjson": T.String({ description: 'One {"index", "embedding"} object per line' }),
            "application/octet-stream": T.String({ format: "binary", description: "A NumPy .npy matrix" }),
          }),
          ...errorResponses("openai", [404, 409]),
        },
      },
      config: openai,
    },
    async (request, reply) => {
      const job = await withJobs(ctx, (engine) => embedJob(engine, request.owner, request.params.id));
      if (job.status !== "completed") {
        throw new ApiError(409, `job ${job.id} is ${job.status}; results exist once it is completed`, {
          code: "job_not_completed",
        });
      }
      const engine = (ctx.jobs as JobSystem).engine;
      const dtype = request.query.dtype ?? "float32";
      if (request.query.format === "npy") {
        return reply
          .type("application/octet-stream")
          .header("content-disposition", `attachment; filename="${job.id}.npy"`)
          .send(Readable.from(engine.results.npy(job, dtype)));
      }
      const type = dtype === "float32" ? "float" : dtype;
      return reply.type("application/x-ndjson").send(Readable.from(engine.results.jsonl(job, type)));
    },
  );
}
