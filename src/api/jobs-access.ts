import type { JobEngine } from "../jobs/engine.js";
import type { JobSystem } from "../jobs/system.js";
import { JobNotFoundError } from "../jobs/types.js";
import type { AppContext } from "./context.js";
import { ApiError } from "./errors.js";

/** Run a job-route body against the job system, turning an unreachable Redis into a 503. */
export async function withJobs<T>(
  ctx: AppContext,
  work: (engine: JobEngine, jobs: JobSystem) => Promise<T>,
): Promise<T> {
  const jobs = ctx.jobs;
  if (!jobs)
    throw new ApiError(503, "bulk jobs are not enabled on this server", { code: "jobs_unavailable" });
  const unavailable = () =>
    new ApiError(
      503,
      "the job queue (Redis) is unreachable; synchronous routes still work, retry jobs shortly",
      {
        code: "queue_unavailable",
        retryAfterSeconds: 5,
      },
    );
  if (!jobs.available()) throw unavailable();
  try {
    return await work(jobs.engine, jobs);
  } catch (err) {
    if (err instanceof JobNotFoundError) throw new ApiError(404, err.message, { code: "not_found" });
    if (err instanceof ApiError) throw err;
    if (!jobs.available()) throw unavailable();
    throw err;
  }
}

/**
 * DELETE /v1/jobs/{id}: the job is gone afterwards (GET answers 404), with its inputs and
 * results. An open job is cancelled first, so its queued chunks are dropped; a chunk still being
 * computed finds no record when it ends and lets what it wrote expire (see ChunkProcessor).
 */
