/**
 * The serving metrics of a Chorus engine, named as vLLM names them (`vllm:` -> `chorus:`) so existing
 * dashboards and alerts carry over, plus a few of Chorus's own about decode-step batching.
 *
 * Every time is in seconds. The engine calls the typed methods; live queue and KV-cache figures are read from
 * callbacks at scrape time (`bindGauges`) so the engine never has to keep gauges in sync.
 *
 * @since 0.1.0
 */
import { type Counter, type CounterChild, type Histogram, type HistogramChild, Registry } from "./Prometheus.ts"

/** vLLM's default time-to-first-token buckets (seconds). */
export const TTFT_BUCKETS: ReadonlyArray<number> = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560
]

/** vLLM's inter-token-latency buckets with finer ones in front: a Chorus decode step can take well under 1 ms. */
export const ITL_BUCKETS: ReadonlyArray<number> = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
  0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80
]

/** vLLM's request latency buckets (seconds), used for queue, prefill, decode and end-to-end times. */
export const REQUEST_LATENCY_BUCKETS: ReadonlyArray<number> = [
  0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680
]

/** Sequences per decode step. */
export const ITERATION_BUCKETS: ReadonlyArray<number> = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

/** Why a request ended, as `chorus:request_success_total{finished_reason}` reports it. */
export type FinishedReason = "stop" | "length" | "abort" | "error" | "timeout"

const FINISHED_REASONS: ReadonlyArray<FinishedReason> = ["stop", "length", "abort", "error", "timeout"]

/** Live figures read at each scrape. */
export interface LiveGauges {
  /** Requests currently decoding or prefilling. */
  readonly running: () => number
  /** Requests waiting for a slot. */
  readonly waiting: () => number
  /** KV-cache slots in use / slots, 0..1. */
  readonly kvUsage: () => number
}

/** `CheckpointError` -> `checkpoint_error`, `KVCacheFull` -> `kv_cache_full`; snake_case input is unchanged. */
export const toErrorType = (s: string): string =>
  s
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1_$2")
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, "_")
    .replace(/_+/g, "_")
    .replace(/^_|_$/g, "") || "unknown"

/** The engine's metrics, all registered in `registry` (render it to serve `/metrics`). */
export class EngineMetrics {
  readonly registry: Registry
  private readonly ttft: Histogram
  private readonly itl: HistogramChild
  private readonly queueTime: Histogram
  private readonly e2e: Histogram
  private readonly prefillTime: Histogram
  private readonly decodeTime: Histogram
  private readonly iterationSeqs: HistogramChild
  private readonly promptTokensTotal: Counter
  private readonly generationTokensTotal: CounterChild
  private readonly success: Record<FinishedReason, CounterChild>
  private readonly failures: Counter
  private readonly decodeSteps: CounterChild
  private readonly batchedDecodeSteps: CounterChild
  private live: LiveGauges = { running: () => 0, waiting: () => 0, kvUsage: () => 0 }

  constructor(registry: Registry = new Registry()) {
    const r = registry
    this.registry = r
    this.ttft = r.histogram("chorus:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS)
    this.itl = r
      .histogram("chorus:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
      .child({})
    this.queueTime = r.histogram(
      "chorus:request_queue_time_seconds",
      "Histogram of time spent waiting in the queue in seconds.",
      REQUEST_LATENCY_BUCKETS
    )
    this.e2e = r.histogram(
      "chorus:e2e_request_latency_seconds",
      "Histogram of end to end request latency in seconds.",
      REQUEST_LATENCY_BUCKETS
    )
    this.prefillTime = r.histogram(
      "chorus:request_prefill_time_seconds",
      "Histogram of time spent in the prefill phase of a request in seconds.",
      REQUEST_LATENCY_BUCKETS
    )
    this.decodeTime = r.histogram(
      "chorus:request_decode_time_seconds",
      "Histogram of time spent in the decode phase of a request in seconds.",
      REQUEST_LATENCY_BUCKETS
    )
    r.gaugeFn("chorus:num_requests_running", "Number of requests running (prefill or decode).", () => this.live.running())
    r.gaugeFn("chorus:num_requests_waiting", "Number of requests waiting for a slot.", () => this.live.waiting())
    r.gaugeFn("chorus:kv_cache_usage_perc", "KV-cache usage: slots in use / slots, 0 to 1.", () => this.live.kvUsage())
    this.promptTokensTotal = r.counter("chorus:prompt_tokens_total", "Number of prefill tokens processed.")
    this.generationTokensTotal = r
      .counter("chorus:generation_tokens_total", "Number of generation tokens processed.")
      .child({})
    const success = r.counter("chorus:request_success_total", "Count of finished requests by finish reason.", [
      "finished_reason"
    ])
    // every reason is present from the start, so rate() sees 0 rather than a missing series
    this.success = Object.fromEntries(
      FINISHED_REASONS.map((reason) => [reason, success.child({ finished_reason: reason })])
    ) as Record<FinishedReason, CounterChild>
    this.decodeSteps = r.counter("chorus:num_decode_steps_total", "Number of decode steps run.").child({})
    this.batchedDecodeSteps = r
      .counter("chorus:num_batched_decode_steps_total", "Number of decode steps that carried more than one sequence.")
      .child({})
    this.iterationSeqs = r
      .histogram("chorus:iteration_tokens_total", "Histogram of sequences per decode step.", ITERATION_BUCKETS)
      .child({})
    this.failures = r.counter("chorus:request_failure_total", "Count of failed requests by error type.", ["error_type"])
  }

  /** Reads running/waiting requests and KV-cache usage (0..1) from these callbacks at every scrape. */
  bindGauges(live: LiveGauges): void {
    this.live = live
  }

  /** Counts `n` prompt (prefill) tokens. */
  promptTokens(n: number): void {
    this.promptTokensTotal.inc(n)
  }

  /** First generated token: queue time and time to first token (seconds); counts one generation token. */
  firstToken(queueSeconds: number, ttftSeconds: number): void {
    this.queueTime.observe(queueSeconds)
    this.ttft.observe(ttftSeconds)
    this.generationTokensTotal.inc()
  }

  /** Each later generated token: seconds since the previous token of the same request; counts one generation token. */
  token(itlSeconds: number): void {
    this.itl.observe(itlSeconds)
    this.generationTokensTotal.inc()
  }

  /** A request ended: end-to-end, prefill and decode seconds (pass undefined for a phase it never reached). */
  finished(reason: FinishedReason, e2eSeconds: number, prefillSeconds?: number, decodeSeconds?: number): void {
    this.success[reason].inc()
    this.e2e.observe(e2eSeconds)
    if (prefillSeconds !== undefined) this.prefillTime.observe(prefillSeconds)
    if (decodeSeconds !== undefined) this.decodeTime.observe(decodeSeconds)
  }

  /** One decode step carrying `numSeqs` sequences. */
  decodeStep(numSeqs: number): void {
    this.decodeSteps.inc()
    if (numSeqs > 1) this.batchedDecodeSteps.inc()
    this.iterationSeqs.observe(numSeqs)
  }

  /** A request failed with this error (an error tag such as `DeadlineExceeded` is snake_cased). */
  failed(errorType: string): void {
    this.failures.inc({ error_type: toErrorType(errorType) })
  }
}

/** `new EngineMetrics(registry)`: a fresh registry unless one is given. */
export const makeEngineMetrics = (registry?: Registry): EngineMetrics => new EngineMetrics(registry)
