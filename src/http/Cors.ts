/**
 * CORS for browser apps on other origins (off unless origins are configured). Built on effect/http's
 * `HttpMiddleware.cors`, which answers preflights with 204 and adds the headers to every response it lets through
 * (errors and SSE streams included); this module only decides which origins get it at all, so that a request from
 * an origin not on the list gets no CORS headers whatsoever.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import { HttpMiddleware, HttpServerRequest, type HttpServerResponse } from "effect/http"

/** How long a browser may cache a preflight answer, in seconds. */
const PREFLIGHT_MAX_AGE_S = 600

/** `*` or an origin as browsers send it: scheme, host and optional port, nothing after. */
export const isCorsOrigin = (value: string): boolean => {
  if (value === "*") return true
  try {
    const url = new URL(value)
    return (url.protocol === "http:" || url.protocol === "https:") && url.origin === value
  } catch {
    return false
  }
}

/**
 * @category middleware
 */
export const cors = (origins: ReadonlyArray<string>) => {
  const anyOrigin = origins.includes("*")
  const allowed = (origin: string | undefined): origin is string => origin !== undefined && (anyOrigin || origins.includes(origin))
  const withCors = HttpMiddleware.cors({
    allowedOrigins: allowed,
    allowedMethods: ["GET", "POST"],
    // No fixed list: the requested headers are echoed (Authorization, Content-Type, and whatever an SDK adds,
    // such as the openai client's x-stainless-* headers).
    allowedHeaders: [],
    exposedHeaders: ["x-request-id"],
    maxAge: PREFLIGHT_MAX_AGE_S
  })
  return <E, R>(app: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      return yield* (allowed(request.headers["origin"]) ? withCors(app) : app)
    })
}
