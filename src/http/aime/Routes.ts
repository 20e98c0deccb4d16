/**
 * AIME API server compatible routes (client side of the protocol; Chorus runs the model itself, so there are no
 * worker routes): job submission `/<ep>`, `/<ep>/progress`, `/<ep>/login`, `/<ep>/cancel` (a Chorus extension),
 * `/api/validate_key`, `/api/endpoints`, `/api/endpoints/<ep>` and its alias `/api/<ep>`. All answer GET and POST.
 * Thin: read parameters, authenticate, decode, hand the engine stream to the job table, encode. See docs/api.md.
 *
 * Where the edge checks happen: the protocol carries credentials (`key`, `client_session_auth_key`) among the
 * parameters, in the query or the JSON body, so unlike the OpenAI routes (which authenticate from the headers
 * before reading a byte) these read the body first. That read is bounded all the same: the size limit holds while
 * the body streams in and the nesting limit before it is parsed (JsonBody.ts); authentication then comes before
 * any parameter is decoded or any work reaches the engine. Keys are compared in constant time (ApiKeys.ts).
 *
 * @since 0.1.0
 */
import { Clock, Effect } from "effect"
import { createHash } from "node:crypto"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { describeValue } from "../ChatInput.ts"
import { readJsonBody } from "../JsonBody.ts"
import { Unauthorized, UnknownJob } from "../ServerErrors.ts"
import { Serving } from "../Serving.ts"
import { type AimeError, AimeInputError, JobCanceled, JobLapsed, toAimeError } from "./Errors.ts"
import type { QueueError } from "../queue/RedisConnection.ts"
import { isRedisQueue } from "../queue/RedisWorkerQueue.ts"
import { type EngineView, type JobState, makeJobTable, type PollAnswer } from "./Jobs.ts"
import { type AimeJobStore, localJobStore, sharedJobStore } from "./JobStore.ts"
import { localSessionStore, redisSessionStore } from "./SessionStore.ts"
import { makeSessionTable } from "./Sessions.ts"
import { coerceQuery, type Credentials, credentialsOf, decodeJobInput, EP_VERSION, parameterDescription } from "./Schemas.ts"

/** @category models */
export interface AimeRoutesOptions {
  /** How long an ended job stays pollable. Default 900 s, as the reference. */
  readonly resultLifetimeMs?: number
  /** Reported as `max_queue_length` (the engine's `maxQueue`). Default 1024, the engine's default. */
  readonly maxQueue?: number
  /** Reported as `max_time_in_queue` in seconds (the engine's `timeoutMs`). Default: none (null). */
  readonly timeoutMs?: number
  /** Idle time after which a session key (`/<ep>/login`) stops working; every use renews it. Default 1 h. */
  readonly sessionTtlMs?: number
  /** Live session keys per API key; a login beyond it drops that key's least recently used one. Default 1,000. */
  readonly maxSessionsPerKey?: number
}

const WORKER_NAME = "chorus"
const WORKER_VERSION = "chorus 0.1.0"
const KEY_NOT_VALID = "Key not valid"
const NO_CREDENTIALS = "API Key missing and client session authentication key not registered in API Server"

const json = (body: unknown, status = 200) => HttpServerResponse.jsonUnsafe(body, { status })

const wireState = (state: JobState) => (state === "finished" ? "done" : state)

/** Query parameters, plus the JSON body of a POST that has one (body wins). */
const readParams = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const params = coerceQuery(yield* HttpServerRequest.ParsedSearchParams)
  const length = request.headers["content-length"]
  const hasBody = length === undefined ? request.headers["transfer-encoding"] !== undefined : length !== "0"
  if (request.method !== "POST" || !hasBody) return params
  const body = yield* readJsonBody
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return yield* Effect.fail(new AimeInputError({ messages: [`the request body must be a JSON object of parameters, got ${describeValue(body)}`] }))
  }
  return { ...params, ...(body as Record<string, unknown>) }
})

/** Only the query string counts (login, validate_key, endpoints), as in the reference. */
const queryKey = Effect.map(HttpServerRequest.ParsedSearchParams, (q) => {
  const v = q["key"]
  return typeof v === "string" ? v : v?.[0]
})

/** Who a key is, as jobs and sessions record it: a hash, so that no store (Redis included) holds API keys. */
const identityOf = (key: string) => createHash("sha256").update(key).digest("base64url")

const handle = <R>(effect: Effect.Effect<HttpServerResponse.HttpServerResponse, AimeError | QueueError, R>) =>
  effect.pipe(
    Effect.catchTag("QueueError", (e) => Effect.succeed(json({ success: false, error: e.message, ep_version: EP_VERSION }, 503))),
    Effect.catch((e: AimeError) => {
      const { status, body } = toAimeError(e, EP_VERSION)
      return Effect.succeed(json(body, status))
    })
  )

