/**
 * Operations routes, open without an API key: `GET /health` (the process answers), `GET /ready` (the model is
 * loaded and requests are taken; 503 before and while draining), `GET /metrics` (Prometheus text).
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
      const status = yield* serving.status
      return HttpServerResponse.jsonUnsafe({ status }, { status: status === "ready" ? 200 : 503 })
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
