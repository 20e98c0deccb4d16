import { describe, expect, it } from "vitest"
import { Rng } from "../../../src/core/sampling/Rng.ts"
import { Sampler } from "../../../src/core/sampling/Sampler.ts"
import { greedy, type SamplingParams } from "../../../src/core/sampling/SamplingParams.ts"

const params = (overrides: Partial<SamplingParams>): SamplingParams => ({ ...greedy, ...overrides })

const normals = (rng: Rng, n: number, sd: number, mean = 0): Float32Array => {
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    out[i] = mean + sd * Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next())
  }
  return out
}

// ---- brute-force reference (full copies, full sorts, float64) ----

/** HF repetition penalty over prompt + generated, then OpenAI presence / frequency over generated. */
const refPenalized = (
  logits: ArrayLike<number>,
  prompt: ReadonlyArray<number>,
  generated: ReadonlyArray<number>,
  p: SamplingParams
): Array<number> => {
  const out = Array.from(logits)
  const seen = new Set([...prompt, ...generated])
  for (const id of seen) {
    if (id >= out.length) continue
    out[id] = out[id] > 0 ? out[id] / p.repetitionPenalty : out[id] * p.repetitionPenalty
  }
  const counts = new Map<number, number>()
  for (const id of generated) counts.set(id, (counts.get(id) ?? 0) + 1)
  for (const [id, c] of counts) out[id] -= p.presencePenalty + p.frequencyPenalty * c
  return out
}

/**
 * Probability threshold of the kept set (unnormalised: the max token has weight 1): every kept token has
 * weight >= the returned value, every dropped one less (up to ties). Top-k, then top-p over the renormalised
 * top-k set, then min-p.
 */
const refThreshold = (eff: ReadonlyArray<number>, p: SamplingParams, topP: number, minP: number): number => {
  const max = Math.max(...eff)
  const w = eff.map((l) => Math.exp((l - max) / p.temperature)).sort((a, b) => b - a)
  let n = p.topK > 0 && p.topK < w.length ? p.topK : w.length
  if (topP < 1) {
    const total = w.slice(0, n).reduce((a, b) => a + b, 0)
    let acc = 0
    let c = 0
    while (c < n && acc < topP * total) acc += w[c++]
    n = Math.max(c, 1)
  }
  let threshold = w[n - 1]
  if (minP > 0) threshold = Math.max(threshold, minP)
  return threshold
}

/**
 * Tokens that must be kept and tokens that may be kept. The threshold is taken at p and min-p moved by a
 * relative 1e-6 either way, and weights within 1e-6 of it are ambiguous: ties at the boundary may go either
 * way, and the sampler works with float32 weights.
 */
const refBounds = (eff: ReadonlyArray<number>, p: SamplingParams): { must: Set<number>; may: Set<number> } => {
  const tol = 1e-6
  const strict = refThreshold(eff, p, p.topP < 1 ? p.topP * (1 - tol) : 1, p.minP * (1 + tol))
  const loose = refThreshold(eff, p, p.topP < 1 ? Math.min(p.topP * (1 + tol), 1 - 1e-12) : 1, p.minP * (1 - tol))
  const max = Math.max(...eff)
  const must = new Set<number>()
  const may = new Set<number>()
  eff.forEach((l, i) => {
    const w = Math.exp((l - max) / p.temperature)
    if (w > strict * (1 + tol)) must.add(i)
    if (w >= loose * (1 - tol)) may.add(i)
  })
  return { must, may }
}

const expectWithin = (kept: Int32Array, bounds: { must: Set<number>; may: Set<number> }, label: string): void => {
  const set = new Set(kept)
  const missing = [...bounds.must].filter((i) => !set.has(i))
  const extra = [...set].filter((i) => !bounds.may.has(i))
  expect({ label, missing, extra }).toEqual({ label, missing: [], extra: [] })
}

describe("Sampler: greedy", () => {
  it("returns the argmax, the lowest id on ties, and records nothing random", () => {
    const rng = new Rng(1)
    for (let t = 0; t < 20; t++) {
      const logits = normals(rng, 1000, 3)
      const expected = logits.indexOf(Math.max(...logits))
      expect(new Sampler(greedy, []).sample(logits)).toBe(expected)
    }
    const ties = Float32Array.from([0, 5, 1, 5, 5, -2])
    expect(new Sampler(greedy, []).sample(ties)).toBe(1)
    // a tie created by a penalty: id 4 (seen in the prompt) drops from 10 to 5 and ties id 1 and 3
    const penalized = Float32Array.from([0, 5, 1, 5, 10, -2])
    expect(new Sampler(params({ repetitionPenalty: 2 }), [4]).sample(penalized)).toBe(1)
    expect(new Sampler(params({ repetitionPenalty: 2 }), [0, 1]).sample(penalized)).toBe(4)
  })

  it("reads one row of a batch by offset and vocab", () => {
    const rng = new Rng(2)
    const batch = normals(rng, 4 * 500, 2)
    for (let r = 0; r < 4; r++) {
      const row = batch.slice(r * 500, (r + 1) * 500)
      expect(new Sampler(greedy, []).sample(batch, r * 500, 500)).toBe(row.indexOf(Math.max(...row)))
    }
    expect(() => new Sampler(greedy, []).sample(batch, 1800, 500)).toThrow(RangeError)
  })
})

