/**
 * Backpressure for streamed responses. The response writer waits for the socket to drain, so the engine's events
 * for a client that stops reading pile up in the server (about 2.3 MB for 8,000 tokens, on top of the kernel's
 * socket buffers) while its sequence keeps a KV slot. The watch cuts such a response once its socket has made no
 * progress for a time bound: the connection closes, which ends the engine stream and frees the slot before the
 * next step. A client that reads, however slowly, is left alone.
 *
 * One sweep over the open streams a few times per stall bound, no work per token: the streaming path stays as
 * fast as without the watch.
 *
 * @since 0.1.0
 */
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Effect, type Scope, Stream } from "effect"
import { HttpServerRequest } from "effect/http"
import type { ServerResponse } from "node:http"
import type { Http2ServerResponse } from "node:http2"

/** @category models */
export interface SlowReaderLimits {
  /** Milliseconds a stream's socket may stay full without draining before the stream is cut. */
  readonly maxStallMs: number
}

/** Default: far beyond a pause of a reading client on a bad network. */
export const defaultSlowReaderLimits: SlowReaderLimits = { maxStallMs: 30_000 }

/** @category models */
export interface SlowReaderWatch {
  /** `frames` as the current request's response body, cut when its client stops reading. */
  readonly guard: <A, E, R>(frames: Stream.Stream<A, E, R>) => Effect.Effect<Stream.Stream<A, E, R>, never, HttpServerRequest.HttpServerRequest>
}

interface Watched {
  readonly response: ServerResponse | Http2ServerResponse
  /** Since when the socket has been full with no drain; undefined while it takes data. */
  stalledSince: number | undefined
}

/**
 * A watch whose sweep lives in the current scope; `onAbort` is called for each stream it cuts.
 *
 * @category constructors
 */
export const makeSlowReaderWatch = (limits: SlowReaderLimits, onAbort: () => void): Effect.Effect<SlowReaderWatch, never, Scope.Scope> =>
  Effect.gen(function*() {
    const watched = new Set<Watched>()
    const sweep = () => {
      const now = performance.now()
      for (const w of watched) {
        if (!w.response.writableNeedDrain) w.stalledSince = undefined
        else if (w.stalledSince === undefined) w.stalledSince = now
        else if (now - w.stalledSince > limits.maxStallMs) {
          watched.delete(w)
          onAbort()
          // Closing the connection interrupts the request, which ends the engine stream and frees its slot.
          w.response.destroy()
        }
      }
    }
    const period = Math.min(1000, Math.max(10, limits.maxStallMs / 4))
    yield* Effect.forkScoped(Effect.forever(Effect.sleep(period).pipe(Effect.andThen(Effect.sync(sweep)))))

    const guard = <A, E, R>(frames: Stream.Stream<A, E, R>) =>
      Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
        const response = NodeHttpServerRequest.toServerResponse(request)
        const watch = Effect.acquireRelease(
          Effect.sync(() => {
            const w: Watched = { response, stalledSince: undefined }
            // Any drain is progress: a slow reader that keeps reading is never cut.
            const onDrain = () => (w.stalledSince = undefined)
            response.on("drain", onDrain)
            watched.add(w)
            return { w, onDrain }
          }),
          ({ onDrain, w }) =>
            Effect.sync(() => {
              watched.delete(w)
              response.off("drain", onDrain)
            })
        )
        return Stream.unwrap(Effect.as(watch, frames))
      })
    return { guard }
  })
