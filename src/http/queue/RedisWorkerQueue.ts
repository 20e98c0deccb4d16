/**
 * The Redis implementation of the worker queue (`chorus serve --no-local-model --queue redis://HOST:PORT`): jobs,
 * their progress, results, cancellation and the worker registry live in Redis, so several `chorus serve` replicas
 * form one API. A job submitted at replica A can be taken by a worker polling replica B, its progress posted to C,
 * polled or canceled at any of them, and streamed to the client at A; a replica that dies loses no job, because the
 * queue owns the jobs, not the replica.
 *
 * Delivery: at-least-once to workers (a worker silent for the worker timeout loses its jobs to the head of the
 * queue, and the next worker runs them again with the same seed), exactly-once to clients (every change to a job is
 * one Lua script that first checks that the job runs on the calling worker, so a result, or a token, counts once;
 * a timed-out worker's late calls are refused with 409). See docs/workers.md for the structures and their cost.
 *
 * @since 0.3.0
 */
import { Effect, Schema, type Scope, Semaphore, Stream } from "effect"
import { randomUUID } from "node:crypto"
import type { EngineError } from "../../core/Engine.ts"
import { GenerationError, Overloaded, ValidationError } from "../../core/Errors.ts"
import { type EngineObserver, silentObserver } from "../../core/EngineObserver.ts"
import type { GenerateRequest, GenerationEvent } from "../../core/Request.ts"
import { newJobId } from "../aime/Jobs.ts"
import { parameterDescription } from "../aime/Schemas.ts"
import { int, isObj, isReply, makeWorkerCalls, type Obj, remoteEngineCapacity, remoteEngineStats, reply, type Reply, str } from "../workers/WorkerCalls.ts"
import { aimeFields, type RemoteEngineService, type WorkerPoolOptions } from "../workers/WorkerPool.ts"
import { type FollowContext, type FollowedJob, followJob } from "./FollowJob.ts"
import { type JobEventFanout, makeJobEventFanout } from "./JobEvents.ts"
import { QueueError, RedisConnection, type RedisReply } from "./RedisConnection.ts"
import { cancelScript, handOutScript, progressScript, resultScript, returnScript, submitScript, sweepScript, takeScript } from "./RedisScripts.ts"
import type { WorkerDescription, WorkerQueue } from "./WorkerQueue.ts"

export interface RedisWorkerQueueOptions extends WorkerPoolOptions {
  /** How long an ended job (its hash and event stream) stays in Redis. Default 900 s (AIME's result lifetime). */
  readonly resultLifetimeMs?: number
}

/** A job as stored in Redis (the hash `job:<id>`), decoded. */
export const StoredJob = Schema.Struct({
  st: Schema.Literals(["queued", "running", "done", "failed", "canceled", "expired"]),
  w: Schema.String,
  sub: Schema.NumberFromString,
  adm: Schema.NumberFromString,
  ftk: Schema.NumberFromString,
  end: Schema.NumberFromString,
  em: Schema.NumberFromString,
  et: Schema.String,
  pt: Schema.NumberFromString,
  ho: Schema.NumberFromString,
  aime: Schema.String,
  fin: Schema.optional(Schema.String)
})
export type StoredJob = typeof StoredJob.Type

/** How a job ended (`fin`), JSON. */
export const StoredEnd = Schema.fromJsonString(Schema.Struct({
  fr: Schema.optional(Schema.String),
  sr: Schema.optional(Schema.String),
  pt: Schema.optional(Schema.Number),
  ct: Schema.optional(Schema.Number),
  error: Schema.optional(Schema.String)
}))

/** A worker as registered (`workers` hash, JSON per name). */
const StoredWorker = Schema.fromJsonString(Schema.Struct({
  params: Schema.Record(Schema.String, Schema.Unknown),
  model: Schema.Record(Schema.String, Schema.Unknown),
  maxBatch: Schema.Number
}))

/** What a stored request must hold for AIME's job fields; the rest travels as is (`chorus_request`). */
const StoredRequest = Schema.fromJsonString(Schema.Struct({
  input: Schema.Union([
    Schema.Struct({ type: Schema.Literal("chat"), messages: Schema.Array(Schema.Unknown) }),
    Schema.Struct({ type: Schema.Literal("text"), text: Schema.String }),
    Schema.Struct({ type: Schema.Literal("tokens"), tokenIds: Schema.Array(Schema.Number) })
  ]),
  maxTokens: Schema.optional(Schema.Number),
  sampling: Schema.optional(Schema.Record(Schema.String, Schema.Unknown))
}))

