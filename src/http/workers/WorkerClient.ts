/**
 * The client side of AIME's worker protocol, as `chorus worker` runs it: a local engine that takes its jobs from an
 * AIME-compatible API server (`chorus serve --no-local-model`, or AIME's own server), as AIME's `chat.py
 * --api_server` does: long-polls `/worker_job_request` for as many jobs as it has free slots (jobs arriving while
 * others decode join at the next poll), posts the text so far to `/worker_job_progress` (each job every 8 tokens or
 * 100 ms; the jobs due together in one batched POST, at most one in flight: WorkerProgress.ts), and the result to `/worker_job_result` once per job. Token ids travel beside
 * the text (fields AIME ignores) so that a Chorus server can report OpenAI token counts. The server away: retried
 * with exponential backoff. Stopping: no more polls, running jobs finish.
 *
 * The calls go over HTTP, or through `transport` to a queue in the same process: that is how `chorus serve` with a
 * model and `--worker-key` lets its own engine take jobs from the queue it shares with remote workers.
 *
 * @since 0.2.0
 */
import { Effect, Exit, Stream } from "effect"
import * as os from "node:os"
import type { Engine } from "../../core/Engine.ts"
import type { GenerateRequest } from "../../core/Request.ts"
import type { ChatMessage } from "../../core/text/ChatMessage.ts"
import { packageVersion } from "../../cli/Version.ts"
import { makeProgressSender, type ProgressJob } from "./WorkerProgress.ts"

/** One worker call and its answer: POST `route` with `body`. */
export type WorkerTransport = (route: string, body: unknown, signal?: AbortSignal) => Promise<{ readonly status: number; readonly body: Record<string, unknown> }>


type EngineService = Engine["Service"]
type Obj = Record<string, unknown>

