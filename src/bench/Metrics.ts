/**
 * The figures of one load level, from per-request outcomes. Definitions follow `vllm bench serve` (TTFT, TPOT, ITL,
 * E2EL; percentiles by linear interpolation like numpy) and AIME's benchmark (tokens/s per session = "single").
 * Inter-token gaps go into one growable Float64Array per level, so a long run allocates nothing per token.
 */

/** A growable array of doubles: the inter-token gaps of every request of a level, in milliseconds. */
export class Samples {
  private data = new Float64Array(4096)
  length = 0

  push(value: number): void {
    if (this.length === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2)
      bigger.set(this.data)
      this.data = bigger
    }
    this.data[this.length++] = value
  }

  values(): Float64Array {
    return this.data.subarray(0, this.length)
  }
}

/** What one request did. Times are `performance.now()` milliseconds; NaN where not reached. */
export class RequestOutcome {
  ok = false
  /** Why it failed (HTTP status and message, a mid-stream error, a dropped connection). */
  error: string | undefined = undefined
  startMs = Number.NaN
  firstMs = Number.NaN
  endMs = Number.NaN
  /** From the server's usage where given; NaN when the server did not say. */
  promptTokens = Number.NaN
  /** From the server's usage where given, else the streamed outputs counted. */
  outputTokens = 0
  /** Non-empty streamed outputs (SSE chunks, or AIME polls that brought new tokens). */
  outputs = 0
  /** Whether `outputTokens` came from the server (usage / num_generated_tokens) rather than counting. */
  fromServer = false

  fail(reason: string): void {
    this.ok = false
    if (this.error === undefined) this.error = reason
  }
}

/** mean, median, p90, p99 (and std) of a latency in milliseconds. */
export interface Distribution {
  readonly mean: number
  readonly median: number
  readonly p90: number
  readonly p99: number
  readonly std: number
}

/** Every figure of one level. Throughputs per second of the level's measured duration. */
export interface LevelMetrics {
  readonly completed: number
  readonly failed: number
  /** Failure reason -> count. */
  readonly failures: Readonly<Record<string, number>>
  readonly durationS: number
  readonly inputTokens: number
  readonly outputTokens: number
  /** How many of the completed requests had their token counts from the server. */
  readonly tokensFromServer: number
  readonly requestThroughput: number
  readonly outputThroughput: number
  readonly totalTokenThroughput: number
  /** AIME's "single": mean over completed requests of output tokens / end-to-end latency. */
  readonly tokensPerSession: number
  /** Most requests in flight at once. */
  readonly peakInFlight: number
  readonly ttftMs: Distribution
  readonly tpotMs: Distribution
  readonly itlMs: Distribution
  readonly e2elMs: Distribution
}

/** The p-th percentile of sorted values, linear between closest ranks (numpy's default). */
export const percentile = (sorted: ArrayLike<number>, p: number): number => {
  const n = sorted.length
  if (n === 0) return Number.NaN
  const rank = (p / 100) * (n - 1)
  const lo = Math.floor(rank)
  const hi = Math.min(n - 1, lo + 1)
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo)
}

export const distribution = (values: Float64Array): Distribution => {
  const n = values.length
  if (n === 0) return { mean: Number.NaN, median: Number.NaN, p90: Number.NaN, p99: Number.NaN, std: Number.NaN }
  const sorted = Float64Array.from(values).sort()
  let sum = 0
  for (let i = 0; i < n; i++) sum += sorted[i]!
  const mean = sum / n
  let sq = 0
  for (let i = 0; i < n; i++) sq += (sorted[i]! - mean) ** 2
  return { mean, median: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), std: Math.sqrt(sq / n) }
}

/** Summarizes a level: `durationMs` runs from the first send to the last answer of the measured requests. */
export const summarize = (outcomes: ReadonlyArray<RequestOutcome>, itl: Samples, durationMs: number, peakInFlight: number): LevelMetrics => {
  const ok = outcomes.filter((o) => o.ok)
  const failures: Record<string, number> = {}
  for (const o of outcomes) if (!o.ok) failures[o.error ?? "unknown"] = (failures[o.error ?? "unknown"] ?? 0) + 1
  let inputTokens = 0
  let outputTokens = 0
  let fromServer = 0
  let rateSum = 0
  const ttft = new Float64Array(ok.length)
  const e2el = new Float64Array(ok.length)
  const tpot: Array<number> = []
  ok.forEach((o, i) => {
    if (Number.isFinite(o.promptTokens)) inputTokens += o.promptTokens
    outputTokens += o.outputTokens
    if (o.fromServer) fromServer++
    const e2e = o.endMs - o.startMs
    e2el[i] = e2e
    ttft[i] = Number.isFinite(o.firstMs) ? o.firstMs - o.startMs : e2e
    if (e2e > 0) rateSum += o.outputTokens / (e2e / 1000)
    // TPOT excludes the first token; undefined for one-token answers (vLLM skips them too).
    if (o.outputTokens > 1) tpot.push((e2e - ttft[i]!) / (o.outputTokens - 1))
  })
  const seconds = durationMs / 1000
  const per = (n: number) => (seconds > 0 ? n / seconds : 0)
  return {
    completed: ok.length,
    failed: outcomes.length - ok.length,
    failures,
    durationS: seconds,
    inputTokens,
    outputTokens,
    tokensFromServer: fromServer,
    requestThroughput: per(ok.length),
    outputThroughput: per(outputTokens),
    totalTokenThroughput: per(inputTokens + outputTokens),
    tokensPerSession: ok.length > 0 ? rateSum / ok.length : 0,
    peakInFlight,
    ttftMs: distribution(ttft),
    tpotMs: distribution(Float64Array.from(tpot)),
    itlMs: distribution(itl.values()),
    e2elMs: distribution(e2el)
  }
}
