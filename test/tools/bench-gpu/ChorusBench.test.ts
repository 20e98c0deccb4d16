// The Chorus side's prompts (identical to the PyTorch script's) and the statistics it derives from token times.
import { describe, expect, it } from "vitest"
import { benchPrompt, concurrentStats, percentile, streamStats, type Trace } from "../../../tools/bench-gpu/ChorusBench.ts"

describe("ChorusBench", () => {
  it("makes the prompts llama_torch.py's prompt_ids makes (values printed by the Python function)", () => {
    expect(benchPrompt(0, 5, 128256)).toEqual([17, 104746, 81475, 58204, 34933])
    expect(benchPrompt(3, 6, 128256)).toEqual([23774, 503, 105232, 81961, 58690, 35419])
    expect(benchPrompt(2, 4, 640)).toEqual([495, 264, 33, 442])
    expect(Math.max(...benchPrompt(7, 4096, 128256))).toBeLessThan(128000)
  })

  it("takes nearest-rank percentiles like torch_baseline.py", () => {
    const xs = [5, 1, 4, 2, 3]
    expect(percentile(xs, 50)).toBe(3)
    expect(percentile(xs, 99)).toBe(5)
    expect(percentile(xs, 0)).toBe(1)
    expect(percentile(Array.from({ length: 101 }, (_, i) => 100 - i), 99)).toBe(99)
  })

  it("times a stream's decode tokens after its first (prefill) token", () => {
    const t: Trace = { submitted: 0, tokens: [50, 60, 70, 90, 100] }
    expect(streamStats(t)).toEqual({ tokensPerSecond: 4 / 0.05, itlMeanMs: 12.5, itlP50Ms: 10, itlP99Ms: 20, prefillMs: 50 })
    expect(() => streamStats({ submitted: 0, tokens: [5] })).toThrow(/at least 2 tokens/)
  })

  it("rates concurrent streams over the window where all of them decode", () => {
    // Stream a starts at 10 and decodes every 10 ms; b starts at 30 (its prefill came later) and finishes last.
    const a: Trace = { submitted: 0, tokens: [10, 20, 30, 40, 50, 60] }
    const b: Trace = { submitted: 1, tokens: [30, 40, 50, 60, 70, 80] }
    const s = concurrentStats([a, b])
    // Window (30, 60]: a's 40, 50, 60 and b's 40, 50, 60.
    expect(s.steadyTokens).toBe(6)
    expect(s.tokensPerSecond).toBeCloseTo(6 / 0.03, 9)
    expect(s.overallTokensPerSecond).toBeCloseTo(10 / 0.07, 9)
    expect(s.prefillMs).toBe(30)
    // No step inside the window: the overall rate stands in.
    const c = concurrentStats([{ submitted: 0, tokens: [10, 20] }, { submitted: 0, tokens: [20, 30] }])
    expect(c.steadyTokens).toBe(0)
    expect(c.tokensPerSecond).toBe(c.overallTokensPerSecond)
    expect(() => concurrentStats([a, { submitted: 0, tokens: [3] }])).toThrow(/at least 2 tokens/)
  })
})
