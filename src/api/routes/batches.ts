import { Readable } from "node:stream";
import { type Static, Type as T } from "@sinclair/typebox";
import type { FileRecord, JobRecord } from "../../jobs/types.js";
import type { App, AppContext } from "../context.js";
import { ApiError, badRequest } from "../errors.js";
import { withJobs } from "../jobs-access.js";
import { errorResponses, mediaResponse, StringEnum } from "../schemas.js";

/**
 * The OpenAI Files and Batch APIs for /v1/embeddings, so the official clients' files.create +
 * batches.create flow runs here unchanged. A batch is a bulk job whose inputs are request lines.
 */
const FileObject = T.Object({
  id: T.String(),
  object: T.Literal("file"),
  bytes: T.Integer(),
  created_at: T.Integer(),
  filename: T.String(),
  purpose: T.String(),
  status: StringEnum(["processed"]),
  status_details: T.Null(),
});

/** The upload's form fields (documentation: the handler reads the parts as they stream in). */
const FileUpload = T.Object({
  file: T.String({
    format: "binary",
    minLength: 1,
    description: 'JSONL: one string or {"text": ...} per line, or Batch API request lines; not empty',
  }),
  purpose: T.Optional(T.String({ description: "Kept with the file; default batch" })),
});

const BatchObject = T.Object(
  {
    id: T.String(),
    object: T.Literal("batch"),
    endpoint: T.String(),
    errors: T.Union([
      T.Object({
        object: T.Literal("list"),
        data: T.Array(T.Object({ code: T.String(), message: T.String() })),
      }),
      T.Null(),
    ]),
    input_file_id: T.String(),
    completion_window: T.String(),
    status: StringEnum(["validating", "in_progress", "completed", "failed", "cancelled"]),
    output_file_id: T.Union([T.String(), T.Null()]),
    error_file_id: T.Union([T.String(), T.Null()]),
    created_at: T.Integer(),
    in_progress_at: T.Union([T.Integer(), T.Null()]),
    expires_at: T.Union([T.Integer(), T.Null()]),
    finalizing_at: T.Union([T.Integer(), T.Null()]),
    completed_at: T.Union([T.Integer(), T.Null()]),
    failed_at: T.Union([T.Integer(), T.Null()]),
    expired_at: T.Null(),
    cancelling_at: T.Union([T.Integer(), T.Null()]),
    cancelled_at: T.Union([T.Integer(), T.Null()]),
    request_counts: T.Object({ total: T.Integer(), completed: T.Integer(), failed: T.Integer() }),
    metadata: T.Union([T.Record(T.String(), T.String()), T.Null()]),
  },
  { additionalProperties: true },
);

function fileObject(f: FileRecord): Static<typeof FileObject> {
  return {
    id: f.id,
    object: "file",
    bytes: f.bytes,
    created_at: f.createdAt,
    filename: f.filename,
    purpose: f.purpose,
    status: "processed",
    status_details: null,
  };
}

const STATUS: Record<JobRecord["status"], Static<typeof BatchObject>["status"]> = {
  preparing: "validating",
  queued: "in_progress",
  running: "in_progress",
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
};

function batchObject(j: JobRecord): Static<typeof BatchObject> {
  const s = (ms: number | null) => (ms === null ? null : Math.floor(ms / 1000));
  const created = Math.floor(j.createdAt / 1000);
  const finished = s(j.finishedAt);
  const done = j.status === "completed";
  const metadata = j.meta.metadata ? (JSON.parse(j.meta.metadata) as Record<string, string>) : null;
  return {
    id: j.id,
    object: "batch",
    endpoint: j.meta.endpoint ?? "/v1/embeddings",
    errors: j.errors.length
      ? { object: "list", data: j.errors.map((message) => ({ code: "server_error", message })) }
      : null,
    input_file_id: j.meta.input_file_id ?? "",
    completion_window: j.meta.completion_window ?? "24h",
    status: STATUS[j.status],
    output_file_id: done || j.status === "cancelled" ? `file-${j.id}-output` : null,
    error_file_id: (done || j.status === "cancelled") && j.failed > 0 ? `file-${j.id}-errors` : null,
    created_at: created,
    in_progress_at: s(j.startedAt),
    expires_at: created + 24 * 3600,
    finalizing_at: done ? finished : null,
    completed_at: done ? finished : null,
    failed_at: j.status === "failed" ? finished : null,
    expired_at: null,
    cancelling_at: j.status === "cancelled" ? finished : null,
    cancelled_at: j.status === "cancelled" ? finished : null,
    request_counts: { total: j.total, completed: j.inputsDone - j.failed, failed: j.failed },
    metadata,
  };
}