export const AimeRoutes = (endpoint: string, options: AimeRoutesOptions = {}) =>
  HttpRouter.use(Effect.fn(function*(router) {
    const { shutdown, queue } = yield* Serving
    const sessionTtlMs = options.sessionTtlMs ?? 3_600_000
    const maxPerKey = options.maxSessionsPerKey ?? 1000
    // With the queue in Redis, jobs and sessions are shared by every replica; otherwise they live here.
    const shared = queue !== undefined && isRedisQueue(queue) ? queue : undefined
    const jobs: AimeJobStore = shared !== undefined
      ? sharedJobStore(shared.shared, { epVersion: EP_VERSION, workerVersion: WORKER_VERSION, shutdown })
      : localJobStore(yield* makeJobTable({
        shutdown,
        epVersion: EP_VERSION,
        resultLifetimeMs: options.resultLifetimeMs ?? 900_000,
        workerName: WORKER_NAME,
        workerVersion: WORKER_VERSION
      }))
    /** client_session_auth_key -> the identity of the API key it was issued for (undefined on an open server without a key). */
    const sessions = shared !== undefined
      ? redisSessionStore(shared.connection, { ttlMs: sessionTtlMs, maxPerKey, prefix: shared.prefix })
      : localSessionStore(makeSessionTable({ ttlMs: sessionTtlMs, maxPerKey }))
    // Expired sessions also go on use; the sweep bounds the memory of sessions nobody uses again.
    yield* Effect.forkScoped(Effect.forever(
      Effect.sleep(Math.max(10, Math.min(60_000, sessionTtlMs / 2))).pipe(
        Effect.andThen(Clock.currentTimeMillis),
        Effect.flatMap((now) => sessions.sweep(now))
      )
    ))
    const sessionKey = (session: string) => Effect.flatMap(Clock.currentTimeMillis, (now) => sessions.resolve(session, now))

    const keyValid = (key: string | undefined) =>
      Serving.use((serving) => Effect.succeed(serving.isOpen || (key !== undefined && serving.isKey(key))))

    /** The API key a request acts for: `key` first, else a registered session key (reference §2.2). */
    const identify = (c: Credentials) =>
      Effect.gen(function*() {
        const serving = yield* Serving
        const key = c.key === "" ? undefined : c.key
        const session = c.session === "" || c.session === undefined ? undefined : c.session
        if (key !== undefined && !serving.isOpen && !serving.isKey(key)) return yield* Effect.fail(new Unauthorized({ message: KEY_NOT_VALID }))
        if (key !== undefined) return identityOf(key)
        const resolved = session === undefined ? undefined : yield* sessionKey(session)
        if (resolved?.found === true) return resolved.apiKey
        if (serving.isOpen) return undefined
        return yield* Effect.fail(new Unauthorized({ message: NO_CREDENTIALS }))
      })

    /** The job named by `job_id`, if the caller may see it: on a server with keys, only its owner may. */
    const ownJob = (params: Record<string, unknown>) =>
      Effect.gen(function*() {
        const jobId = params["job_id"]
        if (typeof jobId !== "string" || jobId === "") return yield* Effect.fail(new UnknownJob({ jobId: "", message: "No job_id given" }))
        const identity = yield* identify(credentialsOf(params))
        const serving = yield* Serving
        const job = yield* jobs.owner(jobId)
        if (job === undefined || (!serving.isOpen && job.owner !== identity)) {
          return yield* Effect.fail(new UnknownJob({ jobId, message: `Client has no active request with this job id ${jobId}` }))
        }
        return { id: jobId }
      })

    const engineView = Effect.gen(function*() {
      const serving = yield* Serving
      const engine = yield* Effect.option(serving.loadedEngine)
      if (engine._tag === "None") return undefined
      const stats = yield* engine.value.stats
      const view: EngineView = { queuePosition: engine.value.queuePosition, maxBatch: stats.maxNumSeqs }
      return view
    })

    const encodePoll = (jobId: string, answer: PollAnswer) => {
      const head = { success: true, job_id: jobId, ep_version: EP_VERSION }
      switch (answer.state) {
        case "done":
          return json(answer.result === undefined ? { ...head, job_state: "done" } : { ...head, job_result: answer.result, job_state: "done" })
        case "lapsed":
          return json({ success: false, error: new JobLapsed({ jobId, endpoint }).message, ep_version: EP_VERSION, job_state: "lapsed", progress: answer.progress }, 400)
        default:
          return json({ ...head, job_state: answer.state, progress: answer.progress })
      }
    }

    const submit = Effect.gen(function*() {
      const params = yield* readParams
      const owner = yield* identify(credentialsOf(params))
      const input = yield* decodeJobInput(params)
      const serving = yield* Serving
      const engine = yield* serving.engine
      // As in the reference, a chat is cut from the front to leave max_gen_tokens of room; a max_gen_tokens that
      // fills the whole context means "until the context ends" (the prompt keeps its room) instead of an error.
      const limit = engine.model.contextLength - 1
      const maxTokens = Math.min(input.maxGenTokens, limit)
      const request = { input: input.input, sampling: input.sampling, ...(input.maxGenTokens >= limit ? {} : { maxTokens }) }
      const id = yield* jobs.submit(engine, request, { owner, maxTokens, modelName: engine.model.id, maxSeqLen: engine.model.contextLength })
      const job = { id }
      if (!input.waitForResult) return json({ success: true, job_id: job.id, ep_version: EP_VERSION })
      // The job belongs to the table (or the shared queue): if this client goes away, it runs on and its result stays pollable.
      const outcome = yield* jobs.await(job.id)
      switch (outcome._tag) {
        case "Result":
          return json(outcome.result)
        case "Lapsed":
          return yield* Effect.fail(new JobLapsed({ jobId: job.id, endpoint }))
        case "Canceled":
          return yield* Effect.fail(new JobCanceled({ jobId: job.id, endpoint }))
      }
    })

    const progress = Effect.gen(function*() {
      const job = yield* ownJob(yield* readParams)
      const view = yield* engineView
      const answer = yield* jobs.poll(job.id, view)
      if (answer === undefined) {
        return yield* Effect.fail(new UnknownJob({ jobId: job.id, message: `Client has no active request with this job id ${job.id}` }))
      }
      return encodePoll(job.id, answer)
    })

    const cancel = Effect.gen(function*() {
      const job = yield* ownJob(yield* readParams)
      const state = yield* jobs.cancel(job.id)
      return json({ success: true, job_id: job.id, ep_version: EP_VERSION, job_state: wireState(state ?? "canceled") })
    })

    const login = Effect.gen(function*() {
      const key = yield* queryKey
      if (!(yield* keyValid(key))) return json({ success: false, error: KEY_NOT_VALID })
      const session = yield* sessions.issue(key === "" || key === undefined ? undefined : identityOf(key), yield* Clock.currentTimeMillis)
      return json({ success: true, ep_version: EP_VERSION, client_session_auth_key: session, key: key ?? null })
    })

    const validateKey = Effect.gen(function*() {
      const valid = yield* keyValid(yield* queryKey)
      return json({ success: valid, error: valid ? null : KEY_NOT_VALID })
    })

    const endpoints = Effect.gen(function*() {
      const key = yield* queryKey
      if (key !== undefined && !(yield* keyValid(key))) return json({ error: KEY_NOT_VALID }, 401)
      return json({ endpoints: [endpoint] })
    })

    const details = Effect.gen(function*() {
      const serving = yield* Serving
      const status = yield* serving.status
      const engine = yield* Effect.option(serving.loadedEngine)
      const stats = engine._tag === "Some" ? yield* engine.value.stats : undefined
      const active = status === "ready" && stats !== undefined
      const maxQueue = options.maxQueue ?? 1024
      const remote = serving.queue === undefined ? undefined : yield* serving.queue.describeWorkers
      const online = remote?.filter((w) => w["state"] !== "offline").length
      return json({
        name: endpoint,
        title: "Llama 3 Chat",
        description: "Llama 3 Instruct chat served by Chorus",
        category: "chat",
        http_methods: ["GET", "POST"],
        version: EP_VERSION,
        max_queue_length: maxQueue,
        max_time_in_queue: options.timeoutMs === undefined ? null : options.timeoutMs / 1000,
        free_queue_slots: Math.max(0, maxQueue - (stats?.numWaiting ?? 0)),
        num_active_workers: online ?? (active ? 1 : 0),
        num_workers: remote?.length ?? 1,
        workers: remote ?? [{
          name: WORKER_NAME,
          state: !active ? "offline" : stats.numRunning > 0 ? "processing" : "waiting",
          max_batch_size: stats?.maxNumSeqs ?? 0,
          free_slots: stats === undefined ? 0 : stats.maxNumSeqs - stats.numRunning,
          gpu_name: "CPU",
          num_gpus: 0,
          framework: "ONNX Runtime",
          framework_version: "Unknown",
          pytorch_version: "Unknown",
          model: {
            label: engine._tag === "Some" ? engine.value.model.id : "Unknown",
            quantization: "Unknown",
            size: "Unknown",
            family: "Llama 3",
            type: "LLM",
            repo_name: engine._tag === "Some" ? engine.value.model.id : "Unknown",
            context_length: engine._tag === "Some" ? engine.value.model.contextLength : null
          }
        }],
        parameter_description: parameterDescription
      })
    })

    const both = (path: `/${string}`, handler: Effect.Effect<HttpServerResponse.HttpServerResponse, AimeError | QueueError, Serving | HttpServerRequest.HttpServerRequest | HttpServerRequest.ParsedSearchParams>) =>
      Effect.all([router.add("GET", path, handle(handler)), router.add("POST", path, handle(handler))])

    yield* both(`/${endpoint}`, submit)
    yield* both(`/${endpoint}/progress`, progress)
    // Changes state: POST only, unlike the rest.
    yield* router.add("POST", `/${endpoint}/cancel`, handle(cancel))
    yield* both(`/${endpoint}/login`, login)
    yield* both("/api/validate_key", validateKey)
    yield* both("/api/endpoints", endpoints)
    yield* both(`/api/endpoints/${endpoint}`, details)
    // The published Python client and benchmark ask for /api/<ep>; skip the alias where it would shadow a fixed route.
    if (endpoint !== "endpoints" && endpoint !== "validate_key") yield* both(`/api/${endpoint}`, details)
  }))
