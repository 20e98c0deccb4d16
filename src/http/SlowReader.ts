/**
 * Backpressure for streamed responses. The engine produces a stream's events as fast as decode steps run, whatever
 * the client reads; a client that stops reading would otherwise have its whole generation buffered in the server
 * (about 2.3 MB for 8,000 tokens) while its sequence keeps a KV slot. The guard consumes the frames itself, counts
 * the bytes not yet taken by the response writer plus those waiting in the socket's user-space buffer, and aborts
 * the response once that passes a byte bound or the writer has been stuck for a time bound: the connection closes,
 * which ends the engine stream and frees the slot before the next step.
 *
 * @since 0.1.0
 */
import { Cause, Effect, Queue, Stream } from "effect"
import { HttpServerRequest } from "effect/http"
import { NodeHttpServerRequest } from "@effect/platform-node"

/** @category models */
export interface SlowReaderLimits {
  /** Bytes produced but not yet written to the socket beyond which the stream is aborted. */
  readonly maxBufferedBytes: number
  /** Milliseconds the writer may wait for the client to read before the stream is aborted. */
  readonly maxStallMs: number
}

/** Default limits: far beyond what a reader that keeps up (even at a few KB/s) ever has outstanding. */
export const defaultSlowReaderLimits: SlowReaderLimits = { maxBufferedBytes: 1024 * 1024, maxStallMs: 30_000 }

/** The response side the guard watches and, when it gives up, closes. */
export interface ResponseSink {
  /** Bytes accepted by the socket writer but not yet handed to the kernel. */
  readonly pendingBytes: () => number
  /** True while the writer waits for the socket to drain. */
  readonly needsDrain: () => boolean
  /** Closes the connection. */
  readonly abort: () => void
}

/** The Node response behind the current request. */
export const currentResponseSink = Effect.map(HttpServerRequest.HttpServerRequest, (request): ResponseSink => {
  const response = NodeHttpServerRequest.toServerResponse(request)
  return {
    pendingBytes: () => response.writableLength,
    needsDrain: () => response.writableNeedDrain,
    abort: () => response.destroy()
  }
})

/**
 * Runs `frames` ahead of the response writer, within the limits; `onAbort` is called once when a slow reader is cut.
 *
 * @category combinators
 */
export const guardSlowReader = <E>(
  frames: Stream.Stream<string, E>,
  sink: ResponseSink,
  limits: SlowReaderLimits,
  onAbort: () => void
): Stream.Stream<string, E> =>
  Stream.callback<string, E>((queue) =>
    Effect.gen(function*() {
      // Sizes of the frames still in the queue, oldest first: the writer takes from the front.
      const sizes: Array<number> = []
      let queued = 0
      let stalledSince: number | undefined
      let aborted = false
      const settle = () => {
        const inQueue = Queue.sizeUnsafe(queue)
        while (sizes.length > inQueue) queued -= sizes.shift()!
      }
      const offer = (frame: string) => {
        if (aborted) return
        settle()
        const now = performance.now()
        if (sizes.length === 0 && !sink.needsDrain()) stalledSince = undefined
        else stalledSince ??= now
        const size = Buffer.byteLength(frame)
        sizes.push(size)
        queued += size
        Queue.offerUnsafe(queue, frame)
        if (queued + sink.pendingBytes() > limits.maxBufferedBytes || (stalledSince !== undefined && now - stalledSince > limits.maxStallMs)) {
          aborted = true
          sizes.length = 0
          onAbort()
          // Closing the connection interrupts the request, which ends the engine stream and frees the sequence's slot.
          sink.abort()
        }
      }
      yield* Stream.runForEach(frames, (frame) => Effect.sync(() => offer(frame))).pipe(
        Effect.matchCause({
          onSuccess: () => Queue.endUnsafe(queue),
          onFailure: (cause) => Queue.failCauseUnsafe(queue, cause as Cause.Cause<E>)
        }),
        Effect.forkScoped
      )
    })
  )
