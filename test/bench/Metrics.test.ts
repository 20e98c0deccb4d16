// The figures' definitions: numpy-style percentiles, vLLM's TTFT/TPOT/E2EL per request, AIME's per-session rate.
import { describe, expect, it } from "vitest"
import { distribution, percentile, RequestOutcome, Samples, summarize } from "../../src/bench/Metrics.ts"

const outcome = (startMs: number, firstMs: number, endMs: number, outputTokens: number, promptTokens: number): RequestOutcome => {
  const o = new RequestOutcome()
  Object.assign(o, { ok: true, startMs, firstMs, endMs, outputTokens, promptTokens, outputs: outputTokens, fromServer: true })
  return o
}

describe("Metrics", () => {
  it("percentiles interpolate between closest ranks like numpy.percentile", () => {
    const sorted = [1, 2, 3, 4]
    expect(percentile(sorted, 50)).toBeCloseTo(2.5, 12)
    expect(percentile(sorted, 90)).toBeCloseTo(3.7, 12)
    expect(percentile(sorted, 99)).toBeCloseTo(3.97, 12)
    expect(percentile([7], 99)).toBe(7)
    expect(percentile([], 50)).toBeNaN()
    const d = distribution(Float64Array.from([4, 1, 3, 2]))
    expect(d).toMatchObject({ mean: 2.5, median: 2.5 })
    expect(d.std).toBeCloseTo(Math.sqrt(1.25), 12)
  })

  it("TTFT, TPOT (excluding the first token, skipping one-token answers), E2EL, throughputs and the per-session rate", () => {
    const a = outcome(0, 100, 400, 4, 10) // TTFT 100, TPOT (400-100)/3 = 100, 10 tok/s
    const b = outcome(50, 100, 200, 1, 20) // TTFT 50, no TPOT, 1/0.15 tok/s
    const failed = new RequestOutcome()
    failed.fail("HTTP 429: queue full")
    failed.fail("a later reason does not replace the first")
    const itl = new Samples()
    for (const gap of [100, 100, 100]) itl.push(gap)
    const m = summarize([a, b, failed], itl, 1000, 2)
    expect(m).toMatchObject({ completed: 2, failed: 1, failures: { "HTTP 429: queue full": 1 }, inputTokens: 30, outputTokens: 5, durationS: 1, peakInFlight: 2 })
    expect(m.requestThroughput).toBe(2)
    expect(m.outputThroughput).toBe(5)
    expect(m.totalTokenThroughput).toBe(35)
    expect(m.tokensPerSession).toBeCloseTo((10 + 1 / 0.15) / 2, 9)
    expect(m.ttftMs.mean).toBe(75)
    expect(m.tpotMs).toMatchObject({ mean: 100, median: 100 })
    expect(m.itlMs.median).toBe(100)
    expect(m.e2elMs.mean).toBe(275)
  })

  it("a level where every request failed has no latency figures and zero rates", () => {
    const o = new RequestOutcome()
    o.fail("connection failed (ECONNREFUSED)")
    const m = summarize([o], new Samples(), 10, 1)
    expect(m.completed).toBe(0)
    expect(m.tokensPerSession).toBe(0)
    expect(m.ttftMs.median).toBeNaN()
  })

  it("Samples grows past its first buffer without losing values", () => {
    const s = new Samples()
    for (let i = 0; i < 10_000; i++) s.push(i)
    expect(s.length).toBe(10_000)
    expect(s.values()[9_999]).toBe(9_999)
    expect(s.values()[4_096]).toBe(4_096)
  })
})
