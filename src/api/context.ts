import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance } from "fastify";
import type { JobSystem } from "../jobs/system.js";
import type { ServingContext } from "../serving/context.js";
import type { WorkerStatus } from "../serving/worker-pool.js";
import type { ErrorDialect } from "./errors.js";

export const VERSION = "0.1.0";

/** Process-wide serving state the operational routes report. */
export interface ServerState {
  /** Models loaded and warmed. */
  ready: boolean;
  /** SIGTERM received: finishing in-flight work, taking no new. */
  draining: boolean;
  /** Why loading failed, if it did. */
  loadError?: string;
  /** The device workers and whether each is alive. */
  workers?: () => WorkerStatus[];
}

/** Everything a route may use: the serving context, the process state and the job system. */
export interface AppContext extends ServingContext {
  state: ServerState;
  /** Bulk jobs and the OpenAI Batch API. */
  jobs?: JobSystem;
}

declare module "fastify" {
  interface FastifyRequest {
    /** Epoch milliseconds after which this request is abandoned (503), counted from arrival. */
    deadline: number;
    /** Aborted at the deadline (DeadlineError) or when the client goes away (CancelledError). */
    cancellation: AbortSignal;
    /** Who owns what this request creates: a hash of its API key, or "anonymous". */
    owner: string;
  }
  interface FastifyContextConfig {
    /** Error body format of the route. */
    dialect?: ErrorDialect;
    /** Reachable without an API key (health, metrics, docs). */
    public?: boolean;
  }
}

export type App = FastifyInstance<
  import("node:http").Server,
  import("node:http").IncomingMessage,
  import("node:http").ServerResponse,
  import("fastify").FastifyBaseLogger,
  TypeBoxTypeProvider
>;
