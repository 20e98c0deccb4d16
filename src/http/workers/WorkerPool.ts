/**
 * Remote workers (AIME's worker protocol, server side) and the engine they make: `chorus serve --no-local-model`
 * runs no model itself; every request, OpenAI and AIME alike, goes through `RemoteEngine` — the same `Engine`
 * service interface as the local engine (submit / generate / queuePosition / job / stats) — onto an in-memory FIFO
 * that workers long-poll (`/worker_job_request`), and comes back as the workers' progress and results, turned into
 * the same `GenerationEvent` stream (Queued, Started, Token..., Finished) the local engine emits.
 *
 * Exactly one answer per request: a job belongs to one worker at a time (its `attempt`); a worker silent for the
 * worker timeout goes offline and its unfinished jobs go back to the head of the queue, with a fixed seed so that
 * the next worker generates the same tokens (those already streamed are not streamed again); what the timed-out
 * worker sends later for them is refused (409).
 *
 * @since 0.2.0
 */
import { Cause, Effect, Queue, type Scope, Stream } from "effect"
import { randomUUID } from "node:crypto"
import type { EngineError, EngineStats } from "../../core/Engine.ts"
import { DeadlineExceeded, GenerationError, Overloaded, ValidationError } from "../../core/Errors.ts"
import { type EngineObserver, type FinishedReason, silentObserver } from "../../core/EngineObserver.ts"
import { type Job, startJob } from "../../core/JobMachine.ts"
import type { GenerateRequest, GenerationEvent } from "../../core/Request.ts"
import { parameterDescription } from "../aime/Schemas.ts"
import { int, isObj, isReply, makeWorkerCalls, type Obj, remoteEngineCapacity, remoteEngineStats, reply, type Reply, str } from "./WorkerCalls.ts"
import { startWorkerActor, WORKER_STATES, type WorkerActor, type WorkerState, wireWorkerState } from "./WorkerMachine.ts"

export interface WorkerPoolOptions {
  /** Accepted worker keys (`--worker-key`); none: every worker call is refused. */
  readonly workerKeys: ReadonlyArray<string>
  /** Silence after which a worker is offline and its jobs are re-queued. Default 30 s. */
  readonly workerTimeoutMs?: number
  /** How long a job request waits for a job before `no_job`. Default 10 s (capped below the worker timeout). */
  readonly pollWaitMs?: number
  /** AIME job type workers must name (when they name one). Default `llama3`. */
  readonly jobType?: string
  readonly endpoint?: string
  /** Waiting jobs beyond which a submission fails with Overloaded. Default 1024. */
  readonly maxQueue?: number
  /** Default per-request deadline (ms). */
  readonly timeoutMs?: number
  /** Context length to assume before a worker reports its own. Default 8192. */
  readonly contextLength?: number
  /** Called with the workers per state after every change that may have moved one (metrics). */
  readonly onChange?: (counts: Record<WorkerState, number>) => void
  /** Told of queueing, first tokens, tokens and ends, as the local engine tells its observer (metrics). */
  readonly observer?: EngineObserver
}

export type { Reply } from "./WorkerCalls.ts"

export interface WorkerInfo {
  readonly name: string
  readonly actor: WorkerActor
  lastSeen: number
  polling: number
  maxBatch: number
  freeSlots: number
  running: Set<string>
  params: Record<string, unknown>
  model: Record<string, unknown>
  contextLength: number | undefined
  modelId: string | undefined
  meanCompute: number
}

interface RemoteJob {
  readonly id: string
  readonly requestId: number
  readonly request: GenerateRequest
  readonly machine: Job
  readonly queue: Queue.Queue<GenerationEvent, EngineError | Cause.Done>
  readonly submittedAt: number
  /** performance.now() at submission. */
  readonly arrivedAt: number
  readonly deadline: number
  worker: string | undefined
  assignedAt: number
  /** performance.now() of the first hand-over to a worker, the first token and the latest one (0: not yet). */
  admittedAt: number
  firstTokenAt: number
  lastTokenAt: number
  promptTokens: number
  cancelRequested: boolean
  ended: boolean
  started: boolean
  /** Tokens (and their text) already put on the stream, over all attempts. */
  emitted: number
  emittedText: string
  /** Tokens the current worker has reported (this attempt). */
  received: number
  receivedText: string
}


