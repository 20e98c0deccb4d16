/**
 * `chorus:http_requests_total{method,route,status}`: every HTTP request that ends is counted once, whatever ended
 * it: a response of the route (2xx, 4xx from body decoding or validation, 5xx), a request no route matched (404),
 * or a client that went away before the response (499, as nginx and Effect's server name it). A streamed
 * response counts when its status is sent; a client that leaves mid-stream shows in the engine's
 * `request_success_total{finished_reason="abort"}`.
 *
 * `route` is the matched route's pattern (`/v1/chat/completions`), or `unmatched`: the label's values stay a
 * fixed set whatever paths clients send.
 *
 * @since 0.1.0
 */
import { Effect, Exit } from "effect"
import { HttpRouter, HttpServerError, HttpServerRequest } from "effect/http"
import { Serving } from "../Serving.ts"
import type { Counter } from "./Prometheus.ts"

const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"])

/** Registers the counter in the server's registry and counts every request through the router. */
export const HttpMetricsMiddleware = HttpRouter.middleware(
  Effect.gen(function*() {
    const serving = yield* Serving
    const requests: Counter = serving.registry.counter(
      "chorus:http_requests_total",
      "HTTP requests by method, matched route and status (499: the client went away before the response).",
      ["method", "route", "status"]
    )
    return (app) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const method = KNOWN_METHODS.has(request.method) ? request.method : "other"
        return yield* app.pipe(
          Effect.onExit((exit) =>
            Effect.gen(function*() {
              // The router puts the matched route into the fiber's context; it is still there when the handler ends.
              const matched = yield* Effect.serviceOption(HttpRouter.RouteContext)
              const route = matched._tag === "Some" ? matched.value.route.path : "unmatched"
              const status = Exit.isSuccess(exit) ? exit.value.status : (yield* HttpServerError.causeResponse(exit.cause))[0].status
              requests.inc({ method, route, status: String(status) })
            })
          )
        )
      })
  }),
  { global: true }
)