/** The shared AIME job operations (the AIME routes' job table over Redis). */
export interface SharedJobs {
  /** Queues a job for an AIME client; `aime` is the AIME job info, stored with it. Returns the job id. */
  readonly submit: (request: GenerateRequest, aime: string) => Effect.Effect<string, EngineError | QueueError>
  readonly read: (id: string) => Effect.Effect<StoredJob | undefined, QueueError>
  /** 1-based position among waiting jobs; 0 when not waiting. */
  readonly position: (id: string) => Effect.Effect<number, QueueError>
  /**
   * True when this poll carries the result: the first poll after the end, or a poll at another replica within a
   * minute of it (the first answer may have died with its replica).
   */
  readonly handOut: (id: string) => Effect.Effect<boolean, QueueError>
  /** The state before the cancel ('' for an unknown job). */
  readonly cancel: (id: string) => Effect.Effect<string, QueueError>
  /** Waits until the job ended. */
  readonly awaitEnd: (id: string) => Effect.Effect<void, QueueError>
  readonly onlineWorkers: Effect.Effect<number, QueueError>
}

export interface RedisWorkerQueue extends WorkerQueue {
  readonly kind: "redis"
  readonly shared: SharedJobs
  /** The connection, for the other shared state (AIME session keys). */
  readonly connection: RedisConnection["Service"]
  /** The key prefix of this endpoint's queue. */
  readonly prefix: string
}

/** Whether a worker queue is the Redis one (it then also shares AIME jobs and sessions). */
export const isRedisQueue = (queue: WorkerQueue): queue is RedisWorkerQueue => queue.kind === "redis" && "shared" in queue

/** How long after an AIME result was handed out a poll at another replica gets it again. */
const HAND_OUT_WINDOW_MS = 60_000

const flat = (r: RedisReply): ReadonlyArray<RedisReply> => (Array.isArray(r) ? r : [])
const pairs = (r: RedisReply): Record<string, string> => {
  const a = flat(r)
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < a.length; i += 2) out[String(a[i])] = String(a[i + 1])
  return out
}
const decodeJob = Schema.decodeUnknownExit(StoredJob)
const decodeWorker = Schema.decodeUnknownExit(StoredWorker)
const decodeRequest = Schema.decodeUnknownExit(StoredRequest)

/** The token part of a progress post or result, as the Lua scripts take it. */
const tokensOf = (data: Obj): Obj => {
  const pt = int(data["chorus_prompt_tokens"]) ?? int(data["prompt_length"]) ?? 0
  const t = data["chorus_tokens"]
  if (isObj(t) && Array.isArray(t["ids"]) && Array.isArray(t["texts"])) {
    return { pt, from: int(t["from"]) ?? 0, ids: t["ids"].filter((x): x is number => typeof x === "number"), texts: t["texts"].map((x) => String(x)) }
  }
  if (typeof data["text"] === "string") return { pt, text: data["text"] }
  return { pt }
}