export interface WorkerOptions {
  readonly apiServer: string
  readonly workerKey: string
  readonly engine: EngineService
  readonly maxBatch: number
  readonly jobType?: string
  readonly endpoint?: string
  readonly name?: string
  readonly gpuName?: string
  readonly numGpus?: number
  /** Described to the server as AIME's worker library does (`model_quantization`, `model_size`). */
  readonly modelQuantization?: string
  readonly modelSize?: string
  /** Stops polling; running jobs finish, then `runWorker` resolves. */
  readonly signal?: AbortSignal
  readonly log?: (line: string) => void
  /** Progress cadence: every this many tokens or this many ms (default 8 and 100). */
  readonly progressEvery?: { readonly tokens: number; readonly ms: number }
  /** How calls reach the server. Default: HTTP to `apiServer`. */
  readonly transport?: WorkerTransport
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** AIME's worker name: `<hostname>#<port offset>_<num_gpus>x<gpu name, spaces as _>`. */
export const workerName = (gpuName: string, numGpus: number, n = 0) => `${os.hostname()}#${n}_${numGpus}x${gpuName.replace(/ /g, "_")}`

/** A job from an AIME server as an engine request: Chorus servers send the request itself, AIME's send its inputs. */
export const requestOfJob = (job: Obj): GenerateRequest => {
  const r = job["chorus_request"]
  if (r !== null && typeof r === "object") return r as GenerateRequest
  let messages: Array<ChatMessage> = []
  const ctx = job["chat_context"]
  if (Array.isArray(ctx)) messages = ctx as Array<ChatMessage>
  else if (typeof ctx === "string" && ctx !== "") messages = JSON.parse(ctx) as Array<ChatMessage>
  const prompt = job["prompt_input"]
  if (typeof prompt === "string" && prompt !== "") messages = [...messages, { role: "user", content: prompt }]
  const text = job["text_context"]
  const num = (k: string) => (typeof job[k] === "number" ? (job[k] as number) : undefined)
  const sampling = Object.fromEntries(
    [["temperature", num("temperature")], ["topK", num("top_k")], ["topP", num("top_p")], ["seed", num("seed")]].filter(([, v]) => v !== undefined)
  )
  return {
    input: typeof text === "string" && text !== "" ? { type: "text", text } : { type: "chat", messages },
    ...(num("max_gen_tokens") === undefined ? {} : { maxTokens: num("max_gen_tokens")! }),
    sampling
  }
}

/** Runs the worker loop until `signal` aborts and its running jobs have ended. */
export const runWorker = async (options: WorkerOptions): Promise<void> => {
  const base = options.apiServer.replace(/\/+$/, "")
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`))
  const engine = options.engine
  const jobType = options.jobType ?? "llama3"
  const gpuName = options.gpuName ?? "CPU"
  const numGpus = options.numGpus ?? 1
  const name = options.name ?? workerName(gpuName, numGpus)
  const every = options.progressEvery ?? { tokens: 8, ms: 100 }
  const version = `chorus-worker ${packageVersion()}`
  const running = new Map<string, Promise<void>>()
  let slotFreed: () => void = () => {}
  const stopping = new AbortController()
  options.signal?.addEventListener("abort", () => stopping.abort(), { once: true })
  if (options.signal?.aborted === true) stopping.abort()

  const identity = { auth: name, auth_key: options.workerKey, job_type: jobType }
  const legacy = {
    ...identity,
    version,
    worker_version: 1,
    gpu_name: gpuName,
    num_gpus: numGpus,
    request_timeout: 60,
    model_label: engine.model.id,
    model_quantization: options.modelQuantization ?? "Unknown",
    model_size: options.modelSize ?? "Unknown",
    model_family: "Llama 3",
    model_type: "LLM",
    model_repo_name: engine.model.id,
    framework: "ONNX Runtime",
    framework_version: "1.29",
    pytorch_version: "none",
    chorus_model_id: engine.model.id,
    chorus_context_length: engine.model.contextLength
  }

  /** One POST; a server that does not answer within a minute (a long poll takes at most its request_timeout) is away. */
  const http: WorkerTransport = async (route, body, signal) => {
    const limit = AbortSignal.timeout(60_000)
    const r = await fetch(`${base}${route}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: signal === undefined ? limit : AbortSignal.any([signal, limit])
    })
    const text = await r.text()
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      json = { raw: text }
    }
    return { status: r.status, body: json as Obj }
  }
  const post = options.transport ?? http

  /** Posts until the server answers other than 5xx (connection errors and 5xx: exponential backoff). */
  const deliver = async (route: string, body: unknown) => {
    for (let delay = 200;; delay = Math.min(delay * 2, 5000)) {
      try {
        const r = await post(route, body)
        if (r.status < 500) return r
      } catch {
        // the server is away
      }
      await sleep(delay)
    }
  }

  const progress = makeProgressSender({ post: (body) => post("/worker_job_progress", body), identity, every })

  const runJob = async (job: Obj): Promise<void> => {
    const abort = new AbortController()
    let canceled = false
    const state: ProgressJob = {
      id: String(job["job_id"]),
      ids: [],
      texts: [],
      text: "",
      promptTokens: 0,
      acked: 0,
      lastSent: 0,
      onCanceled: () => {
        canceled = true
        abort.abort()
      }
    }
    const jobId = state.id
    const { ids, texts } = state
    progress.add(state)
    let finish: Obj = {}
    const exit = await Effect.runPromiseExit(
      Stream.runForEach(engine.generate(requestOfJob(job)), (e) =>
        Effect.sync(() => {
          switch (e._tag) {
            case "Started":
              state.promptTokens = e.promptTokens
              return
            case "Token":
              ids.push(e.tokenId)
              texts.push(e.text)
              state.text += e.text
              progress.tokenArrived(state)
              return
            case "Finished":
              state.text += e.text
              finish = {
                finish_reason: e.finishReason,
                chorus_stop_reason: e.stopReason,
                prompt_length: e.usage.promptTokens,
                num_generated_tokens: e.usage.completionTokens
              }
          }
        })),
      { signal: abort.signal }
    )
    progress.remove(state)
    if (canceled) return
    const failed = Exit.isFailure(exit)
    const result = {
      ...identity,
      version,
      job_id: jobId,
      text: state.text,
      model_name: engine.model.id,
      max_seq_len: engine.model.contextLength,
      ...finish,
      current_context_length: state.promptTokens + ids.length,
      chorus_prompt_tokens: state.promptTokens,
      chorus_tokens: { from: state.acked, ids: ids.slice(state.acked), texts: texts.slice(state.acked) },
      ...(failed ? { error: exitMessage(exit.cause) } : {})
    }
    const r = await deliver("/worker_job_result", result)
    if (r.status !== 200) log(`chorus worker: the server refused the result of ${jobId} (${r.status}): ${JSON.stringify(r.body)}`)
  }

  const start = (job: Obj) => {
    const id = String(job["job_id"])
    const p = runJob(job)
      .catch((e) => log(`chorus worker: job ${id}: ${e instanceof Error ? e.message : String(e)}`))
      .finally(() => {
        running.delete(id)
        slotFreed()
      })
    running.set(id, p)
  }

  log(`chorus worker ${name}: ${engine.model.id}, up to ${options.maxBatch} jobs at once, polling ${base}`)
  let delay = 250
  let online = false
  let warnedEndpoint = false
  while (!stopping.signal.aborted) {
    const free = options.maxBatch - running.size
    if (free <= 0) {
      // Every slot busy: no poll, so a heartbeat every 5 s keeps the server from taking this worker for gone while
      // long prompts prefill without progress.
      let timer: ReturnType<typeof setTimeout> | undefined
      let onAbort = () => {}
      const woke = await new Promise<"slot" | "tick">((r) => {
        slotFreed = () => r("slot")
        onAbort = () => r("slot")
        timer = setTimeout(() => r("tick"), 5000)
        stopping.signal.addEventListener("abort", onAbort, { once: true })
      })
      clearTimeout(timer)
      stopping.signal.removeEventListener("abort", onAbort)
      if (woke === "tick") post("/worker_check_server_status", identity).catch(() => {})
      continue
    }
    let r: { status: number; body: Obj }
    try {
      r = await post("/worker_job_request", { ...legacy, max_job_batch: free }, stopping.signal)
    } catch {
      if (stopping.signal.aborted) break
      if (online) log(`chorus worker: the API server ${base} is away; retrying`)
      online = false
      await sleep(delay)
      delay = Math.min(delay * 2, 10_000)
      continue
    }
    if (r.status >= 500) {
      await sleep(delay)
      delay = Math.min(delay * 2, 10_000)
      continue
    }
    if (r.status !== 200 || r.body["cmd"] === "error") {
      throw new Error(`the API server refused this worker (${r.status}): ${String(r.body["msg"] ?? r.body["error_msg"] ?? JSON.stringify(r.body))}`)
    }
    if (!online) log(`chorus worker: connected to ${base}`)
    online = true
    delay = 250
    const from = r.body["endpoint_name"]
    if (r.body["cmd"] === "job" && typeof from === "string" && from !== (options.endpoint ?? "llama3_chat") && !warnedEndpoint) {
      warnedEndpoint = true
      log(`chorus worker: the server sends jobs of endpoint ${from}, not ${options.endpoint ?? "llama3_chat"} (--endpoint); running them all the same`)
    }
    if (r.body["cmd"] === "job" && Array.isArray(r.body["job_data"])) {
      for (const job of r.body["job_data"] as Array<Obj>) start(job)
    }
  }
  await Promise.all(running.values())
  log("chorus worker: stopped")
}

const exitMessage = (cause: unknown) => {
  const e = (cause as { failures?: ReadonlyArray<{ error?: { message?: string } }> }).failures?.[0]?.error
  return e?.message ?? String(cause)
}