describe("Sampler: randomness", () => {
  it("same seed gives the same tokens, different seeds differ", () => {
    const rng = new Rng(3)
    const rows = Array.from({ length: 50 }, () => normals(rng, 1000, 1))
    const run = (seed: number, extra: Partial<SamplingParams>): Array<number> => {
      const s = new Sampler(params({ temperature: 1, seed, ...extra }), [1, 2, 3])
      return rows.map((row) => s.sample(row))
    }
    for (const extra of [{}, { topP: 0.9 }, { topK: 50 }, { minP: 0.05, repetitionPenalty: 1.2 }]) {
      expect(run(42, extra)).toEqual(run(42, extra))
      expect(run(42, extra)).not.toEqual(run(43, extra))
    }
  })

  it("draws follow softmax(l / T), restricted to and renormalised over the kept set", () => {
    const logits = Float32Array.from([1, 2, 0.5, -1, 3, 0, 2.5, -0.5])
    const cases: Array<[Partial<SamplingParams>, ReadonlyArray<number>]> = [
      [{ temperature: 0.7 }, [0, 1, 2, 3, 4, 5, 6, 7]],
      [{ temperature: 1.3, topK: 3 }, [1, 4, 6]],
      // T = 1: weights of 4, 6, 1 are 1, 0.61, 0.37 of a total 2.29; the first two hold 0.70 < 0.75
      [{ temperature: 1, topP: 0.75 }, [4, 6, 1]],
      [{ temperature: 1, topP: 0.69 }, [4, 6]],
      // min-p 0.3 at T = 1 keeps weights >= 0.3: ids 4, 6 and 1 (e^-1 = 0.37), not 0 (e^-2)
      [{ temperature: 1, minP: 0.3 }, [4, 6, 1]]
    ]
    const draws = 20_000
    for (const [extra, keep] of cases) {
      const p = params({ seed: 11, ...extra })
      const sampler = new Sampler(p, [])
      const counts = new Array<number>(logits.length).fill(0)
      for (let i = 0; i < draws; i++) counts[sampler.sample(logits)]++
      const w = Array.from(logits, (l, i) => (keep.includes(i) ? Math.exp(l / p.temperature) : 0))
      const total = w.reduce((a, b) => a + b, 0)
      for (let i = 0; i < logits.length; i++) {
        const q = w[i] / total
        const sigma = Math.sqrt((q * (1 - q)) / draws)
        expect(Math.abs(counts[i] / draws - q)).toBeLessThanOrEqual(4.5 * sigma + 1e-12)
      }
    }
  })
})

describe("Sampler: top-k, top-p, min-p keep exactly the reference sets", () => {
  const filters: ReadonlyArray<Partial<SamplingParams>> = [
    { topK: 40 },
    { topK: 300 }, // above the heap size: radix selection by count
    { topK: 999 },
    { topP: 0.9 },
    { topP: 0.5 },
    { topP: 0.99 },
    { minP: 0.05 },
    { topK: 40, topP: 0.8 },
    { topK: 300, topP: 0.9, minP: 0.01 },
    { topP: 0.95, minP: 0.1 },
    { topK: 40, minP: 0.3 },
    { topP: 0.99, minP: 0.2 }
  ]

  it("on random vectors of 1000, many seeds, with and without penalties", () => {
    let checked = 0
    for (let seed = 0; seed < 24; seed++) {
      const rng = new Rng(1000 + seed)
      const logits = normals(rng, 1000, seed % 2 === 0 ? 1 : 3)
      const temperature = [0.5, 1, 1.5][seed % 3]
      const penalties = seed % 4 >= 2
      const prompt = penalties ? Array.from({ length: 60 }, () => rng.nextUint32() % 1000) : []
      const generated = penalties ? Array.from({ length: 20 }, () => rng.nextUint32() % 50) : []
      for (const filter of filters) {
        const p = params({
          temperature,
          seed,
          ...filter,
          ...(penalties ? { repetitionPenalty: 1.3, presencePenalty: 0.4, frequencyPenalty: 0.2 } : {})
        })
        const sampler = new Sampler(p, prompt)
        for (const id of generated) sampler.accept(id)
        const eff = refPenalized(logits, prompt, generated, p)
        const bounds = refBounds(eff, p)
        const kept = sampler.keptSet(logits)
        expectWithin(kept, bounds, `seed ${seed} ${JSON.stringify(filter)}`)
        if (filter.topK !== undefined && filter.topP === undefined && filter.minP === undefined) {
          expect(kept.length).toBe(filter.topK)
        }
        checked++
      }
    }
    expect(checked).toBe(24 * filters.length)
  })

  it("on wide, nearly flat rows where the boundary bucket needs every radix level", () => {
    const rng = new Rng(5)
    // 20000 logits within about 1e-3 of each other: float32 rounding makes many exact ties
    const narrow = normals(rng, 20_000, 1e-3, 1)
    const narrower = normals(rng, 20_000, 1e-4, 1)
    const flat = new Float32Array(20_000).fill(0.25)
    for (const logits of [narrow, narrower, flat]) {
      for (const filter of [{ topP: 0.5 }, { topP: 0.9, minP: 0.999 }, { topK: 300 }, { topK: 5000, topP: 0.3 }]) {
        const p = params({ temperature: 1, ...filter })
        const kept = new Sampler(p, []).keptSet(logits)
        expectWithin(kept, refBounds(Array.from(logits), p), JSON.stringify(filter))
        if (logits === flat) {
          // all weights equal: the counts follow from k and p alone
          const k = filter.topK ?? 20_000
          const expected = filter.topP !== undefined ? Math.ceil(filter.topP * k) : k
          expect(Math.abs(kept.length - expected)).toBeLessThanOrEqual(1)
        }
      }
    }
  })

  it("sampling never leaves the kept set and, with enough draws, returns every kept token", () => {
    const rng = new Rng(8)
    const logits = normals(rng, 1000, 1)
    for (const filter of [{ topK: 12 }, { topK: 300, topP: 0.05 }, { topP: 0.03 }, { minP: 0.6 }]) {
      const p = params({ temperature: 1, seed: 3, ...filter })
      const { must, may } = refBounds(Array.from(logits), p)
      expect(must.size).toBeGreaterThan(1)
      expect(must.size).toBeLessThan(40)
      const sampler = new Sampler(p, [])
      const seen = new Set<number>()
      for (let i = 0; i < 5000; i++) {
        const t = sampler.sample(logits)
        expect(may.has(t)).toBe(true)
        seen.add(t)
      }
      for (const id of must) expect(seen.has(id)).toBe(true)
    }
  })
})

