/**
 * Where the AIME routes keep their jobs: in this process (`makeJobTable`, Jobs.ts: a fiber per job, owned by the
 * table) or, with `--queue redis://...`, in Redis (`sharedJobStore`: the queue's job hash is the AIME job, so any
 * replica answers a poll, a wait or a cancel, and the first poll after the end hands the result out exactly once,
 * whichever replica it reaches).
 *
 * @since 0.3.0
 */
import { Effect, Schema } from "effect"
import type { EngineError } from "../../core/Engine.ts"
import type { GenerateRequest } from "../../core/Request.ts"
import type { SharedJobs, StoredJob } from "../queue/RedisWorkerQueue.ts"
import { StoredEnd } from "../queue/RedisWorkerQueue.ts"
import type { QueueError } from "../queue/RedisConnection.ts"
import type { ShutDown } from "../ServerErrors.ts"
import type { EngineView, JobInfo, JobOutcome, JobResult, JobState, JobTable, PollAnswer, ProgressInfo } from "./Jobs.ts"

/** The engine a job is submitted to (the `Engine` service's submit). */
export interface Submitter {
  readonly submit: (request: GenerateRequest) => Effect.Effect<Parameters<JobTable["start"]>[0], EngineError>
}

/** @category models */
export interface AimeJobStore {
  readonly submit: (engine: Submitter, request: GenerateRequest, info: JobInfo) => Effect.Effect<string, EngineError | QueueError>
  /** The job's owner (API key identity); undefined when there is no such job. */
  readonly owner: (id: string) => Effect.Effect<{ readonly owner: string | undefined } | undefined, QueueError>
  readonly await: (id: string) => Effect.Effect<JobOutcome, QueueError>
  readonly poll: (id: string, engine: EngineView | undefined) => Effect.Effect<PollAnswer | undefined, QueueError>
  readonly cancel: (id: string) => Effect.Effect<JobState | undefined, QueueError>
}

/**
 * The in-process job table as a store.
 *
 * @category constructors
 */
export const localJobStore = (table: JobTable): AimeJobStore => ({
  submit: (engine, request, info) =>
    Effect.gen(function*() {
      const events = yield* engine.submit(request)
      const job = yield* table.start(events, info)
      return job.id
    }),
  owner: (id) => Effect.sync(() => {
    const job = table.get(id)
    return job === undefined ? undefined : { owner: job.info.owner }
  }),
  await: table.await,
  poll: table.poll,
  cancel: table.cancel
})

const AimeInfo = Schema.fromJsonString(Schema.Struct({
  owner: Schema.NullOr(Schema.String),
  maxTokens: Schema.Number,
  modelName: Schema.String,
  maxSeqLen: Schema.Number
}))
const decodeInfo = Schema.decodeUnknownExit(AimeInfo)
const decodeEnd = Schema.decodeUnknownExit(StoredEnd)

const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits

export interface SharedJobStoreOptions {
  readonly epVersion: number
  readonly workerVersion: string
  /** Fails once the server's shutdown grace is over: a client still waiting then gets an in-band error. */
  readonly shutdown: Effect.Effect<never, ShutDown>
}

/**
 * The AIME jobs in the shared (Redis) queue.
 *
 * @category constructors
 */