export const makeRedisWorkerQueue = (options: RedisWorkerQueueOptions): Effect.Effect<RedisWorkerQueue, never, RedisConnection | Scope.Scope> =>
  Effect.gen(function*() {
    const redis = yield* RedisConnection
    const timeoutMs = options.workerTimeoutMs ?? 30_000
    const pollWaitMs = Math.max(50, Math.min(options.pollWaitMs ?? 10_000, timeoutMs))
    const jobType = options.jobType ?? "llama3"
    const endpoint = options.endpoint ?? "llama3_chat"
    const maxQueue = options.maxQueue ?? 1024
    const defaultDeadline = options.timeoutMs ?? Number.POSITIVE_INFINITY
    const ttl = String(options.resultLifetimeMs ?? 900_000)
    const observer: EngineObserver = options.observer ?? silentObserver
    const calls = makeWorkerCalls({ workerKeys: options.workerKeys, jobType, pollWaitMs })
    const P = `chorus:${endpoint}:`
    /** This replica, as the AIME hand-out records it. */
    const replica = randomUUID()
    const fanout: JobEventFanout = yield* makeJobEventFanout(P)

    // ---- what this replica knows -------------------------------------------------------------------------

    /** Jobs whose client is connected to this replica, by request id (for `queuePosition`, `job`, stats). */
    const local = new Map<number, FollowedJob>()
    let nextRequest = 1
    /** Refreshed every tick: the registered workers, for the model's name, capacity and `/api/endpoints`. */
    let cachedWorkers: ReadonlyArray<WorkerDescription> = []
    const known = new Set<string>()
    const stats = { numSteps: 0, numBatchedSteps: 0, promptTokens: 0, generatedTokens: 0 }

    const online = () => cachedWorkers.filter((w) => w["state"] !== "offline")
    const maxSeqs = () => Math.max(1, online().reduce((n, w) => n + (typeof w["max_batch_size"] === "number" ? w["max_batch_size"] : 1), 0))

    const script = (s: Parameters<typeof redis.script>[0], ...args: ReadonlyArray<string>) => redis.script(s, [], [P, ...args])
    const now = () => String(Date.now())
    const asEngineError = (e: QueueError) => new GenerationError({ message: e.message })

    // ---- the job side ------------------------------------------------------------------------------------

    const submitJob = (request: GenerateRequest, aime: string): Effect.Effect<string, EngineError | QueueError> =>
      Effect.gen(function*() {
        if (request.promptLogits !== undefined && request.promptLogits !== "none") {
          observer.failed("validation_error")
          return yield* Effect.fail(new ValidationError({ field: "prompt_logits", message: "prompt logits are not available through remote workers" }))
        }
        // A fixed seed: a job re-queued after its worker timed out generates the same tokens on the next worker.
        const seed = request.sampling?.seed ?? Math.floor(Math.random() * 2 ** 31)
        const fixed: GenerateRequest = { ...request, sampling: { ...request.sampling, seed } }
        const id = newJobId()
        const t = Date.now()
        const deadline = t + Math.min(request.timeoutMs ?? Number.POSITIVE_INFINITY, defaultDeadline)
        const ok = yield* script(submitScript, id, JSON.stringify(fixed), String(t), Number.isFinite(deadline) ? String(deadline) : "+inf", aime, String(maxQueue))
        if (ok !== 1) {
          observer.failed("overloaded")
          return yield* Effect.fail(new Overloaded({ maxQueue, message: `the queue is full (${maxQueue} requests waiting); retry later` }))
        }
        observer.queued()
        return id
      })

    const cancel = (id: string) => script(cancelScript, id, now(), ttl).pipe(Effect.map((r) => String(r ?? "")))

    const followContext: FollowContext = {
      prefix: P,
      fanout,
      observer,
      local,
      nextRequestId: () => nextRequest++,
      stats,
      cancel
    }

    const submit = (request: GenerateRequest): Effect.Effect<Stream.Stream<GenerationEvent, EngineError>, EngineError> =>
      // The engine's errors are the core's: Redis away is a generation error for the OpenAI routes (500).
      Effect.map(Effect.mapError(submitJob(request, ""), (e) => (e._tag === "QueueError" ? asEngineError(e) : e)), (id) => followJob(followContext, id, Math.min(request.timeoutMs ?? Number.POSITIVE_INFINITY, defaultDeadline)))

    // ---- the worker side ---------------------------------------------------------------------------------

    const unavailable = (e: QueueError) => reply(503, { cmd: "error", success: false, msg: e.message, error_msg: e.message })

    const register = (name: string, params: Obj, model: Obj, maxBatch: number) =>
      Effect.gen(function*() {
        const t = now()
        yield* redis.command(["HSET", `${P}workers`, name, JSON.stringify({ params, model, maxBatch })])
        yield* redis.command(["HSET", `${P}last`, name, t])
        yield* redis.command(["ZADD", `${P}seen`, t, name])
        known.add(name)
      })

    /** A call from a live worker: it is seen now (`XX`: a worker that timed out comes back only by polling). */
    const touch = (name: string, poll: boolean) =>
      Effect.gen(function*() {
        const t = now()
        const commands = poll
          ? [["HSET", `${P}last`, name, t], ["ZADD", `${P}seen`, t, name], ["SREM", `${P}offline`, name]]
          : [["HSET", `${P}last`, name, t], ["ZADD", `${P}seen`, "XX", t, name]]
        yield* Effect.forEach(commands, redis.command, { concurrency: "unbounded", discard: true })
      })

    const login = (body: unknown): Effect.Effect<Reply, QueueError> =>
      Effect.gen(function*() {
        const r = calls.login(body)
        if (isReply(r)) return r
        yield* register(r.name, r.params, r.model, r.maxBatch)
        return calls.loginAccepted()
      })

    /** Validates a worker call: the key, then the worker (registered, or auto-logged-in from legacy fields). */
    const authenticate = (body: Obj, autoLogin: boolean): Effect.Effect<string | Reply, QueueError> =>
      Effect.gen(function*() {
        const name = calls.caller(body)
        if (typeof name !== "string") return name
        // A poll always asks Redis (a registry lost with a Redis restart is rebuilt by the next polls' auto-login);
        // progress and results trust what this replica saw before.
        if ((!autoLogin && known.has(name)) || (yield* redis.command(["HEXISTS", `${P}workers`, name])) === 1) {
          known.add(name)
          return name
        }
        const r = calls.autoLogin(name, body, autoLogin)
        if (isReply(r)) return r
        yield* register(r.name, r.params, r.model, r.maxBatch)
        return name
      })

    interface TakenJob {
      readonly id: string
      readonly request: string
      readonly submitted: number
    }
    interface Waiter {
      readonly worker: string
      readonly max: number
      readonly resume: (jobs: ReadonlyArray<TakenJob>) => void
    }
    /** This replica's long polls, first come first served; jobs are taken for them atomically in Redis. */
    const waiters: Array<Waiter> = []
    const dispatching = yield* Semaphore.make(1)
    const dispatch = dispatching.withPermit(Effect.gen(function*() {
      while (waiters.length > 0) {
        const waiter = waiters.shift()!
        const r = flat(yield* script(takeScript, waiter.worker, String(waiter.max), now()).pipe(
          Effect.catchTag("QueueError", (e) => Effect.as(Effect.logWarning(`chorus: ${e.message}`), [] as ReadonlyArray<RedisReply>))
        ))
        if (r.length === 0) {
          waiters.unshift(waiter)
          return
        }
        const jobs: Array<TakenJob> = []
        for (let i = 0; i + 2 < r.length; i += 3) jobs.push({ id: String(r[i]), request: String(r[i + 1]), submitted: Number(r[i + 2]) })
        stats.numSteps++
        if (jobs.length > 1) stats.numBatchedSteps++
        waiter.resume(jobs)
      }
    }))

    const jobCommand = (batch: ReadonlyArray<TakenJob>): Obj => ({
      cmd: "job",
      endpoint_name: endpoint,
      input_descriptions: parameterDescription.input,
      progress_output_descriptions: parameterDescription.progress.OUTPUTS,
      final_output_descriptions: parameterDescription.output,
      job_data: batch.map((job) => {
        const decoded = decodeRequest(job.request)
        const request: Obj = JSON.parse(job.request) as Obj
        return {
          job_id: job.id,
          start_time: job.submitted / 1000,
          start_time_compute: Date.now() / 1000,
          ...(decoded._tag === "Success" ? aimeFields(decoded.value as GenerateRequest) : {}),
          wait_for_result: false,
          chorus_request: request
        }
      })
    })

    const jobRequest = (body: unknown): Effect.Effect<Reply, QueueError> =>
      Effect.gen(function*() {
        if (!isObj(body)) return reply(400, { cmd: "error", msg: "the body must be a JSON object" })
        const max = body["max_job_batch"]
        if (max !== undefined && (int(max) === undefined || (max as number) < 1)) return reply(400, { cmd: "error", msg: "max_job_batch must be an integer >= 1" })
        const w = yield* authenticate(body, true)
        if (typeof w !== "string") return w
        const wanted = int(max) ?? 1
        yield* touch(w, true)
        yield* redis.command(["HSET", `${P}free`, w, String(wanted)])
        let resume: (jobs: ReadonlyArray<TakenJob>) => void = () => {}
        const taken = new Promise<ReadonlyArray<TakenJob>>((r) => (resume = r))
        const waiter: Waiter = { worker: w, max: wanted, resume }
        waiters.push(waiter)
        polling.set(waiter, w)
        yield* dispatch
        const batch = yield* Effect.promise(() => taken).pipe(
          Effect.timeoutOption(pollWaitMs),
          // Gone from the list under the dispatch permit means taken: its jobs are this poll's, so wait for them.
          Effect.flatMap((o) =>
            o._tag === "Some"
              ? Effect.succeed(o.value)
              : dispatching.withPermit(Effect.sync(() => {
                const i = waiters.indexOf(waiter)
                if (i >= 0) waiters.splice(i, 1)
                return i >= 0
              })).pipe(Effect.flatMap((waiting) => (waiting ? Effect.succeed([] as ReadonlyArray<TakenJob>) : Effect.promise(() => taken))))
          ),
          Effect.ensuring(Effect.sync(() => polling.delete(waiter))),
          // The worker hung up while it waited: a waiter still listed is dropped; jobs already taken go back.
          Effect.onInterrupt(() =>
            dispatching.withPermit(Effect.sync(() => {
              const i = waiters.indexOf(waiter)
              if (i >= 0) waiters.splice(i, 1)
              return i >= 0
            })).pipe(
              Effect.flatMap((waiting) => (waiting ? Effect.void : Effect.promise(() => taken).pipe(
                Effect.flatMap((jobs) => script(returnScript, w, ...jobs.map((j) => j.id))),
                Effect.ignore
              )))
            )
          )
        )
        yield* touch(w, true)
        return batch.length === 0 ? reply(200, { cmd: "no_job" }) : reply(200, jobCommand(batch))
      })
    /** Workers in a long poll here: alive, though silent (the tick keeps them seen). */
    const polling = new Map<Waiter, string>()

    const own = (status: number, id: string, worker: string): Reply | undefined => {
      switch (status) {
        case 200:
          return undefined
        case 299:
          return reply(200, { success: true, canceled: true })
        case 404:
          return reply(404, { success: false, error_msg: `Job with job id ${id} not found`, canceled: true })
        default:
          return reply(409, { success: false, error_msg: `Job with job id ${id} is not running on worker ${worker}`, canceled: true })
      }
    }

    const progressItem = (item: unknown): Effect.Effect<Reply, QueueError> =>
      Effect.gen(function*() {
        if (!isObj(item)) return reply(400, { success: false, error_msg: "a progress item must be a JSON object" })
        const data = item["progress_data"]
        if (data !== undefined && !isObj(data)) return reply(400, { success: false, error_msg: "progress_data must be an object" })
        const withAuth = item["auth"] === undefined && isObj(data) ? { ...item, auth: data["auth"] } : item
        const w = yield* authenticate(withAuth, false)
        if (typeof w !== "string") return w
        const id = item["job_id"]
        if (typeof id !== "string" || id === "") return reply(400, { success: false, error_msg: "job_id is required" })
        yield* touch(w, false)
        const status = yield* script(progressScript, id, w, now(), JSON.stringify(tokensOf(data ?? {})))
        return own(Number(status), id, w) ?? reply(200, { success: true })
      })

    const progress = (body: unknown): Effect.Effect<Reply, QueueError> =>
      Effect.gen(function*() {
        if (Array.isArray(body)) {
          if (body.length === 0) return reply(400, { success: false, error_msg: "empty progress batch" })
          const replies = yield* Effect.forEach(body, progressItem)
          const failed = replies.find((r) => r.status !== 200)
          return reply(failed?.status ?? 200, replies.map((r) => r.body))
        }
        return yield* progressItem(body)
      })

    const result = (body: unknown): Effect.Effect<Reply, QueueError> =>
      Effect.gen(function*() {
        if (!isObj(body)) return reply(400, { cmd: "error", msg: "the body must be a JSON object (one job's result)" })
        const w = yield* authenticate(body, false)
        if (typeof w !== "string") return w
        const id = body["job_id"]
        if (typeof id !== "string" || id === "") return reply(400, { cmd: "warning", msg: "job_id is required" })
        yield* touch(w, false)
        const error = body["error"]
        const finishReason = body["finish_reason"] === "length" ? "length" : "stop"
        const stop = str(body["chorus_stop_reason"])
        const d = {
          ...tokensOf(body),
          full: str(body["text"]),
          fr: finishReason,
          sr: stop === "eos" || stop === "stop_string" || stop === "max_tokens" || stop === "context" ? stop : finishReason === "length" ? "max_tokens" : "eos",
          ptk: int(body["prompt_length"]) ?? int(body["chorus_prompt_tokens"]) ?? 0,
          ct: int(body["num_generated_tokens"]),
          error: typeof error === "string" && error !== "" ? error : undefined
        }
        const status = Number(yield* script(resultScript, id, w, now(), ttl, JSON.stringify(d)))
        if (status === 299) return reply(200, { cmd: "ok" })
        const refused = own(status, id, w)
        if (refused !== undefined) return reply(refused.status, { cmd: "warning", msg: (refused.body as Obj)["error_msg"] })
        return reply(200, { cmd: "ok" })
      })

    const checkStatus = (body: unknown): Effect.Effect<Reply, QueueError> =>
      Effect.gen(function*() {
        if (!isObj(body)) return reply(400, { error: "the body must be a JSON object" })
        const auth = str(body["auth"])
        const keyValid = calls.keyOk(body["auth_key"])
        const registered = auth !== undefined && (known.has(auth) || (yield* redis.command(["HEXISTS", `${P}workers`, auth])) === 1)
        // From a registered worker with its key, this is a heartbeat (chorus worker sends one while its slots are busy).
        if (registered && keyValid) yield* touch(auth, false)
        return reply(200, {
          cmd: "ok",
          msg: "API server online",
          logged_in: registered && keyValid,
          job_type_present: body["job_type"] === undefined || body["job_type"] === jobType,
          key_valid: keyValid
        })
      })

    const describeWorkers: Effect.Effect<ReadonlyArray<WorkerDescription>, QueueError> = Effect.gen(function*() {
      const all = pairs(yield* redis.command(["HGETALL", `${P}workers`]))
      const last = pairs(yield* redis.command(["HGETALL", `${P}last`]))
      const free = pairs(yield* redis.command(["HGETALL", `${P}free`]))
      const offline = new Set(flat(yield* redis.command(["SMEMBERS", `${P}offline`])).map(String))
      const out: Array<WorkerDescription> = []
      // Concurrent commands share one round trip (the client pipelines them).
      const names = Object.keys(all)
      const counts = yield* Effect.forEach(names, (name) => redis.command(["SCARD", `${P}run:${name}`]), { concurrency: "unbounded" })
      const runningOf = new Map(names.map((name, i) => [name, Number(counts[i])]))
      for (const [name, json] of Object.entries(all)) {
        const w = decodeWorker(json)
        if (w._tag === "Failure") continue
        const running = runningOf.get(name) ?? 0
        const state = offline.has(name) ? "offline" : running > 0 ? "busy" : "online"
        const { params, model } = w.value
        out.push({
          name,
          state: state === "busy" ? "processing" : state === "offline" ? "offline" : "waiting",
          chorus_state: state,
          max_batch_size: Math.max(w.value.maxBatch, Number(free[name] ?? 0) + running),
          free_slots: Number(free[name] ?? 0),
          running_jobs: running,
          gpu_name: params["gpu_name"] ?? "Unknown",
          num_gpus: params["num_gpus"] ?? 1,
          framework: params["framework"] ?? "Unknown",
          framework_version: params["framework_version"] ?? "Unknown",
          pytorch_version: params["pytorch_version"] ?? "Unknown",
          last_seen: Number(last[name] ?? 0) / 1000,
          chorus_model_id: params["chorus_model_id"] ?? model["label"],
          chorus_context_length: params["chorus_context_length"],
          model: {
            label: model["label"] ?? "Unknown",
            quantization: model["quantization"] ?? "Unknown",
            size: model["size"] ?? "Unknown",
            family: model["family"] ?? "Unknown",
            type: model["type"] ?? "Unknown",
            repo_name: model["repo_name"] ?? "Unknown"
          }
        })
      }
      return out
    })

    // ---- the watchdog ------------------------------------------------------------------------------------

    let tickFailing = false
    const tick = Effect.gen(function*() {
      const t = now()
      for (const w of new Set(polling.values())) yield* redis.command(["ZADD", `${P}seen`, t, w])
      yield* script(sweepScript, t, String(timeoutMs), ttl)
      cachedWorkers = yield* describeWorkers
      options.onChange?.({
        connecting: 0,
        online: cachedWorkers.filter((w) => w["chorus_state"] === "online").length,
        busy: cachedWorkers.filter((w) => w["chorus_state"] === "busy").length,
        offline: cachedWorkers.filter((w) => w["chorus_state"] === "offline").length
      })
      yield* dispatch
    }).pipe(
      Effect.tap(() => Effect.sync(() => (tickFailing = false))),
      // One line per outage, not one per tick.
      Effect.catchTag("QueueError", (e) =>
        (tickFailing ? Effect.void : Effect.logWarning(`chorus: ${e.message}`)).pipe(Effect.tap(() => Effect.sync(() => (tickFailing = true))))
      )
    )
    yield* redis.subscribe(`${P}wake`, () => {
      Effect.runFork(dispatch)
    }).pipe(Effect.orDie)
    yield* tick
    yield* Effect.forkScoped(Effect.forever(Effect.sleep(Math.max(20, Math.min(1000, timeoutMs / 4))).pipe(Effect.andThen(tick))))

    const engine: RemoteEngineService = {
      get model() {
        const w = online().find((x) => typeof x["chorus_model_id"] === "string")
        const ctx = w?.["chorus_context_length"]
        return {
          id: typeof w?.["chorus_model_id"] === "string" ? w["chorus_model_id"] : "remote",
          contextLength: typeof ctx === "number" ? ctx : options.contextLength ?? 8192,
          vocabSize: 0
        }
      },
      codec: undefined as never,
      submit,
      generate: (request) => Stream.unwrap(submit(request)),
      queuePosition: (requestId) => {
        const job = local.get(requestId)
        return job === undefined ? -1 : job.machine.state() === "queued" ? 1 : 0
      },
      job: (requestId) => local.get(requestId)?.machine,
      // This replica's clients: what SIGTERM's drain waits for.
      stats: Effect.sync(() => {
        const jobs = [...local.values()]
        const waiting = jobs.filter((j) => j.machine.state() === "queued").length
        return {
          numRunning: jobs.length - waiting,
          numWaiting: waiting,
          maxNumSeqs: maxSeqs(),
          ...stats,
          ...remoteEngineStats
        }
      }),
      shards: [],
      get capacity() {
        return remoteEngineCapacity(maxSeqs())
      }
    }

    const orUnavailable = (f: (body: unknown) => Effect.Effect<Reply, QueueError>) => (body: unknown) =>
      f(body).pipe(Effect.catchTag("QueueError", (e) => Effect.succeed(unavailable(e))))

    const shared: SharedJobs = {
      submit: submitJob,
      read: (id) =>
        Effect.map(redis.command(["HGETALL", `${P}job:${id}`]), (r) => {
          const decoded = decodeJob(pairs(r))
          return decoded._tag === "Success" ? decoded.value : undefined
        }),
      position: (id) => Effect.map(redis.command(["LPOS", `${P}pending`, id]), (r) => (typeof r === "number" ? r + 1 : 0)),
      handOut: (id) => Effect.map(script(handOutScript, id, replica, now(), String(HAND_OUT_WINDOW_MS)), (r) => r === 1),
      cancel,
      awaitEnd: (id) =>
        Effect.scoped(Effect.gen(function*() {
          let done: () => void = () => {}
          const ended = new Promise<void>((r) => (done = r))
          yield* fanout.watch(`${P}ev:${id}`, (e) => {
            if (e.t === "f" || e.t === "x" || e.t === "c") {
              done()
              return false
            }
            return true
          })
          // Ended before the watch began (or its stream expired): the hash says so.
          const st = flat(yield* redis.command(["HMGET", `${P}job:${id}`, "st"]))[0]
          if (st !== "queued" && st !== "running") return
          yield* Effect.promise(() => ended)
        })),
      onlineWorkers: Effect.map(redis.command(["ZCARD", `${P}seen`]), Number)
    }

    return {
      kind: "redis",
      engine,
      login: orUnavailable(login),
      jobRequest: orUnavailable(jobRequest),
      progress: orUnavailable(progress),
      result: orUnavailable(result),
      checkStatus: orUnavailable(checkStatus),
      describeWorkers: describeWorkers.pipe(Effect.catchTag("QueueError", () => Effect.succeed(cachedWorkers))),
      jobType,
      unavailable: redis.command(["PING"]).pipe(
        Effect.timeoutOrElse({ duration: "1 second", orElse: () => Effect.fail(new QueueError({ message: "the queue (Redis) did not answer PING within 1 s" })) }),
        Effect.as(undefined),
        Effect.catchTag("QueueError", (e) => Effect.succeed(e.message))
      ),
      shared,
      connection: redis,
      prefix: P
    }
  })
