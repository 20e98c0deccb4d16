/**
 * The serving metrics of one served model. Where a name is vLLM's, so is its meaning, its label
 * (`model_name`, the served model's id) and its buckets: renaming the prefix `vllm:` to `chorus:` in vLLM's
 * Grafana dashboard makes every panel work. Chorus's own figures about decode-step batching carry names vLLM
 * does not have (`chorus:engine_...`), so nobody mistakes them for vLLM's.
 *
 * Every time is in seconds. The engine calls the typed methods; live queue and KV-cache figures are read from
 * callbacks at scrape time (`bindGauges`) so the engine never has to keep gauges in sync.
 *
 * @since 0.1.0
 */
import type { FinishedReason, FinishedRequest, StepTiming } from "../../core/EngineObserver.ts"
import { type CounterChild, type HistogramChild, Registry } from "./Prometheus.ts"

export type { FinishedReason } from "../../core/EngineObserver.ts"

/** vLLM's time-to-first-token buckets (seconds). */
export const TTFT_BUCKETS: ReadonlyArray<number> = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560
]

/** vLLM's inter-token-latency buckets with finer ones in front: a Chorus decode step can take well under 1 ms. */
export const ITL_BUCKETS: ReadonlyArray<number> = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
  0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80
]

/** vLLM's request latency buckets (seconds), used for queue, prefill, decode, inference and end-to-end times. */
export const REQUEST_LATENCY_BUCKETS: ReadonlyArray<number> = [
  0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680
]

/** vLLM's `iteration_tokens_total` buckets: tokens computed in one engine step. */
export const ITERATION_TOKEN_BUCKETS: ReadonlyArray<number> = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]

/** Sequences per decode step (Chorus's own histogram). */
export const DECODE_STEP_SEQUENCE_BUCKETS: ReadonlyArray<number> = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

/** vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to `max` (the context length). */
export const buckets125 = (max: number): Array<number> => {
  const out: Array<number> = []
  for (let scale = 1; ; scale *= 10) {
    for (const m of [1, 2, 5]) {
      if (m * scale > max) return out
      out.push(m * scale)
    }
  }
}

const FINISHED_REASONS: ReadonlyArray<FinishedReason> = ["stop", "length", "abort", "error", "timeout"]

/** Live figures read at each scrape. */
export interface LiveGauges {
  /** Requests currently decoding or prefilling. */
  readonly running: () => number
  /** Requests waiting for a slot. */
  readonly waiting: () => number
  /** KV blocks in use / blocks, 0..1. */
  readonly kvUsage: () => number
  /** Prompt tokens looked up in the prefix cache, and those found (counters, read at scrape). */
  readonly prefixCacheQueries: () => number
  readonly prefixCacheHits: () => number
}

/** The served model the series are labelled with. */
export interface ServedModel {
  /** The id clients send as `model`; the `model_name` label. */
  readonly modelName: string
  /** Context length: the top of the token-count buckets. */
  readonly maxModelLen: number
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

/** The engine's metrics for one model, all registered in `registry` (render it to serve `/metrics`). */
export class EngineMetrics {
  readonly registry: Registry
  readonly model: ServedModel
  private readonly ttft: HistogramChild
  private readonly itl: HistogramChild
  private readonly tpot: HistogramChild
  private readonly queueTime: HistogramChild
  private readonly e2e: HistogramChild
  private readonly prefillTime: HistogramChild
  private readonly decodeTime: HistogramChild
  private readonly inferenceTime: HistogramChild
  private readonly promptTokensTotal: CounterChild
  private readonly generationTokensTotal: CounterChild
  private readonly success: Record<FinishedReason, CounterChild>
  private readonly promptTokensRequest: HistogramChild
  private readonly generationTokensRequest: HistogramChild
  private readonly maxGenerationTokensRequest: HistogramChild
  private readonly maxTokensParam: HistogramChild
  private readonly iterationTokens: HistogramChild
  private readonly failures: (errorType: string) => CounterChild
  private readonly decodeSteps: CounterChild
  private readonly batchedDecodeSteps: CounterChild
  private readonly decodeStepSeqs: HistogramChild
  private readonly preemptions: CounterChild
  private readonly stepSeconds: Record<"shards" | "run" | "between", CounterChild>
  private live: LiveGauges = { running: () => 0, waiting: () => 0, kvUsage: () => 0, prefixCacheQueries: () => 0, prefixCacheHits: () => 0 }