describe("Sampler: edge rows", () => {
  it("gives degenerate rows a defined answer: all -Infinity, +Infinity, NaN", () => {
    const sampler = new Sampler(params({ temperature: 1, topK: 2 }), [])
    expect(sampler.sample(new Float32Array(5).fill(-Infinity))).toBe(0)
    expect(sampler.sample(Float32Array.from([0, Infinity, 1, Infinity]))).toBe(1)
    expect(new Sampler(params({ temperature: 1, topP: 0.5 }), []).sample(Float32Array.from([0, Number.NaN, 50]))).toBe(2)
  })
})

describe("Sampler: penalties", () => {
  it("change the logits as HF (repetition) and OpenAI (presence / frequency) specify", () => {
    const rng = new Rng(6)
    const logits = normals(rng, 300, 2)
    const prompt = [5, 17, 17, 250, 299, 1000, -3] // 1000 and -3 lie outside the vocabulary and are ignored
    const generated = [17, 42, 42, 42, 7, 299]
    for (const extra of [
      { repetitionPenalty: 1.5 },
      { repetitionPenalty: 0.8 },
      { presencePenalty: 0.7 },
      { frequencyPenalty: -0.3 },
      { repetitionPenalty: 1.2, presencePenalty: 0.5, frequencyPenalty: 0.25 }
    ]) {
      const p = params({ temperature: 1, ...extra })
      const sampler = new Sampler(p, prompt)
      for (const id of generated) sampler.accept(id)
      const got = sampler.penalizedLogits(logits)
      const want = refPenalized(logits, prompt.filter((id) => id >= 0 && id < 300), generated, p)
      for (let i = 0; i < 300; i++) expect(got[i]).toBeCloseTo(want[i], 12)
    }
  })

  it("count the sampled tokens themselves", () => {
    // presence 2: each token drops by 2 once, however often it is drawn: 3, 2.5, 2 become 1, 0.5, 0
    const logits = Float32Array.from([3, 2.5, 2, -5])
    const sampler = new Sampler(params({ presencePenalty: 2 }), [])
    expect([0, 1, 2, 3, 4].map(() => sampler.sample(logits))).toEqual([0, 1, 2, 0, 0])
    // frequency 1: each draw of a token lowers it by one more
    const f = new Sampler(params({ frequencyPenalty: 1 }), [])
    expect([0, 1, 2, 3].map(() => f.sample(Float32Array.from([3, 1.5, 0])))).toEqual([0, 0, 1, 0])
  })

  it("never modify the caller's logits", () => {
    const rng = new Rng(7)
    const batch = normals(rng, 2 * 2000, 2)
    const copy = batch.slice()
    const prompt = Array.from({ length: 100 }, () => rng.nextUint32() % 2000)
    for (const extra of [{}, { topK: 20 }, { topK: 500 }, { topP: 0.9 }, { minP: 0.1 }, { topP: 0.8, minP: 0.05 }]) {
      const p = params({ temperature: 0.9, repetitionPenalty: 1.3, presencePenalty: 0.5, frequencyPenalty: 0.5, ...extra })
      const sampler = new Sampler(p, prompt)
      for (let i = 0; i < 30; i++) sampler.sample(batch, (i % 2) * 2000, 2000)
      expect(batch).toEqual(copy)
    }
  })
})