export const sharedJobStore = (shared: SharedJobs, options: SharedJobStoreOptions): AimeJobStore => {
  const infoOf = (job: StoredJob) => {
    const d = decodeInfo(job.aime)
    return d._tag === "Success" ? d.value : undefined
  }

  const resultOf = (id: string, job: StoredJob): JobResult => {
    const info = infoOf(job)
    const end = job.fin === undefined ? undefined : decodeEnd(job.fin)
    const fin = end?._tag === "Success" ? end.value : {}
    const received = (job.end > 0 ? job.end : Date.now()) / 1000
    const startCompute = job.adm > 0 ? job.adm / 1000 : received
    const generated = fin.ct ?? job.em
    const prompt = fin.pt ?? job.pt
    return {
      success: true,
      job_id: id,
      ep_version: options.epVersion,
      text: job.et,
      num_generated_tokens: generated,
      model_name: info?.modelName ?? "remote",
      max_seq_len: info?.maxSeqLen ?? 0,
      current_context_length: prompt + generated,
      prompt_length: prompt,
      finish_reason: fin.error !== undefined ? "error" : fin.fr ?? "stop",
      ...(fin.error === undefined ? {} : { error: `worker ${job.w}: ${fin.error}` }),
      auth: job.w === "" ? "chorus" : job.w,
      worker_interface_version: options.workerVersion,
      start_time: job.sub / 1000,
      start_time_compute: startCompute,
      result_received_time: received,
      total_duration: round(received - job.sub / 1000, 3),
      compute_duration: round(received - startCompute, 3)
    }
  }

  const progressOf = (id: string, job: StoredJob, position: number, online: number): ProgressInfo => {
    const running = job.st !== "queued"
    const info = infoOf(job)
    let estimate = -1
    if (running && job.ftk > 0 && job.em >= 2 && info !== undefined) {
      const rate = (job.em - 1) / Math.max((Date.now() - job.ftk) / 1000, 1e-3)
      estimate = round(Math.max(0, (info.maxTokens - job.em) / rate), 1)
    }
    return {
      job_id: id,
      progress: running ? job.em : 0,
      queue_position: running ? 0 : position,
      estimate,
      num_workers_online: online,
      progress_data: running ? { text: job.et, num_generated_tokens: job.em, current_context_length: job.pt + job.em } : {}
    }
  }

  /** The answer for an ended job: the result once (atomically, across replicas), then `done` without it. */
  const ended = (id: string, job: StoredJob) =>
    Effect.map(shared.handOut(id), (first): PollAnswer => ({ state: "done", result: first ? resultOf(id, job) : undefined }))

  return {
    submit: (_engine, request, info) =>
      shared.submit(request, JSON.stringify({ owner: info.owner ?? null, maxTokens: info.maxTokens, modelName: info.modelName, maxSeqLen: info.maxSeqLen })),
    owner: (id) =>
      Effect.map(shared.read(id), (job) => {
        if (job === undefined) return undefined
        const info = infoOf(job)
        // A job of the OpenAI routes is no AIME job.
        return info === undefined ? undefined : { owner: info.owner ?? undefined }
      }),
    await: (id) =>
      Effect.gen(function*() {
        const waited = yield* Effect.raceFirst(Effect.as(shared.awaitEnd(id), true), Effect.catchTag(options.shutdown, "ShutDown", () => Effect.succeed(false)))
        const job = yield* shared.read(id)
        if (job === undefined) return { _tag: "Canceled" } as const
        if (!waited) {
          // The grace is over: the job stays in the queue (another replica can answer its polls); this client is told.
          return { _tag: "Result", result: { ...resultOf(id, job), finish_reason: "error", error: "the server is shutting down; poll the job at another replica" } } as const
        }
        switch (job.st) {
          case "expired":
            return { _tag: "Lapsed" } as const
          case "canceled":
            return { _tag: "Canceled" } as const
          default:
            yield* shared.handOut(id)
            return { _tag: "Result", result: resultOf(id, job) } as const
        }
      }),
    poll: (id, _engine) =>
      Effect.gen(function*() {
        const job = yield* shared.read(id)
        if (job === undefined) return undefined
        switch (job.st) {
          case "done":
          case "failed":
            return yield* ended(id, job)
          case "expired":
            return { state: "lapsed", progress: progressOf(id, job, 0, yield* shared.onlineWorkers) }
          case "canceled":
            return { state: "canceled", progress: progressOf(id, job, 0, yield* shared.onlineWorkers) }
          case "queued": {
            const position = yield* shared.position(id)
            return { state: "queued", progress: progressOf(id, job, Math.max(1, position), yield* shared.onlineWorkers) }
          }
          case "running":
            return { state: "processing", progress: progressOf(id, job, 0, yield* shared.onlineWorkers) }
        }
      }),
    cancel: (id) =>
      Effect.gen(function*() {
        const before = yield* shared.cancel(id)
        if (before === "") return undefined
        const job = yield* shared.read(id)
        switch (job?.st) {
          case undefined:
          case "canceled":
            return "canceled"
          case "expired":
            return "lapsed"
          case "queued":
            return "queued"
          case "running":
            return "processing"
          case "done":
          case "failed":
            return job.ho === 1 ? "done" : "finished"
        }
      })
  }
}