const IdParam = T.Object({ id: T.String() });

const tooLarge = () =>
  new ApiError(413, "the file is larger than the server accepts", { code: "file_too_large", param: "file" });

/**
 * A multipart body the parser cannot read (no boundary, cut short, bad part headers) is the
 * client's fault: a 400, not a 500. A multipart limit keeps its 4xx status.
 */
function malformed(err: Error): Error {
  const status = (err as { statusCode?: number }).statusCode;
  if (status === 413) return tooLarge();
  if (err instanceof ApiError || (status !== undefined && status >= 400 && status < 500)) return err;
  return badRequest(`the multipart/form-data body is malformed: ${err.message}`, "file", "invalid_multipart");
}

/** The upload's bytes; the stream's own errors (the body, not the store) become 4xx errors. */
async function* readUpload(stream: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of stream) yield chunk;
  } catch (err) {
    throw malformed(err as Error);
  }
}

export async function batchRoutes(app: App, ctx: AppContext): Promise<void> {
  const openai = { dialect: "openai" as const };

  app.post(
    "/v1/files",
    {
      schema: {
        summary: "Upload a file (multipart: file, purpose), e.g. a Batch API input JSONL",
        tags: ["Batch"],
        consumes: ["multipart/form-data"],
        multipartBody: FileUpload,
        response: { 200: FileObject },
      },
      config: openai,
    },
    async (request) => {
      if (!request.isMultipart())
        throw badRequest("upload the file as multipart/form-data with fields file and purpose", "file");
      let purpose = "batch";
      let stored: FileRecord | undefined;
      /** File parts under another name than "file" (read and dropped, so the body is consumed). */
      const otherFiles: string[] = [];
      await withJobs(ctx, async (engine) => {
        const parts = request.parts()[Symbol.asyncIterator]();
        for (;;) {
          const next = await parts.next().catch((err: Error) => {
            throw malformed(err);
          });
          if (next.done) break;
          const part = next.value;
          if (part.type === "field") {
            if (part.fieldname === "purpose") purpose = String(part.value);
          } else if (part.fieldname !== "file" || stored) {
            otherFiles.push(part.fieldname);
            part.file.resume();
          } else {
            stored = await engine.files.put(
              request.owner,
              part.filename || "upload.jsonl",
              purpose,
              readUpload(part.file),
            );
            if (part.file.truncated) {
              // The stream stopped at the size limit: what was stored is not the whole file.
              await engine.files.delete(request.owner, stored.id);
              throw tooLarge();
            }
            if (stored.bytes === 0) {
              await engine.files.delete(request.owner, stored.id);
              throw badRequest("the file is empty", "file", "empty_file");
            }
          }
        }
        if (stored && stored.purpose !== purpose) stored = await engine.files.setPurpose(stored, purpose);
      });
      if (!stored) {
        const hint = otherFiles.length ? ` (a file came as "${otherFiles[0]}")` : "";
        throw badRequest(`missing required field "file"${hint}`, "file");
      }
      return fileObject(stored);
    },
  );

  app.get(
    "/v1/files",
    {
      schema: {
        summary: "List the caller's files",
        tags: ["Batch"],
        response: {
          200: T.Object({ object: T.Literal("list"), data: T.Array(FileObject), has_more: T.Boolean() }),
        },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => ({
        object: "list" as const,
        data: (await engine.files.list(request.owner)).map(fileObject),
        has_more: false,
      })),
  );

  app.get(
    "/v1/files/:id",
    {
      schema: {
        summary: "A file's metadata",
        tags: ["Batch"],
        params: IdParam,
        response: { 200: FileObject, ...errorResponses("openai", [404]) },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => fileObject(await engine.files.get(request.owner, request.params.id))),
  );

  app.get(
    "/v1/files/:id/content",
    {
      schema: {
        summary: "A file's content (batch output and error files included)",
        tags: ["Batch"],
        params: IdParam,
        response: {
          200: mediaResponse("The file's lines", { "application/jsonl": T.String() }),
          ...errorResponses("openai", [404]),
        },
      },
      config: openai,
    },
    async (request, reply) => {
      const file = await withJobs(ctx, (engine) => engine.files.get(request.owner, request.params.id));
      const engine = ctx.jobs?.engine;
      if (!engine) throw new ApiError(503, "bulk jobs are not enabled on this server");
      return reply.type("application/jsonl").send(Readable.from(engine.files.content(file)));
    },
  );

  app.delete(
    "/v1/files/:id",
    {
      schema: {
        summary: "Delete a file",
        tags: ["Batch"],
        params: IdParam,
        response: {
          200: T.Object({ id: T.String(), object: T.Literal("file"), deleted: T.Boolean() }),
          ...errorResponses("openai", [404]),
        },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => {
        await engine.files.delete(request.owner, request.params.id);
        return { id: request.params.id, object: "file" as const, deleted: true };
      }),
  );

  app.post(
    "/v1/batches",
    {
      schema: {
        summary: "Create a batch of /v1/embeddings requests from an uploaded JSONL file",
        tags: ["Batch"],
        body: T.Object(
          {
            input_file_id: T.String({ description: "A file uploaded with POST /v1/files (a 400 if none)" }),
            endpoint: StringEnum(["/v1/embeddings"]),
            completion_window: StringEnum(["24h"]),
            metadata: T.Optional(T.Union([T.Record(T.String(), T.String()), T.Null()])),
          },
          { additionalProperties: true },
        ),
        response: { 200: BatchObject },
      },
      config: openai,
    },
    async (request) => {
      const b = request.body;
      if (b.endpoint !== "/v1/embeddings") {
        throw badRequest(`endpoint ${b.endpoint} is not supported here; use /v1/embeddings`, "endpoint");
      }
      if (b.completion_window !== "24h")
        throw badRequest("completion_window must be 24h", "completion_window");
      const job = await withJobs(ctx, async (engine) => {
        const file = await engine.files.get(request.owner, b.input_file_id).catch(() => {
          throw new ApiError(400, `input_file_id ${b.input_file_id} does not exist`, {
            param: "input_file_id",
          });
        });
        return engine.createBatchJob(request.owner, {
          lines: engine.files.lines(file),
          meta: {
            input_file_id: b.input_file_id,
            endpoint: b.endpoint,
            completion_window: b.completion_window,
            ...(b.metadata ? { metadata: JSON.stringify(b.metadata) } : {}),
          },
        });
      });
      return batchObject(job);
    },
  );

  app.get(
    "/v1/batches",
    {
      schema: {
        summary: "List the caller's batches",
        tags: ["Batch"],
        response: {
          200: T.Object({
            object: T.Literal("list"),
            data: T.Array(BatchObject),
            first_id: T.Union([T.String(), T.Null()]),
            last_id: T.Union([T.String(), T.Null()]),
            has_more: T.Boolean(),
          }),
        },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => {
        const data = (await engine.list(request.owner)).filter((j) => j.kind === "batch").map(batchObject);
        return {
          object: "list" as const,
          data,
          first_id: data[0]?.id ?? null,
          last_id: data.at(-1)?.id ?? null,
          has_more: false,
        };
      }),
  );

  app.get(
    "/v1/batches/:id",
    {
      schema: {
        summary: "A batch",
        tags: ["Batch"],
        params: IdParam,
        response: { 200: BatchObject, ...errorResponses("openai", [404]) },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => {
        const job = await engine.get(request.owner, request.params.id);
        if (job.kind !== "batch")
          throw new ApiError(404, `batch ${request.params.id} not found`, { code: "not_found" });
        return batchObject(job);
      }),
  );

  app.post(
    "/v1/batches/:id/cancel",
    {
      schema: {
        summary: "Cancel a batch",
        tags: ["Batch"],
        params: IdParam,
        response: { 200: BatchObject, ...errorResponses("openai", [404]) },
      },
      config: openai,
    },
    async (request) =>
      withJobs(ctx, async (engine) => batchObject(await engine.cancel(request.owner, request.params.id))),
  );
}