  constructor(registry: Registry, model: ServedModel) {
    const r = registry
    this.registry = r
    this.model = model
    const label = { model_name: model.modelName }
    const M = ["model_name"]
    const histogram = (name: string, help: string, buckets: ReadonlyArray<number>) =>
      r.histogram(name, help, buckets, M).child(label)
    const counter = (name: string, help: string) => r.counter(name, help, M).child(label)
    const tokenBuckets = buckets125(Math.max(1, model.maxModelLen))

    this.ttft = histogram("chorus:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS)
    this.itl = histogram("chorus:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
    this.tpot = histogram(
      "chorus:request_time_per_output_token_seconds",
      "Histogram of time per output token in seconds, one observation per request (decode time / (tokens - 1)).",
      ITL_BUCKETS
    )
    this.queueTime = histogram(
      "chorus:request_queue_time_seconds",
      "Histogram of time spent in WAITING phase for request.",
      REQUEST_LATENCY_BUCKETS
    )
    this.e2e = histogram("chorus:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS)
    this.prefillTime = histogram(
      "chorus:request_prefill_time_seconds",
      "Histogram of time spent in PREFILL phase for request.",
      REQUEST_LATENCY_BUCKETS
    )
    this.decodeTime = histogram(
      "chorus:request_decode_time_seconds",
      "Histogram of time spent in DECODE phase for request.",
      REQUEST_LATENCY_BUCKETS
    )
    this.inferenceTime = histogram(
      "chorus:request_inference_time_seconds",
      "Histogram of time spent in RUNNING phase for request.",
      REQUEST_LATENCY_BUCKETS
    )
    r.gaugeFn("chorus:num_requests_running", "Number of requests in model execution batches.", () => this.live.running(), label)
    r.gaugeFn("chorus:num_requests_waiting", "Number of requests waiting to be processed.", () => this.live.waiting(), label)
    r.gaugeFn("chorus:kv_cache_usage_perc", "KV-cache usage (blocks in use). 1 means 100 percent usage.", () => this.live.kvUsage(), label)
    r.counterFn(
      "chorus:prefix_cache_queries_total",
      "Prefix cache queries, in terms of number of queried tokens.",
      () => this.live.prefixCacheQueries(),
      label
    )
    r.counterFn("chorus:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.", () => this.live.prefixCacheHits(), label)
    this.preemptions = counter("chorus:num_preemptions_total", "Cumulative number of preemption from the engine.")
    this.promptTokensTotal = counter("chorus:prompt_tokens_total", "Number of prefill tokens processed.")
    this.generationTokensTotal = counter("chorus:generation_tokens_total", "Number of generation tokens processed.")
    const success = r.counter(
      "chorus:request_success_total",
      "Count of finished requests by finish reason (abort: the client left or cancelled, queued or running).",
      ["model_name", "finished_reason"]
    )
    // every reason is present from the start, so rate() sees 0 rather than a missing series
    this.success = Object.fromEntries(
      FINISHED_REASONS.map((reason) => [reason, success.child({ ...label, finished_reason: reason })])
    ) as Record<FinishedReason, CounterChild>
    this.promptTokensRequest = histogram("chorus:request_prompt_tokens", "Number of prefill tokens processed.", tokenBuckets)
    this.generationTokensRequest = histogram("chorus:request_generation_tokens", "Number of generation tokens processed.", tokenBuckets)
    this.maxGenerationTokensRequest = histogram(
      "chorus:request_max_num_generation_tokens",
      "Histogram of maximum number of requested generation tokens.",
      tokenBuckets
    )
    this.maxTokensParam = histogram("chorus:request_params_max_tokens", "Histogram of the max_tokens request parameter.", tokenBuckets)
    this.iterationTokens = histogram(
      "chorus:iteration_tokens_total",
      "Histogram of number of tokens per engine_step.",
      ITERATION_TOKEN_BUCKETS
    )
    const failures = r.counter("chorus:request_failure_total", "Count of failed requests by error type.", ["model_name", "error_type"])
    this.failures = (errorType) => failures.child({ ...label, error_type: toErrorType(errorType) })
    this.decodeSteps = counter("chorus:engine_decode_steps_total", "Number of decode steps run.")
    this.batchedDecodeSteps = counter(
      "chorus:engine_batched_decode_steps_total",
      "Number of decode steps that carried more than one sequence."
    )
    this.decodeStepSeqs = histogram(
      "chorus:engine_decode_step_sequences",
      "Histogram of sequences per decode step.",
      DECODE_STEP_SEQUENCE_BUCKETS
    )
    const step = r.counter(
      "chorus:engine_step_seconds_total",
      "Engine step time by part: shards (hand-off to answer, every shard), run (of that, in the runtime's run calls), " +
        "between (the engine loop between one step's answer and the next hand-off). Divide by the count of " +
        "chorus:iteration_tokens_total for means per step.",
      ["model_name", "part"]
    )
    this.stepSeconds = {
      shards: step.child({ ...label, part: "shards" }),
      run: step.child({ ...label, part: "run" }),
      between: step.child({ ...label, part: "between" })
    }
  }

  /** Where one step's time went. */
  stepTiming(t: StepTiming): void {
    this.stepSeconds.shards.inc(t.shardsSeconds)
    this.stepSeconds.run.inc(t.runSeconds)
    this.stepSeconds.between.inc(t.betweenSeconds)
  }

  /** Reads running/waiting requests and KV-cache usage (0..1) from these callbacks at every scrape. */
  bindGauges(live: LiveGauges): void {
    this.live = live
  }

  /** A running sequence was preempted (its KV blocks freed for others). */
  preempted(): void {
    this.preemptions.inc()
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

  /** A request left the engine, however it ended: counted once by reason, with its sizes and the phases it reached. */
  finished(r: FinishedRequest): void {
    this.success[r.reason].inc()
    this.e2e.observe(r.e2eSeconds)
    this.promptTokensRequest.observe(r.promptTokens)
    this.generationTokensRequest.observe(r.generationTokens)
    // one sequence per engine request (no n > 1 fan-out inside the engine), so the maximum is its own count
    this.maxGenerationTokensRequest.observe(r.generationTokens)
    this.maxTokensParam.observe(r.maxTokens)
    if (r.prefillSeconds !== undefined) {
      this.prefillTime.observe(r.prefillSeconds)
      this.inferenceTime.observe(r.prefillSeconds + (r.decodeSeconds ?? 0))
    }
    if (r.decodeSeconds !== undefined) {
      this.decodeTime.observe(r.decodeSeconds)
      if (r.generationTokens > 1) this.tpot.observe(r.decodeSeconds / (r.generationTokens - 1))
    }
  }

  /** One engine iteration that computed `numTokens` tokens (prompt chunks plus decoding rows). */
  engineStep(numTokens: number): void {
    this.iterationTokens.observe(numTokens)
  }

  /** One decode step carrying `numSeqs` sequences. */
  decodeStep(numSeqs: number): void {
    this.decodeSteps.inc()
    if (numSeqs > 1) this.batchedDecodeSteps.inc()
    this.decodeStepSeqs.observe(numSeqs)
  }

  /** A request failed with this error (an error tag such as `DeadlineExceeded` is snake_cased). */
  failed(errorType: string): void {
    this.failures(errorType).inc()
  }
}

/** `new EngineMetrics(registry, model)`: a fresh registry unless one is given. */
export const makeEngineMetrics = (model: ServedModel, registry: Registry = new Registry()): EngineMetrics =>
  new EngineMetrics(registry, model)
