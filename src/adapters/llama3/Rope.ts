/**
 * Rotary position embedding caches for Llama 3 / 3.1, in the layout GroupQueryAttention reads
 * (`cos_cache`, `sin_cache`: `[maxContext, headDim / 2]`, non-interleaved halves).
 *
 * Frequencies follow transformers' `_compute_default_rope_parameters` and `_compute_llama3_parameters`.
 * Every step is rounded to float32 (`Math.fround`) because transformers computes them in float32 tensors: the
 * reference logits were produced with those roundings, and at position p the angle `p * invFreq` carries a float32
 * rounding error that double-precision maths would not reproduce.
 */
import type { LlamaConfig } from "./LlamaConfig.ts"

const f = Math.fround

/** The subset of the normalized config that decides RoPE frequencies. */
export type RopeConfig = Pick<LlamaConfig, "headDim" | "ropeTheta" | "ropeScaling">

/** Inverse frequencies (`headDim / 2` of them), with Llama 3.1 `llama3` scaling applied when configured. */
export const inverseFrequencies = (config: RopeConfig): Float32Array => {
  const half = config.headDim / 2
  const inv = new Float32Array(half)
  for (let i = 0; i < half; i++) {
    // torch: base ** (arange(0, dim, 2).float() / dim), then 1.0 / that, all float32
    const exponent = f((2 * i) / config.headDim)
    inv[i] = f(1 / f(Math.pow(config.ropeTheta, exponent)))
  }
  const s = config.ropeScaling
  if (s === null) return inv
  const lowFreqWavelen = f(s.originalMaxPositionEmbeddings / s.lowFreqFactor)
  const highFreqWavelen = f(s.originalMaxPositionEmbeddings / s.highFreqFactor)
  for (let i = 0; i < half; i++) {
    const freq = inv[i]
    // torch evaluates `scalar / tensor` as `tensor.reciprocal() * scalar`
    const wavelen = f(f(1 / freq) * f(2 * Math.PI))
    if (wavelen > lowFreqWavelen) {
      inv[i] = f(freq / s.factor)
    } else if (wavelen >= highFreqWavelen) {
      // medium frequencies: blend between the scaled and the original frequency
      const ratio = f(f(1 / wavelen) * s.originalMaxPositionEmbeddings)
      const smooth = f(f(ratio - s.lowFreqFactor) / f(s.highFreqFactor - s.lowFreqFactor))
      inv[i] = f(f(f(f(1 - smooth) * freq) / s.factor) + f(smooth * freq))
    }
  }
  return inv
}

export interface RopeCache {
  /** `[maxContext, headDim / 2]`, row-major. */
  readonly cos: Float32Array
  readonly sin: Float32Array
}

/** cos/sin of `position * invFreq` for positions `0 .. maxContext - 1`. */
export const ropeCache = (config: RopeConfig, maxContext: number): RopeCache => {
  const inv = inverseFrequencies(config)
  const half = inv.length
  const cos = new Float32Array(maxContext * half)
  const sin = new Float32Array(maxContext * half)
  for (let p = 0; p < maxContext; p++) {
    for (let i = 0; i < half; i++) {
      const angle = f(p * inv[i])
      cos[p * half + i] = Math.cos(angle)
      sin[p * half + i] = Math.sin(angle)
    }
  }
  return { cos, sin }
}
