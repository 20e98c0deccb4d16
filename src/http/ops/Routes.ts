/**
 * Operations routes, open without an API key: `GET /health` (the process answers), `GET /ready` (the model is
 * loaded and requests are taken; 503 before, while draining, once a shard has failed for good, and while the shared
 * queue (`--queue redis://...`) cannot be reached; each shard's lifecycle state as its machine has it), `GET /metrics` (Prometheus text).
 */
import { Effect } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { PROMETHEUS_CONTENT_TYPE } from "../metrics/Prometheus.ts"
import { Serving } from "../Serving.ts"

export const OpsRoutes = HttpRouter.use(Effect.fn(function*(router) {
  yield* router.add("GET", "/health", Effect.succeed(HttpServerResponse.jsonUnsafe({ status: "ok" })))
  yield* router.add(
    "GET",
    "/ready",
    Effect.gen(function*() {
      const serving = yield* Serving
      const served = yield* serving.status
      // A shared queue (Redis) that cannot be reached: this replica cannot serve.
      const queueDown = serving.queue === undefined ? undefined : yield* serving.queue.unavailable
      if (queueDown !== undefined) return HttpServerResponse.jsonUnsafe({ status: "queue_unavailable", error: queueDown }, { status: 503 })
      const engine = yield* Effect.option(serving.loadedEngine)
      // No shards to report while the model loads.
      if (engine._tag === "None") return HttpServerResponse.jsonUnsafe({ status: served }, { status: served === "ready" ? 200 : 503 })
      const shards = engine.value.shards.map((shard) => {
        const { index, state, restarts, lastError } = shard.status()
        return { index, state, restarts, ...(lastError === undefined ? {} : { last_error: lastError }) }
      })
      // A crashed shard is being brought back (requests wait for it); a failed one will not come back.
      const status = served === "ready" && shards.some((s) => s.state === "failed") ? "failed" : served
      return HttpServerResponse.jsonUnsafe({ status, shards }, { status: status === "ready" ? 200 : 503 })
    })
  )
  yield* router.add(
    "GET",
    "/metrics",
    Effect.gen(function*() {
      const serving = yield* Serving
      return HttpServerResponse.text(serving.registry.render(), { contentType: PROMETHEUS_CONTENT_TYPE })
    })
  )
}))
