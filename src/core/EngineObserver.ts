/**
 * What the engine reports as it works, for metrics and logs. The engine calls these synchronously on its loop, per
 * token in the case of `token`: implementations must be cheap. Times are seconds.
 *
 * @since 0.1.0
 */
export type FinishedReason = "stop" | "length" | "abort" | "error" | "timeout"

/** One request that left the engine, however it ended: every sequence the engine took is reported exactly once. */
export interface FinishedRequest {
  readonly reason: FinishedReason
  /** Arrival to the end. */
  readonly e2eSeconds: number
  /** Admission to the first token; undefined when it never got one (aborted or failed before it). */
  readonly prefillSeconds: number | undefined
  /** First token to the end; undefined without a first token. */
  readonly decodeSeconds: number | undefined
  readonly promptTokens: number
  readonly generationTokens: number
  /** The request's token limit (its `max_tokens`). */
  readonly maxTokens: number
}

/**
 * Where one engine step's time went (seconds), for finding what limits throughput: the shards' own compute
 * against the round trip to their threads and the engine loop's work between steps.
 */
export interface StepTiming {
  /**
   * From handing the step to the first shard to the last shard's answer (every shard, in order). With micro-batches
   * in flight this includes the time the step waited behind another one at a shard.
   */
  readonly shardsSeconds: number
  /** Of that, the time the shards spent in their runtime's `run` calls (as they measured it). */
  readonly runSeconds: number
  /**
   * From the latest step's answer to this step's hand-off: scheduling, streaming tokens, other fibers (0 after an
   * idle wait, and for a micro-batch handed out before any answer since the previous hand-off).
   */
  readonly betweenSeconds: number
}

/** When one shard's worker thread ran one step (milliseconds on the engine thread's `performance.now()` clock). */
export interface ShardBusy {
  readonly shard: number
  /** The engine's step number (its hand-off order), shared by the step's spans on every shard. */
  readonly step: number
  readonly numSeqs: number
  readonly startedAt: number
  readonly endedAt: number
}

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
  /** One engine iteration computed `numTokens` tokens: prompt tokens of its prefill chunks plus one per decoding row. */
  readonly engineStep: (numTokens: number) => void
  /** One step's time split (optional: observers written before it need not implement it). */
  readonly stepTiming?: (timing: StepTiming) => void
  /**
   * A shard finished its part of a step (optional). With micro-batches in flight, spans of different shards overlap:
   * that is the pipelining at work.
   */
  readonly shardBusy?: (busy: ShardBusy) => void
  /** A request ended (stop, length, abort by its client or while queued, error, deadline). */
  readonly finished: (request: FinishedRequest) => void
  /** A running sequence lost its KV blocks to make room; it waits to be recomputed. */
  readonly preempted: () => void
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
  engineStep: () => {},
  finished: () => {},
  preempted: () => {},
  failed: () => {}
}
