/**
 * The checks every worker call goes through, whichever queue holds the jobs (in memory: `WorkerPool.ts`; Redis:
 * `queue/RedisWorkerQueue.ts`): the worker key, the job type, the worker's name, `/worker_login`'s fields and the
 * registration AIME's legacy workers imply on their first poll (auto-login). Plain functions over the JSON body;
 * the queues decide what registering means.
 */
import type { EngineStats, EngineCapacity } from "../../core/Engine.ts"
import { makeKeyMatcher } from "../ApiKeys.ts"

/** What the server answers a worker call: an HTTP status and a JSON body. */
export interface Reply {
  readonly status: number
  readonly body: unknown
}

export type Obj = Record<string, unknown>
export const isObj = (v: unknown): v is Obj => v !== null && typeof v === "object" && !Array.isArray(v)
export const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined)
export const int = (v: unknown): number | undefined => (typeof v === "number" && Number.isInteger(v) ? v : undefined)
export const reply = (status: number, body: unknown): Reply => ({ status, body })
export const isReply = (v: unknown): v is Reply => isObj(v) && typeof v["status"] === "number" && "body" in v

/** A worker as it announces itself: its parameters (without its key), its model and its batch. */
export interface Registration {
  readonly name: string
  readonly params: Obj
  readonly model: Obj
  readonly maxBatch: number
}

/** What `/worker_login` answers a worker it registered. */
export const API_SERVER_VERSION = "chorus 0.3.0"

export interface WorkerCalls {
  readonly keyOk: (key: unknown) => boolean
  readonly notAuthorized: (name: string | undefined) => Reply
  /** A 403 for a job type this server does not serve; undefined for its own (or none given). */
  readonly wrongType: (jobType: unknown) => Reply | undefined
  /** `/worker_login`: the registration it asks for, or the refusal. */
  readonly login: (body: unknown) => Registration | Reply
  /** A job request, progress or result: the caller's name once its key and job type pass, or the refusal. */
  readonly caller: (body: Obj) => string | Reply
  /**
   * The registration an unknown worker's call implies: from AIME's legacy auto-login fields where `allowed` (a
   * job request) and they are there; otherwise the "needs to login" refusal.
   */
  readonly autoLogin: (name: string, body: Obj, allowed: boolean) => Registration | Reply
  readonly loginAccepted: () => Reply
}

export const makeWorkerCalls = (options: { readonly workerKeys: ReadonlyArray<string>; readonly jobType: string; readonly pollWaitMs: number }): WorkerCalls => {
  const { jobType } = options
  const isWorkerKey = makeKeyMatcher(options.workerKeys)
  const keyOk = (k: unknown) => options.workerKeys.length > 0 && typeof k === "string" && isWorkerKey(k)
  const notAuthorized = (name: string | undefined) =>
    reply(401, { cmd: "error", success: false, msg: `Worker ${name ?? ""} not authorized`, error_msg: `Worker ${name ?? ""} not authorized` })
  const wrongType = (jt: unknown) =>
    typeof jt === "string" && jt !== jobType
      ? reply(403, { cmd: "error", success: false, msg: `Unknown job_type: ${jt}`, error_msg: `Unknown job_type: ${jt} (this server: ${jobType})` })
      : undefined

  const login = (body: unknown): Registration | Reply => {
    if (!isObj(body) || !isObj(body["worker_parameters"])) return reply(400, { success: false, error_msg: "expected {worker_parameters: {...}, model_parameters: {...}}" })
    const p = body["worker_parameters"]
    const name = str(p["auth"])
    if (name === undefined || name === "") return reply(400, { success: false, error_msg: "worker_parameters.auth (the worker name) is required" })
    const bad = wrongType(p["job_type"])
    if (bad !== undefined) return bad
    if (!keyOk(p["auth_key"])) return reply(401, { success: false, error_msg: `Worker not authorized on job type ${jobType}` })
    const { auth_key: _k, ...params } = p
    return { name, params, model: isObj(body["model_parameters"]) ? body["model_parameters"] : {}, maxBatch: int(p["max_batch_size"]) ?? 1 }
  }

  const caller = (body: Obj): string | Reply => {
    const name = str(body["auth"])
    if (name === undefined || name === "") return reply(400, { cmd: "error", msg: "auth (the worker name) is required" })
    const bad = wrongType(body["job_type"])
    if (bad !== undefined) return bad
    if (!keyOk(body["auth_key"])) return notAuthorized(name)
    return name
  }

  const autoLogin = (name: string, body: Obj, allowed: boolean): Registration | Reply => {
    if (!allowed || typeof body["version"] !== "string" || body["version"] === "") {
      return reply(400, { cmd: "error", msg: `Worker ${name} needs to login before being allowed to make job requests` })
    }
    const { auth_key: _k, ...rest } = body
    const params: Obj = { ...rest, interface_version: body["version"], version: body["worker_version"] }
    const model: Obj = {
      label: body["model_label"],
      quantization: body["model_quantization"],
      size: body["model_size"],
      family: body["model_family"],
      type: body["model_type"],
      repo_name: body["model_repo_name"]
    }
    for (const k of Object.keys(model)) if (model[k] === undefined) delete model[k]
    return { name, params, model, maxBatch: int(body["max_job_batch"]) ?? 1 }
  }

  const loginAccepted = () => reply(200, { success: true, request_timeout: options.pollWaitMs / 1000, api_server_version: API_SERVER_VERSION })

  return { keyOk, notAuthorized, wrongType, login, caller, autoLogin, loginAccepted }
}

/** The KV figures of an engine whose model runs in remote workers: none of its own. */
export const remoteEngineStats = {
  restarts: 0,
  numBlocks: 0,
  blockSize: 0,
  kvUsage: 0,
  prefixCacheQueries: 0,
  prefixCacheHits: 0,
  numPreemptions: 0
} as const satisfies Partial<EngineStats>

export const remoteEngineCapacity = (maxSeqs: number): EngineCapacity => ({
  numBlocks: 0,
  blockSize: 0,
  kvBytes: 0,
  fullContextSequences: 0,
  prefixCaching: false,
  maxNumSeqs: maxSeqs,
  requestedMaxNumSeqs: maxSeqs
})