export interface WorkerPool {
  /** The engine over the queue (the `Engine` service value). */
  readonly engine: RemoteEngineService
  readonly login: (body: unknown) => Reply
  readonly jobRequest: (body: unknown) => Effect.Effect<Reply>
  readonly progress: (body: unknown) => Reply
  readonly result: (body: unknown) => Reply
  readonly checkStatus: (body: unknown) => Reply
  readonly workers: () => ReadonlyArray<WorkerInfo>
  readonly countByState: () => Record<WorkerState, number>
  readonly describeWorker: (w: WorkerInfo) => Obj
  readonly jobType: string
}

export interface RemoteEngineService {
  readonly model: { readonly id: string; readonly contextLength: number; readonly vocabSize: number }
  readonly codec: never
  readonly generate: (request: GenerateRequest) => Stream.Stream<GenerationEvent, EngineError>
  readonly submit: (request: GenerateRequest) => Effect.Effect<Stream.Stream<GenerationEvent, EngineError>, EngineError>
  readonly queuePosition: (requestId: number) => number
  readonly job: (requestId: number) => Job | undefined
  readonly stats: Effect.Effect<EngineStats>
  readonly shards: ReadonlyArray<never>
  readonly capacity: {
    readonly numBlocks: number
    readonly blockSize: number
    readonly kvBytes: number
    readonly fullContextSequences: number
    readonly prefixCaching: boolean
    readonly maxNumSeqs: number
    readonly requestedMaxNumSeqs: number
  }
}

/** AIME's job fields for a request (for workers that know nothing of Chorus), beside the full request. */
export const aimeFields = (r: GenerateRequest): Obj => {
  const s = r.sampling ?? {}
  return {
    chat_context: r.input.type === "chat" ? r.input.messages : [],
    prompt_input: "",
    ...(r.input.type === "text" ? { text_context: r.input.text } : {}),
    ...(r.input.type === "tokens" ? { prompt_token_ids: r.input.tokenIds } : {}),
    top_k: s.topK ?? 40,
    top_p: s.topP ?? 0.9,
    temperature: s.temperature ?? 0.8,
    max_gen_tokens: r.maxTokens ?? 2000,
    seed: s.seed
  }
}

