/**
 * The AIME job table: every submitted job runs in a fiber owned by the table (not by the HTTP request that
 * submitted it), so a client may submit without waiting, poll, go away, or cancel. It keeps what the protocol
 * reports — state, text so far, timings, the final result object — and forgets finished jobs after the result
 * lifetime.
 *
 * @since 0.1.0
 */
import { Cause, Deferred, Effect, FiberMap, type Scope, Stream } from "effect"
import { randomBytes } from "node:crypto"
import type { EngineError } from "../../core/Engine.ts"
import type { JobView } from "../../core/JobMachine.ts"
import type { GenerationEvent } from "../../core/Request.ts"
import type { ShutDown } from "../ServerErrors.ts"

/**
 * A job's state in AIME's terms, read from the engine's job machine; `finished` is the reference's "result arrived,
 * not yet handed out", shown as `done`.
 */
export type JobState = "queued" | "processing" | "finished" | "done" | "lapsed" | "canceled"

/** The final result object (reference §2.10). */
export interface JobResult {
  readonly success: true
  readonly job_id: string
  readonly ep_version: number
  readonly text: string
  readonly num_generated_tokens: number
  readonly model_name: string
  readonly max_seq_len: number
  readonly current_context_length: number
  readonly prompt_length: number
  readonly finish_reason: string
  readonly error?: string
  readonly auth: string
  readonly worker_interface_version: string
  readonly start_time: number
  readonly start_time_compute: number
  readonly result_received_time: number
  readonly total_duration: number
  readonly compute_duration: number
}

export type JobOutcome =
  | { readonly _tag: "Result"; readonly result: JobResult }
  | { readonly _tag: "Lapsed" }
  | { readonly _tag: "Canceled" }

/** What a job was started with. */
export interface JobInfo {
  /** The API key that submitted it (resolved from a session key); only it may poll or cancel. */
  readonly owner: string | undefined
  readonly maxTokens: number
  readonly modelName: string
  readonly maxSeqLen: number
}

/** A job as the table keeps it; routes read it, only the table writes it. */
export interface Job {
  readonly id: string
  readonly info: JobInfo
  /** From the job machine (`machine`), and whether the result was handed out. */
  readonly state: JobState
  readonly requestId: number | undefined
  /** The engine's lifecycle machine of this job (from its `Queued` event). */
  readonly machine: JobView | undefined
  readonly outcome: JobOutcome | undefined
  readonly handedOut: boolean
  readonly text: string
  readonly generated: number
  readonly promptLength: number
  /** Epoch seconds. */
  readonly startTime: number
  readonly startCompute: number | undefined
  readonly firstTokenAt: number | undefined
  readonly endedAt: number | undefined
}

type MutableJob = { -readonly [K in Exclude<keyof Job, "state">]: Job[K] } & { readonly state: JobState }

/** AIME's name for the machine's state; an ended job counts as `done` only once its result was handed out. */
const stateOf = (job: MutableJob): JobState => {
  if (job.machine === undefined) {
    // A stream that ended before naming its machine (not one from the engine): its outcome is all there is.
    const tag = job.outcome?._tag
    return tag === undefined ? "queued" : tag === "Lapsed" ? "lapsed" : tag === "Canceled" ? "canceled" : job.handedOut ? "done" : "finished"
  }
  switch (job.machine.state()) {
    case "queued":
      return "queued"
    case "prefilling":
    case "decoding":
      return "processing"
    case "done":
    case "failed":
      return job.handedOut ? "done" : "finished"
    case "expired":
      return "lapsed"
    case "cancelled":
      return "canceled"
  }
}

/** The engine facts a progress answer needs. */
export interface EngineView {
  readonly queuePosition: (requestId: number) => number
  readonly maxBatch: number
}

export interface ProgressInfo {
  readonly job_id: string
  readonly progress: number
  readonly queue_position: number
  readonly estimate: number
  readonly num_workers_online: number
  readonly progress_data: Record<string, unknown>
}

/** A poll's answer, before the route encodes it. */
export type PollAnswer =
  | { readonly state: "queued" | "processing" | "lapsed" | "canceled"; readonly progress: ProgressInfo }
  | { readonly state: "done"; readonly result: JobResult | undefined }

export interface JobTableOptions {
  readonly epVersion: number
  /** How long a finished, lapsed or canceled job stays pollable. */
  readonly resultLifetimeMs: number
  /** Named in results as the reference names its worker (`auth`, `worker_interface_version`). */
  readonly workerName: string
  readonly workerVersion: string
  /** Fails when the server's shutdown grace is over: a job still running then ends with an in-band error result. */
  readonly shutdown?: Effect.Effect<never, ShutDown>
}

