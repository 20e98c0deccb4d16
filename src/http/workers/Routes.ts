/**
 * The worker side of AIME's protocol (reference §3): `/worker_login`, `/worker_job_request` (long poll),
 * `/worker_job_progress` (one object or an array; also GET), `/worker_job_result`, `/worker_check_server_status`.
 * Thin: read the JSON body, hand it to the worker pool, encode its reply. On a server that runs its model itself
 * (no `--no-local-model`) every worker route answers 409: there is no queue for workers to take jobs from.
 *
 * @since 0.2.0
 */
import { Effect } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { readJsonBody } from "../JsonBody.ts"
import { Serving } from "../Serving.ts"
import type { WorkerQueue } from "../queue/WorkerQueue.ts"
import type { Reply } from "./WorkerPool.ts"

const json = (r: Reply) => HttpServerResponse.jsonUnsafe(r.body, { status: r.status })

const NO_QUEUE: Reply = {
  status: 409,
  body: { cmd: "error", success: false, msg: "this server runs its model itself; start it with --no-local-model to serve through workers", error_msg: "this server takes no workers (start it with --no-local-model)" }
}

const route = (handle: (queue: WorkerQueue, body: unknown) => Effect.Effect<Reply>) =>
  Effect.gen(function*() {
    const { queue } = yield* Serving
    if (queue === undefined) return json(NO_QUEUE)
    const request = yield* HttpServerRequest.HttpServerRequest
    const body = request.method === "GET" ? {} : yield* readJsonBody
    return json(yield* handle(queue, body))
  }).pipe(
    Effect.catchTags({
      ValidationError: (e) => Effect.succeed(json({ status: 400, body: { cmd: "error", success: false, msg: e.message, error_msg: e.message } })),
      PayloadTooLarge: (e) => Effect.succeed(json({ status: 413, body: { cmd: "error", success: false, msg: e.message, error_msg: e.message } }))
    })
  )

export const WorkerRoutes = HttpRouter.use(Effect.fn(function*(router) {
  yield* router.add("POST", "/worker_login", route((q, b) => q.login(b)))
  yield* router.add("POST", "/worker_job_request", route((q, b) => q.jobRequest(b)))
  yield* router.add("POST", "/worker_job_progress", route((q, b) => q.progress(b)))
  yield* router.add("GET", "/worker_job_progress", route((q, b) => q.progress(b)))
  yield* router.add("POST", "/worker_job_result", route((q, b) => q.result(b)))
  yield* router.add("POST", "/worker_check_server_status", route((q, b) => q.checkStatus(b)))
}))
