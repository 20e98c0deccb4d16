/**
 * The queue service behind `RemoteEngine`: what the worker routes (`/worker_*`), the OpenAI and AIME routes and
 * `/api/endpoints/<ep>` need from a queue of jobs for remote workers. Two implementations: the in-memory one
 * (`../workers/WorkerPool.ts`, one server process, the default) and the Redis one (`RedisWorkerQueue.ts`,
 * `--queue redis://...`: jobs, progress, results and the worker registry in Redis, shared by several replicas).
 *
 * @since 0.3.0
 */
import { Effect } from "effect"
import type { RemoteEngineService, Reply, WorkerPool } from "../workers/WorkerPool.ts"

/** A worker as `/api/endpoints/<ep>` lists it (AIME's fields plus Chorus's `chorus_state`, `running_jobs`, `last_seen`). */
export type WorkerDescription = Readonly<Record<string, unknown>>

/** @category models */
export interface WorkerQueue {
  /** Which implementation: `memory` (this process) or `redis` (shared by every replica on the same Redis). */
  readonly kind: "memory" | "redis"
  /** The engine over the queue (the `Engine` service value of a server without a local model). */
  readonly engine: RemoteEngineService
  readonly login: (body: unknown) => Effect.Effect<Reply>
  /** A long poll: answers with up to `max_job_batch` jobs, or `no_job` after the poll wait. */
  readonly jobRequest: (body: unknown) => Effect.Effect<Reply>
  readonly progress: (body: unknown) => Effect.Effect<Reply>
  readonly result: (body: unknown) => Effect.Effect<Reply>
  readonly checkStatus: (body: unknown) => Effect.Effect<Reply>
  readonly describeWorkers: Effect.Effect<ReadonlyArray<WorkerDescription>>
  readonly jobType: string
  /** Whether the queue can be used now: undefined when it can, else why not (`/ready` answers 503 then). */
  readonly unavailable: Effect.Effect<string | undefined>
}

/**
 * The in-memory worker pool as a `WorkerQueue`.
 *
 * @category constructors
 */
export const memoryWorkerQueue = (pool: WorkerPool): WorkerQueue => ({
  kind: "memory",
  engine: pool.engine,
  login: (body) => Effect.sync(() => pool.login(body)),
  jobRequest: pool.jobRequest,
  progress: (body) => Effect.sync(() => pool.progress(body)),
  result: (body) => Effect.sync(() => pool.result(body)),
  checkStatus: (body) => Effect.sync(() => pool.checkStatus(body)),
  describeWorkers: Effect.sync(() => pool.workers().map(pool.describeWorker)),
  jobType: pool.jobType,
  unavailable: Effect.succeed(undefined)
})