export interface JobTable {
  /** Runs an admitted event stream as a new job. */
  readonly start: (events: Stream.Stream<GenerationEvent, EngineError>, info: JobInfo) => Effect.Effect<Job>
  readonly get: (id: string) => Job | undefined
  /** Waits for the end of a job; a result counts as handed out. */
  readonly await: (id: string) => Effect.Effect<JobOutcome>
  /** The progress answer; the first poll after the end carries the result, later ones do not. */
  readonly poll: (id: string, engine: EngineView | undefined) => Effect.Effect<PollAnswer | undefined>
  /** Stops a queued or running job (its generation stops); the job machine refuses it once the job ended. */
  readonly cancel: (id: string) => Effect.Effect<JobState | undefined>
  readonly size: Effect.Effect<number>
}

/** `JID` + 128 random bits (base64url): unguessable, and unlike a counter it tells nothing about request volume. */
export const newJobId = (): string => `JID${randomBytes(16).toString("base64url")}`

const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits
const now = () => Date.now() / 1000

export const makeJobTable = (options: JobTableOptions): Effect.Effect<JobTable, never, Scope.Scope> =>
  Effect.gen(function*() {
    const fibers = yield* FiberMap.make<string>()
    const jobs = new Map<string, MutableJob>()
    const ends = new Map<string, Deferred.Deferred<JobOutcome>>()
    const results = new Map<string, JobResult>()
    /** Smoothed seconds from first token to the end of a job, for queue estimates; undefined until one finished. */
    let meanCompute: number | undefined

    const finish = (job: MutableJob, outcome: JobOutcome) => {
      job.outcome = outcome
      job.endedAt = now()
      if (outcome._tag === "Result") {
        results.set(job.id, outcome.result)
        const seconds = outcome.result.compute_duration
        meanCompute = meanCompute === undefined ? seconds : 0.8 * meanCompute + 0.2 * seconds
      }
      const end = ends.get(job.id)
      if (end !== undefined) Deferred.doneUnsafe(end, Effect.succeed(outcome))
    }

    const resultOf = (job: MutableJob, finishReason: string, error: string | undefined): JobResult => {
      const received = now()
      const startCompute = job.startCompute ?? received
      return {
        success: true,
        job_id: job.id,
        ep_version: options.epVersion,
        text: job.text,
        num_generated_tokens: job.generated,
        model_name: job.info.modelName,
        max_seq_len: job.info.maxSeqLen,
        current_context_length: job.promptLength + job.generated,
        prompt_length: job.promptLength,
        finish_reason: finishReason,
        ...(error === undefined ? {} : { error }),
        auth: options.workerName,
        worker_interface_version: options.workerVersion,
        start_time: job.startTime,
        start_time_compute: startCompute,
        result_received_time: received,
        total_duration: round(received - job.startTime, 3),
        compute_duration: round(received - startCompute, 3)
      }
    }

    const onEvent = (job: MutableJob, e: GenerationEvent, known: Deferred.Deferred<void>): void => {
      switch (e._tag) {
        case "Queued":
          job.requestId = e.requestId
          job.machine = e.job
          Deferred.doneUnsafe(known, Effect.void)
          return
        case "Started":
          job.promptLength = e.promptTokens
          job.startCompute = now()
          return
        case "Token":
          job.firstTokenAt ??= now()
          job.generated++
          job.text += e.text
          return
        case "Finished":
          job.text += e.text
          job.generated = e.usage.completionTokens
          job.promptLength = e.usage.promptTokens
          finish(job, { _tag: "Result", result: resultOf(job, e.finishReason, undefined) })
          return
      }
    }

    const run = (job: MutableJob, events: Stream.Stream<GenerationEvent, EngineError>, known: Deferred.Deferred<void>) =>
      Effect.raceFirst(Stream.runForEach(events, (e) => Effect.sync(() => onEvent(job, e, known))), options.shutdown ?? Effect.never).pipe(
        Effect.catch((error: EngineError | ShutDown) =>
          Effect.sync(() => {
            if (error._tag === "DeadlineExceeded") finish(job, { _tag: "Lapsed" })
            // As in the reference, a failed generation is a result with an in-band error.
            else finish(job, { _tag: "Result", result: resultOf(job, "error", error.message) })
          })
        ),
        Effect.catchCause((cause) =>
          Cause.hasInterruptsOnly(cause)
            ? Effect.failCause(cause)
            : Effect.sync(() => finish(job, { _tag: "Result", result: resultOf(job, "error", String(Cause.squash(cause))) }))
        ),
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            if (job.endedAt === undefined) finish(job, { _tag: "Canceled" })
          })
        ),
        Effect.ensuring(Deferred.succeed(known, undefined))
      )

    /**
     * The machine can reach its final state a moment before this table has read the last events (the result text);
     * a poll or cancel that sees an ended machine waits for them, so it never reports an end without its result.
     */
    const settled = (job: MutableJob) =>
      job.machine?.ended() === true && job.endedAt === undefined ? Deferred.await(ends.get(job.id)!).pipe(Effect.asVoid) : Effect.void

    const estimate = (job: MutableJob, position: number, engine: EngineView): number => {
      const t = now()
      if (job.state === "processing" || position === 0) {
        // Remaining tokens at this job's own measured rate; an upper bound, since it may stop early.
        if (job.firstTokenAt !== undefined && job.generated >= 2) {
          const rate = (job.generated - 1) / Math.max(t - job.firstTokenAt, 1e-3)
          return round(Math.max(0, (job.info.maxTokens - job.generated) / rate), 1)
        }
        return meanCompute === undefined ? -1 : round(Math.max(0, meanCompute - (t - (job.startCompute ?? t))), 1)
      }
      if (meanCompute === undefined || position < 0) return -1
      // Jobs ahead leave in waves of one batch; then this one runs.
      return round(meanCompute * (Math.ceil(position / Math.max(1, engine.maxBatch)) + 1), 1)
    }

    const progressOf = (job: MutableJob, engine: EngineView | undefined): ProgressInfo => {
      const position = job.state === "queued" && job.requestId !== undefined && engine !== undefined ? engine.queuePosition(job.requestId) : 0
      const running = job.state !== "queued" || position === 0
      return {
        job_id: job.id,
        progress: running ? job.generated : 0,
        queue_position: running ? 0 : position,
        estimate: engine === undefined || job.endedAt !== undefined ? (job.endedAt === undefined ? -1 : 0) : estimate(job, position, engine),
        num_workers_online: engine === undefined ? 0 : 1,
        progress_data: running
          ? { text: job.text, num_generated_tokens: job.generated, current_context_length: job.promptLength + job.generated }
          : {}
      }
    }

    const sweep = Effect.sync(() => {
      const limit = now() - options.resultLifetimeMs / 1000
      for (const [id, job] of jobs) {
        if (job.endedAt !== undefined && job.endedAt < limit) {
          jobs.delete(id)
          ends.delete(id)
          results.delete(id)
        }
      }
    })
    yield* Effect.forkScoped(Effect.forever(Effect.sleep(Math.max(10, Math.min(5000, options.resultLifetimeMs / 2))).pipe(Effect.andThen(sweep))))

    const answer = (job: MutableJob, engine: EngineView | undefined): PollAnswer => {
      const id = job.id
      switch (job.state) {
        case "finished":
          job.handedOut = true
          return { state: "done", result: results.get(id) }
        case "done":
          return { state: "done", result: undefined }
        case "queued":
        case "processing": {
          const progress = progressOf(job, engine)
          return { state: progress.queue_position === 0 ? "processing" : "queued", progress }
        }
        case "lapsed":
        case "canceled":
          return { state: job.state, progress: progressOf(job, engine) }
      }
    }

    const table: JobTable = {
      start: (events, info) =>
        Effect.gen(function*() {
          const job: MutableJob = {
            id: newJobId(),
            info,
            get state() {
              return stateOf(job)
            },
            requestId: undefined,
            machine: undefined,
            outcome: undefined,
            handedOut: false,
            text: "",
            generated: 0,
            promptLength: 0,
            startTime: now(),
            startCompute: undefined,
            firstTokenAt: undefined,
            endedAt: undefined
          }
          jobs.set(job.id, job)
          ends.set(job.id, yield* Deferred.make<JobOutcome>())
          const known = yield* Deferred.make<void>()
          yield* FiberMap.run(fibers, job.id, run(job, events, known))
          // The engine names the job's machine in its first event, at once: from here on its state is the machine's.
          yield* Deferred.await(known)
          return job
        }),
      get: (id) => jobs.get(id),
      await: (id) =>
        Effect.gen(function*() {
          const end = ends.get(id)
          if (end === undefined) return { _tag: "Canceled" } as const
          const outcome = yield* Deferred.await(end)
          const job = jobs.get(id)
          if (outcome._tag === "Result" && job !== undefined) job.handedOut = true
          return outcome
        }),
      poll: (id, engine) =>
        Effect.gen(function*() {
          const job = jobs.get(id)
          if (job === undefined) return undefined
          yield* settled(job)
          return answer(job, engine)
        }),
      cancel: (id) =>
        Effect.gen(function*() {
          const job = jobs.get(id)
          if (job === undefined) return undefined
          if (job.machine === undefined ? job.endedAt === undefined : job.machine.cancellable()) {
            // Interrupting the fiber closes the engine stream, whose end sends the machine CANCEL and aborts the
            // sequence before its next step.
            yield* FiberMap.remove(fibers, id)
          }
          yield* settled(job)
          return job.state
        }),
      size: Effect.sync(() => jobs.size)
    }

    return table
  })