export const makeWorkerPool = (options: WorkerPoolOptions): Effect.Effect<WorkerPool, never, Scope.Scope> =>
  Effect.gen(function*() {
    const timeoutMs = options.workerTimeoutMs ?? 30_000
    const pollWaitMs = Math.max(50, Math.min(options.pollWaitMs ?? 10_000, timeoutMs))
    const jobType = options.jobType ?? "llama3"
    const endpoint = options.endpoint ?? "llama3_chat"
    const maxQueue = options.maxQueue ?? 1024
    const defaultDeadline = options.timeoutMs ?? Number.POSITIVE_INFINITY
    const observer = options.observer ?? silentObserver
    const calls = makeWorkerCalls({ workerKeys: options.workerKeys, jobType, pollWaitMs })

    const workers = new Map<string, WorkerInfo>()
    const jobs = new Map<string, RemoteJob>()
    const byRequest = new Map<number, RemoteJob>()
    const queue: Array<RemoteJob> = []
    const waiters: Array<{ worker: WorkerInfo; max: number; resume: (jobs: Array<RemoteJob>) => void }> = []
    let nextRequest = 1
    let counter = 0
    const stats = { numSteps: 0, numBatchedSteps: 0, promptTokens: 0, generatedTokens: 0 }

    const firstOnline = () => [...workers.values()].find((w) => w.actor.state() !== "offline" && w.modelId !== undefined)
    const maxSeqs = () => Math.max(1, [...workers.values()].filter((w) => w.actor.state() !== "offline").reduce((n, w) => n + w.maxBatch, 0))

    // ---- the job side ---------------------------------------------------------------------------------------

    const offer = (job: RemoteJob, e: GenerationEvent) => Queue.offerUnsafe(job.queue, e)

    /** Tells the observer how a request ended, once. */
    const report = (job: RemoteJob, reason: FinishedReason, promptTokens: number, generated: number) => {
      const t = performance.now()
      observer.finished({
        reason,
        e2eSeconds: (t - job.arrivedAt) / 1000,
        prefillSeconds: job.firstTokenAt === 0 || job.admittedAt === 0 ? undefined : (job.firstTokenAt - job.admittedAt) / 1000,
        decodeSeconds: job.firstTokenAt === 0 ? undefined : (t - job.firstTokenAt) / 1000,
        promptTokens,
        generationTokens: generated,
        maxTokens: job.request.maxTokens ?? 0
      })
    }

    const end = (job: RemoteJob, error?: EngineError) => {
      if (job.ended) return
      job.ended = true
      if (error !== undefined) {
        observer.failed(error.errorType)
        report(job, error._tag === "DeadlineExceeded" ? "timeout" : "error", job.promptTokens, job.emitted)
      }
      jobs.delete(job.id)
      byRequest.delete(job.requestId)
      const i = queue.indexOf(job)
      if (i >= 0) queue.splice(i, 1)
      if (job.worker !== undefined) release(job)
      if (error === undefined) Queue.endUnsafe(job.queue)
      else Queue.failCauseUnsafe(job.queue, Cause.fail(error))
    }

    /** Takes a job off its worker (result, cancel, time-out); the worker goes idle with its last job. */
    const release = (job: RemoteJob) => {
      const w = job.worker === undefined ? undefined : workers.get(job.worker)
      job.worker = undefined
      if (w === undefined) return
      w.running.delete(job.id)
      if (w.running.size === 0) w.actor.send({ type: "IDLE" })
    }

    const ensureStarted = (job: RemoteJob, promptTokens: number) => {
      if (job.started) return
      job.started = true
      job.promptTokens = promptTokens
      observer.promptTokens(promptTokens)
      stats.promptTokens += promptTokens
      offer(job, { _tag: "Started", promptTokens })
    }

    const observeToken = (job: RemoteJob) => {
      const t = performance.now()
      if (job.firstTokenAt === 0) {
        job.firstTokenAt = t
        observer.firstToken((job.admittedAt - job.arrivedAt) / 1000, (t - job.arrivedAt) / 1000)
      } else observer.token((t - job.lastTokenAt) / 1000)
      job.lastTokenAt = t
    }

    /** New tokens of the current attempt; those already streamed by an earlier attempt are skipped. */
    const tokens = (job: RemoteJob, from: number, ids: ReadonlyArray<number>, texts: ReadonlyArray<string>) => {
      // A range that starts past what arrived would misplace tokens; the worker resends from its last acknowledged one.
      if (from > job.received) return
      if (ids.length > 0) job.machine.send({ type: "FIRST_TOKEN" })
      for (let i = Math.max(0, job.received - from); i < ids.length; i++) {
        const text = texts[i] ?? ""
        job.received++
        job.receivedText += text
        if (job.received > job.emitted) {
          job.emitted++
          job.emittedText += text
          stats.generatedTokens++
          observeToken(job)
          offer(job, { _tag: "Token", tokenId: ids[i]!, text })
        }
      }
    }

    /** Text progress of a worker that sends no token ids (AIME's own workers): each new piece is one event. */
    const textProgress = (job: RemoteJob, text: string) => {
      if (text.length > 0) job.machine.send({ type: "FIRST_TOKEN" })
      if (text.length <= job.emittedText.length || !text.startsWith(job.emittedText)) return
      const piece = text.slice(job.emittedText.length)
      job.emitted++
      job.emittedText = text
      job.received = job.emitted
      job.receivedText = text
      stats.generatedTokens++
      observeToken(job)
      offer(job, { _tag: "Token", tokenId: -1, text: piece })
    }

    const applyProgress = (job: RemoteJob, data: Obj) => {
      ensureStarted(job, int(data["chorus_prompt_tokens"]) ?? int(data["prompt_length"]) ?? 0)
      const t = data["chorus_tokens"]
      if (isObj(t) && Array.isArray(t["ids"]) && Array.isArray(t["texts"])) {
        tokens(job, int(t["from"]) ?? 0, t["ids"].filter((x): x is number => typeof x === "number"), t["texts"].map((x) => String(x)))
      } else if (typeof data["text"] === "string") {
        textProgress(job, data["text"])
      }
    }

    const requeue = (job: RemoteJob) => {
      release(job)
      job.machine.send({ type: "REQUEUE" })
      job.received = 0
      job.receivedText = ""
      queue.unshift(job)
    }

    const assign = (w: WorkerInfo, job: RemoteJob) => {
      job.worker = w.name
      job.machine.send({ type: "ADMIT" })
      job.assignedAt = Date.now()
      if (job.admittedAt === 0) {
        job.admittedAt = performance.now()
        observer.admitted((job.admittedAt - job.arrivedAt) / 1000)
      }
      job.received = 0
      job.receivedText = ""
      w.running.add(job.id)
      w.freeSlots = Math.max(0, w.freeSlots - 1)
      w.actor.send({ type: "ASSIGNED" })
    }

    /** Hands waiting jobs to waiting workers, first come first served. */
    const dispatch = () => {
      while (waiters.length > 0 && queue.length > 0) {
        const waiter = waiters.shift()!
        const batch: Array<RemoteJob> = []
        while (batch.length < waiter.max && queue.length > 0) {
          const job = queue.shift()!
          if (job.ended) continue
          assign(waiter.worker, job)
          batch.push(job)
        }
        if (batch.length > 0) {
          stats.numSteps++
          if (batch.length > 1) stats.numBatchedSteps++
          waiter.resume(batch)
        } else waiters.unshift(waiter)
      }
    }

    const submit = (request: GenerateRequest): Effect.Effect<Stream.Stream<GenerationEvent, EngineError>, EngineError> =>
      Effect.gen(function*() {
        if (request.promptLogits !== undefined && request.promptLogits !== "none") {
          observer.failed("validation_error")
          return yield* Effect.fail(new ValidationError({ field: "prompt_logits", message: "prompt logits are not available through remote workers" }))
        }
        if (queue.length >= maxQueue) {
          observer.failed("overloaded")
          return yield* Effect.fail(new Overloaded({ maxQueue, message: `the queue is full (${maxQueue} requests waiting); retry later` }))
        }
        // A fixed seed: a job re-queued after its worker timed out generates the same tokens on the next worker.
        const seed = request.sampling?.seed ?? Math.floor(Math.random() * 2 ** 31)
        const fixed: GenerateRequest = { ...request, sampling: { ...request.sampling, seed } }
        return Stream.callback<GenerationEvent, EngineError>((q) =>
          Effect.gen(function*() {
            const requestId = nextRequest++
            const now = Date.now()
            const job: RemoteJob = {
              id: `${randomUUID()}#${++counter}`,
              requestId,
              request: fixed,
              machine: startJob(String(requestId)),
              queue: q,
              submittedAt: now,
              arrivedAt: performance.now(),
              deadline: now + Math.min(request.timeoutMs ?? Number.POSITIVE_INFINITY, defaultDeadline),
              worker: undefined,
              assignedAt: 0,
              admittedAt: 0,
              firstTokenAt: 0,
              lastTokenAt: 0,
              promptTokens: 0,
              cancelRequested: false,
              ended: false,
              started: false,
              emitted: 0,
              emittedText: "",
              received: 0,
              receivedText: ""
            }
            jobs.set(job.id, job)
            byRequest.set(requestId, job)
            queue.push(job)
            offer(job, { _tag: "Queued", requestId, job: job.machine })
            observer.queued()
            dispatch()
            yield* Effect.addFinalizer(() =>
              Effect.sync(() => {
                if (job.ended) return
                // The consumer went away: the machine says cancelled; a worker running it hears so in its next
                // progress acknowledgement (`canceled: true`).
                job.machine.send({ type: "CANCEL" })
                job.ended = true
                report(job, "abort", job.promptTokens, job.emitted)
                const i = queue.indexOf(job)
                if (i >= 0) queue.splice(i, 1)
                if (job.worker === undefined) {
                  jobs.delete(job.id)
                  byRequest.delete(job.requestId)
                } else job.cancelRequested = true
              })
            )
          })
        )
      })

    // ---- the watchdog ---------------------------------------------------------------------------------------

    const watch = Effect.sync(() => {
      const now = Date.now()
      for (const w of workers.values()) {
        if (w.polling === 0 && now - w.lastSeen > timeoutMs && w.actor.state() !== "offline") {
          w.actor.send({ type: "TIMEOUT" })
          // Its jobs go back to the head of the queue, in their order.
          const mine = [...w.running].map((id) => jobs.get(id)).filter((j): j is RemoteJob => j !== undefined)
          w.running.clear()
          for (const job of mine.reverse()) {
            if (job.ended) {
              jobs.delete(job.id)
              byRequest.delete(job.requestId)
            } else requeue(job)
          }
        }
      }
      // Past its deadline, queued or running: the client gets DeadlineExceeded; a worker running it hears
      // `canceled` in its next progress acknowledgement (the job is no longer its).
      for (const job of [...jobs.values()]) {
        if (!job.ended && now > job.deadline) {
          const waiting = job.worker === undefined
          job.machine.send({ type: "EXPIRE" })
          end(job, new DeadlineExceeded({
            timeoutMs: job.deadline - job.submittedAt,
            message: waiting ? "the request timed out waiting for a worker" : "the request timed out on its worker"
          }))
        }
      }
      dispatch()
      changed()
    })
    yield* Effect.forkScoped(Effect.forever(Effect.sleep(Math.max(20, Math.min(1000, timeoutMs / 4))).pipe(Effect.andThen(watch))))

    // ---- the worker side ------------------------------------------------------------------------------------

    const describeWorker = (w: WorkerInfo): Obj => ({
      name: w.name,
      state: wireWorkerState(w.actor.state()),
      chorus_state: w.actor.state(),
      max_batch_size: w.maxBatch,
      free_slots: w.freeSlots,
      running_jobs: w.running.size,
      gpu_name: w.params["gpu_name"] ?? "Unknown",
      num_gpus: w.params["num_gpus"] ?? 1,
      framework: w.params["framework"] ?? "Unknown",
      framework_version: w.params["framework_version"] ?? "Unknown",
      pytorch_version: w.params["pytorch_version"] ?? "Unknown",
      last_seen: w.lastSeen / 1000,
      model: {
        label: w.model["label"] ?? "Unknown",
        quantization: w.model["quantization"] ?? "Unknown",
        size: w.model["size"] ?? "Unknown",
        family: w.model["family"] ?? "Unknown",
        type: w.model["type"] ?? "Unknown",
        repo_name: w.model["repo_name"] ?? "Unknown"
      }
    })

    const register = (name: string, params: Obj, model: Obj, maxBatch: number): WorkerInfo => {
      const old = workers.get(name)
      const w: WorkerInfo = old ?? {
        name,
        actor: startWorkerActor(),
        lastSeen: Date.now(),
        polling: 0,
        maxBatch,
        freeSlots: maxBatch,
        running: new Set(),
        params: {},
        model: {},
        contextLength: undefined,
        modelId: undefined,
        meanCompute: 0
      }
      w.params = params
      w.model = model
      w.maxBatch = Math.max(w.maxBatch, maxBatch)
      w.lastSeen = Date.now()
      w.contextLength = int(params["chorus_context_length"]) ?? w.contextLength
      w.modelId = str(params["chorus_model_id"]) ?? str(model["label"]) ?? w.modelId
      workers.set(name, w)
      return w
    }

    const login = (body: unknown): Reply => {
      const r = calls.login(body)
      if (isReply(r)) return r
      register(r.name, r.params, r.model, r.maxBatch)
      return calls.loginAccepted()
    }

    /** Validates a worker call: the key, then the worker (known, or auto-logged-in from legacy fields). */
    const authenticate = (body: Obj, autoLogin: boolean): WorkerInfo | Reply => {
      const name = calls.caller(body)
      if (typeof name !== "string") return name
      const known = workers.get(name)
      if (known !== undefined) return known
      const r = calls.autoLogin(name, body, autoLogin)
      return isReply(r) ? r : register(r.name, r.params, r.model, r.maxBatch)
    }

    const jobCommand = (batch: ReadonlyArray<RemoteJob>): Obj => ({
      cmd: "job",
      endpoint_name: endpoint,
      input_descriptions: parameterDescription.input,
      progress_output_descriptions: parameterDescription.progress.OUTPUTS,
      final_output_descriptions: parameterDescription.output,
      job_data: batch.map((job) => ({
        job_id: job.id,
        start_time: job.submittedAt / 1000,
        start_time_compute: job.assignedAt / 1000,
        ...aimeFields(job.request),
        wait_for_result: false,
        chorus_request: job.request
      }))
    })

    const jobRequest = (body: unknown): Effect.Effect<Reply> =>
      Effect.suspend(() => {
        if (!isObj(body)) return Effect.succeed(reply(400, { cmd: "error", msg: "the body must be a JSON object" }))
        const max = body["max_job_batch"]
        if (max !== undefined && (int(max) === undefined || (max as number) < 1)) {
          return Effect.succeed(reply(400, { cmd: "error", msg: "max_job_batch must be an integer >= 1" }))
        }
        const w = authenticate(body, true)
        if ("status" in w) return Effect.succeed(w)
        const wanted = int(max) ?? 1
        w.lastSeen = Date.now()
        w.freeSlots = wanted
        w.maxBatch = Math.max(w.maxBatch, wanted + w.running.size)
        if (w.actor.state() === "offline" || w.actor.state() === "connecting") w.actor.send({ type: "POLL" })
        if (w.running.size === 0) w.actor.send({ type: "IDLE" })
        w.polling++
        return Effect.callback<Array<RemoteJob>>((resume) => {
          const waiter = { worker: w, max: wanted, resume: (batch: Array<RemoteJob>) => resume(Effect.succeed(batch)) }
          waiters.push(waiter)
          dispatch()
          return Effect.sync(() => {
            const i = waiters.indexOf(waiter)
            if (i >= 0) waiters.splice(i, 1)
          })
        }).pipe(
          Effect.timeoutOption(pollWaitMs),
          Effect.map((batch) => (batch._tag === "None" ? reply(200, { cmd: "no_job" }) : reply(200, jobCommand(batch.value)))),
          Effect.ensuring(Effect.sync(() => {
            w.polling--
            w.lastSeen = Date.now()
          }))
        )
      })

    /** The job a worker names, if it is running it now; otherwise the status and message to refuse with. */
    const ownJob = (w: WorkerInfo, jobId: unknown): RemoteJob | Reply => {
      if (typeof jobId !== "string" || jobId === "") return reply(400, { success: false, error_msg: "job_id is required" })
      const job = jobs.get(jobId)
      if (job === undefined) return reply(404, { success: false, error_msg: `Job with job id ${jobId} not found`, canceled: true })
      if (job.worker !== w.name || !w.running.has(jobId)) {
        return reply(409, { success: false, error_msg: `Job with job id ${jobId} is not running on worker ${w.name}`, canceled: true })
      }
      return job
    }

    const progressItem = (item: unknown): Reply => {
      if (!isObj(item)) return reply(400, { success: false, error_msg: "a progress item must be a JSON object" })
      const data = item["progress_data"]
      if (data !== undefined && !isObj(data)) return reply(400, { success: false, error_msg: "progress_data must be an object" })
      const withAuth = item["auth"] === undefined && isObj(data) ? { ...item, auth: data["auth"] } : item
      const w = authenticate(withAuth, false)
      if ("status" in w) return w
      w.lastSeen = Date.now()
      const job = ownJob(w, item["job_id"])
      if ("status" in job) return job
      if (job.cancelRequested) {
        // The client went away: the worker stops; the job is done here.
        release(job)
        jobs.delete(job.id)
        byRequest.delete(job.requestId)
        return reply(200, { success: true, canceled: true })
      }
      applyProgress(job, data ?? {})
      return reply(200, { success: true })
    }

    const progress = (body: unknown): Reply => {
      if (Array.isArray(body)) {
        if (body.length === 0) return reply(400, { success: false, error_msg: "empty progress batch" })
        const replies = body.map(progressItem)
        const failed = replies.find((r) => r.status !== 200)
        return reply(failed?.status ?? 200, replies.map((r) => r.body))
      }
      return progressItem(body)
    }

    const result = (body: unknown): Reply => {
      if (!isObj(body)) return reply(400, { cmd: "error", msg: "the body must be a JSON object (one job's result)" })
      const w = authenticate(body, false)
      if ("status" in w) return w
      w.lastSeen = Date.now()
      const job = ownJob(w, body["job_id"])
      if ("status" in job) return reply(job.status, { cmd: "warning", msg: (job.body as Obj)["error_msg"] })
      if (job.cancelRequested) {
        release(job)
        jobs.delete(job.id)
        byRequest.delete(job.requestId)
        return reply(200, { cmd: "ok" })
      }
      const seconds = (Date.now() - job.assignedAt) / 1000
      w.meanCompute = 0.95 * w.meanCompute + 0.05 * seconds
      const error = body["error"]
      if (typeof error === "string" && error !== "") {
        job.machine.send({ type: "FAIL", error })
        end(job, new GenerationError({ message: `worker ${w.name}: ${error}` }))
        return reply(200, { cmd: "ok" })
      }
      applyProgress(job, body)
      const text = str(body["text"]) ?? job.emittedText
      const tail = text.startsWith(job.emittedText) ? text.slice(job.emittedText.length) : ""
      const promptTokens = int(body["prompt_length"]) ?? int(body["chorus_prompt_tokens"]) ?? 0
      const completion = int(body["num_generated_tokens"]) ?? job.emitted
      const finishReason = body["finish_reason"] === "length" ? "length" : "stop"
      const stop = str(body["chorus_stop_reason"])
      const stopReason = stop === "eos" || stop === "stop_string" || stop === "max_tokens" || stop === "context"
        ? stop
        : finishReason === "length" ? "max_tokens" : "eos"
      job.machine.send({ type: "FINISH" })
      offer(job, { _tag: "Finished", finishReason, stopReason, text: tail, usage: { promptTokens, completionTokens: completion } })
      report(job, finishReason, promptTokens, completion)
      end(job)
      return reply(200, { cmd: "ok" })
    }

    const checkStatus = (body: unknown): Reply => {
      if (!isObj(body)) return reply(400, { error: "the body must be a JSON object" })
      const auth = str(body["auth"])
      const keyValid = calls.keyOk(body["auth_key"])
      // From a known worker with its key, this is a heartbeat (chorus worker sends one while all its slots are busy).
      const known = auth === undefined ? undefined : workers.get(auth)
      if (known !== undefined && keyValid) known.lastSeen = Date.now()
      return reply(200, {
        cmd: "ok",
        msg: "API server online",
        logged_in: auth !== undefined && keyValid && workers.has(auth),
        job_type_present: body["job_type"] === undefined || body["job_type"] === jobType,
        key_valid: keyValid
      })
    }

    const countByState = () => {
      const out = Object.fromEntries(WORKER_STATES.map((s) => [s, 0])) as Record<WorkerState, number>
      for (const w of workers.values()) out[w.actor.state()]++
      return out
    }

    const engine: RemoteEngineService = {
      get model() {
        const w = firstOnline()
        return { id: w?.modelId ?? "remote", contextLength: w?.contextLength ?? options.contextLength ?? 8192, vocabSize: 0 }
      },
      codec: undefined as never,
      submit,
      generate: (request) => Stream.unwrap(submit(request)),
      queuePosition: (requestId) => {
        const job = byRequest.get(requestId)
        if (job === undefined) return -1
        const i = queue.indexOf(job)
        return i < 0 ? 0 : i + 1
      },
      job: (requestId) => byRequest.get(requestId)?.machine,
      stats: Effect.sync(() => ({
        numRunning: [...jobs.values()].filter((j) => j.worker !== undefined && !j.ended).length,
        numWaiting: queue.length,
        maxNumSeqs: maxSeqs(),
        ...stats,
        ...remoteEngineStats
      })),
      shards: [],
      get capacity() {
        return remoteEngineCapacity(maxSeqs())
      }
    }

    const changed = () => options.onChange?.(countByState())
    const tracked = <A extends ReadonlyArray<unknown>>(f: (...a: A) => Reply) => (...a: A): Reply => {
      const r = f(...a)
      changed()
      return r
    }

    return {
      engine,
      login: tracked(login),
      jobRequest: (body) => jobRequest(body).pipe(Effect.ensuring(Effect.sync(changed))),
      progress: tracked(progress),
      result: tracked(result),
      checkStatus,
      workers: () => [...workers.values()],
      countByState,
      describeWorker,
      jobType
    }
  })
