// RoPE caches against a direct transcription of transformers' `_compute_llama3_parameters` (float32 tensors).
import { Effect } from "effect"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { type LlamaConfig, loadLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { inverseFrequencies, ropeCache } from "../../../src/adapters/llama3/Rope.ts"

const fixture = (name: string) => path.resolve(import.meta.dirname, "../../fixtures", name)
const load = (name: string) => Effect.runPromise(loadLlamaConfig(fixture(name)))

/** Element-wise ops on float32 "tensors", as torch evaluates them (`scalar / t` is `t.reciprocal() * scalar`). */
const F = (xs: ArrayLike<number>) => Float32Array.from(xs)
const map = (t: Float32Array, f: (x: number, i: number) => number) => F(Array.from(t, f))

/** transformers: default inverse frequencies, then `_compute_llama3_parameters`. */
const transformersInvFreq = (config: LlamaConfig): Float32Array => {
  const dim = config.headDim
  const base = config.ropeTheta
  const arange = F(Array.from({ length: dim / 2 }, (_, i) => 2 * i))
  const exponent = map(arange, (x) => x / dim)
  const powed = map(exponent, (x) => Math.pow(base, x))
  const invFreq = map(map(powed, (x) => 1 / x), (x) => x * 1.0)
  const s = config.ropeScaling
  if (s === null) return invFreq
  const oldContextLen = s.originalMaxPositionEmbeddings
  const lowFreqWavelen = oldContextLen / s.lowFreqFactor
  const highFreqWavelen = oldContextLen / s.highFreqFactor
  const wavelen = map(map(invFreq, (x) => 1 / x), (x) => x * Math.fround(2 * Math.PI))
  let invFreqLlama = map(invFreq, (x, i) => (wavelen[i] > lowFreqWavelen ? Math.fround(x / s.factor) : x))
  const ratio = map(map(wavelen, (x) => 1 / x), (x) => x * oldContextLen)
  const smoothFactor = map(map(ratio, (x) => x - s.lowFreqFactor), (x) => x / (s.highFreqFactor - s.lowFreqFactor))
  const oneMinus = map(smoothFactor, (x) => 1 - x)
  const a = map(map(oneMinus, (x, i) => x * invFreqLlama[i]), (x) => x / s.factor)
  const b = map(smoothFactor, (x, i) => x * invFreqLlama[i])
  const smoothed = map(a, (x, i) => x + b[i])
  const isMedium = Array.from(wavelen, (w) => !(w < highFreqWavelen) && !(w > lowFreqWavelen))
  invFreqLlama = map(invFreqLlama, (x, i) => (isMedium[i] ? smoothed[i] : x))
  return invFreqLlama
}

describe("RoPE caches", () => {
  it("tiny-llama3-b (llama3 scaling): inverse frequencies equal transformers' and cover all three regimes", async () => {
    const config = await load("tiny-llama3-b")
    expect(config.ropeScaling).not.toBeNull()
    const ours = inverseFrequencies(config)
    const ref = transformersInvFreq(config)
    expect(Array.from(ours)).toEqual(Array.from(ref))
    const plain = inverseFrequencies({ ...config, ropeScaling: null })
    const ratios = Array.from(ours, (x, i) => x / plain[i])
    // head_dim 16: wavelengths 6, 32, 167, 861 (high, kept), 4443 (medium, blended), >8192 (low, divided by 8)
    expect(ratios.slice(0, 4)).toEqual([1, 1, 1, 1])
    expect(ratios[4]).toBeGreaterThan(1 / 8)
    expect(ratios[4]).toBeLessThan(1)
    for (const r of ratios.slice(5)) expect(r).toBeCloseTo(1 / 8, 6)
  })

  it("tiny-llama3-b: cos/sin caches over 8192 positions match the float32 reference formula", async () => {
    const config = await load("tiny-llama3-b")
    const maxContext = 8192
    const { cos, sin } = ropeCache(config, maxContext)
    const half = config.headDim / 2
    expect(cos.length).toBe(maxContext * half)
    const inv = transformersInvFreq(config)
    let maxDiff = 0
    for (let p = 0; p < maxContext; p++) {
      for (let i = 0; i < half; i++) {
        const angle = Math.fround(p * inv[i]) // freqs = inv_freq @ position_ids, in float32
        maxDiff = Math.max(maxDiff, Math.abs(cos[p * half + i] - Math.cos(angle)), Math.abs(sin[p * half + i] - Math.sin(angle)))
      }
    }
    expect(maxDiff).toBeLessThan(1e-6)
    // Sanity against plain double-precision maths at small positions.
    for (let p = 0; p < 64; p++) {
      expect(cos[p * half + 7]).toBeCloseTo(Math.cos((p * Math.pow(500000, -14 / 16)) / 8), 6)
    }
  })

  it("tiny-llama3-a (no scaling): frequencies are theta^(-2i/d)", async () => {
    const config = await load("tiny-llama3-a")
    expect(config.ropeScaling).toBeNull()
    const inv = inverseFrequencies(config)
    expect(Array.from(inv)).toEqual(Array.from(transformersInvFreq(config)))
    inv.forEach((x, i) => expect(x).toBeCloseTo(Math.pow(500000, (-2 * i) / 16), 7))
  })
})
