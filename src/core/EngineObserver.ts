/**
 * What the engine reports as it works, for metrics and logs. The engine calls these synchronously on its loop, per
 * token in the case of `token`: implementations must be cheap. Times are seconds.
 *
 * @since 0.1.0
 */
export type FinishedReason = "stop" | "length" | "abort" | "error" | "timeout"

/** @category models */
export interface EngineObserver {
  /** A request entered the waiting queue. */
  readonly queued: () => void
  /** A request got a KV slot after waiting `queueSeconds`. */
  readonly admitted: (queueSeconds: number) => void
  /** Prompt tokens processed by a prefill chunk. */
  readonly promptTokens: (count: number) => void
  /** The first generated token, `ttftSeconds` after arrival, of a request that waited `queueSeconds`. */
  readonly firstToken: (queueSeconds: number, ttftSeconds: number) => void
  /** A later token, `itlSeconds` after the previous one of the same request. */
  readonly token: (itlSeconds: number) => void
  /** One decode step over `numSeqs` sequences. */
  readonly decodeStep: (numSeqs: number) => void
  /** A request ended; prefill = admission to first token, decode = first token to the end. */
  readonly finished: (reason: FinishedReason, e2eSeconds: number, prefillSeconds: number, decodeSeconds: number) => void
  /** A request failed with a core error of this `errorType` (validation, overloaded, timeout, generation ...). */
  readonly failed: (errorType: string) => void
}

export const silentObserver: EngineObserver = {
  queued: () => {},
  admitted: () => {},
  promptTokens: () => {},
  firstToken: () => {},
  token: () => {},
  decodeStep: () => {},
  finished: () => {},
  failed: () => {}
}
