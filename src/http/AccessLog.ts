/**
 * The access log: one line per request, written when its response has been sent (for a stream, when the stream
 * ends or the client goes away): time, request id, method, path, status, duration, prompt and generated tokens
 * (for requests that generated) and client address. The request id is also the `x-request-id` response header;
 * a sane incoming `x-request-id` is kept, so a proxy's id follows the request through.
 *
 * Tokens are counted from the engine's events: `recordingUsage` wraps the engine a request gets so that whatever
 * the route does with the stream, the counts land in the request's `RequestUsage`.
 *
 * @since 0.1.0
 */
import { Context, Effect, Option, Stream } from "effect"
import { HttpEffect, HttpServerError, HttpServerRequest, HttpServerResponse } from "effect/http"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { randomUUID } from "node:crypto"
import type { Engine } from "../core/Engine.ts"

/** Token counts of the request being served; filled in while its generation runs. */
export interface RequestUsage {
  promptTokens: number | undefined
  completionTokens: number | undefined
}

/**
 * The current request's usage record (undefined outside a request, e.g. the CLI or an embedded engine).
 *
 * @category references
 */
export const CurrentRequestUsage = Context.Reference<RequestUsage | undefined>("chorus/http/AccessLog/CurrentRequestUsage", {
  defaultValue: () => undefined
})

type EngineService = Engine["Service"]

/**
 * The engine with `submit` counting the request's tokens into `CurrentRequestUsage`. Counting happens per batch of
 * events, not per event (this runs per token), and still holds partial counts when the client goes away.
 *
 * @category constructors
 */
export const recordingUsage = (engine: EngineService): EngineService => ({
  ...engine,
  submit: (request) =>
    Effect.gen(function*() {
      const usage = yield* CurrentRequestUsage
      const events = yield* engine.submit(request)
      if (usage === undefined) return events
      return events.pipe(
        Stream.mapArray((batch) => {
          for (const e of batch) {
            switch (e._tag) {
              case "Started":
                usage.promptTokens = e.promptTokens
                usage.completionTokens = 0
                break
              case "Token":
                usage.completionTokens = (usage.completionTokens ?? 0) + 1
                break
              case "Finished":
                usage.promptTokens = e.usage.promptTokens
                usage.completionTokens = e.usage.completionTokens
                break
            }
          }
          return batch
        })
      )
    })
})

/** Ids a client or proxy may pass in: short, printable, no spaces or quotes (they end up in log lines). */
const SANE_ID = /^[A-Za-z0-9._~:@+=\/-]{1,128}$/

const requestIdOf = (header: string | undefined): string => (header !== undefined && SANE_ID.test(header) ? header : randomUUID())

/** nginx's status for "the client closed the connection before the response ended"; effect/http uses it too. */
const CLIENT_CLOSED_REQUEST = 499

/**
 * Once a stream has started, its status is 200 whatever happens next: the Node response that was never ended
 * tells a client that went away from one that got everything.
 */
const clientWentAway = (request: HttpServerRequest.HttpServerRequest): boolean => {
  const response = NodeHttpServerRequest.toServerResponse(request)
  return !response.writableEnded && response.destroyed
}

const withRequestId = (id: string) => (response: HttpServerResponse.HttpServerResponse) => HttpServerResponse.setHeader(response, "x-request-id", id)

/**
 * Middleware for `HttpRouter.serve` (it must wrap the sending of the response, so that a stream's line is written
 * when the stream ends). With `log: false` it only sets `x-request-id`.
 *
 * @category middleware
 */
export const accessLog = (options: { readonly log: boolean }) =>
<E, R>(app: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const id = requestIdOf(request.headers["x-request-id"])
    const started = performance.now()
    // Read now: once the client has gone, the socket no longer knows its peer.
    const client = Option.getOrElse(request.remoteAddress, () => "-")
    const usage: RequestUsage = { promptTokens: undefined, completionTokens: undefined }
    yield* HttpEffect.appendPreResponseHandler((_request, response) => Effect.succeed(withRequestId(id)(response)))
    const served = app.pipe(
      // A middleware that answers by itself (a CORS preflight) skips the pre-response handlers; its response is
      // sent as returned here.
      Effect.map(withRequestId(id)),
      Effect.provideService(CurrentRequestUsage, usage)
    )
    if (!options.log) return yield* served
    return yield* served.pipe(
      Effect.onExit((exit) => {
        // A failure has already been sent as a response (or the connection dropped): its status is the one the
        // server derived from the cause.
        const status = clientWentAway(request)
          ? CLIENT_CLOSED_REQUEST
          : exit._tag === "Success"
          ? exit.value.status
          : HttpServerError.causeResponseStripped(exit.cause)[0].status
        const questionMark = request.url.indexOf("?")
        return Effect.logInfo("request").pipe(
          Effect.annotateLogs({
            request_id: id,
            method: request.method,
            // Never the query string: AIME clients put their API key there.
            path: questionMark < 0 ? request.url : request.url.slice(0, questionMark),
            status,
            duration_ms: Math.round((performance.now() - started) * 10) / 10,
            ...(usage.promptTokens === undefined ? {} : { prompt_tokens: usage.promptTokens }),
            ...(usage.completionTokens === undefined ? {} : { completion_tokens: usage.completionTokens }),
            client
          })
        )
      })
    )
  })
