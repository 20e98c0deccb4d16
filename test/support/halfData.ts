// Deterministic test data for float16 kernels: uniform values from a small LCG (the tests must not depend on
// Math.random) and float16 bit patterns to and from float32.
import { encodeFloat32, toFloat32 } from "../../src/checkpoint/FloatCodec.ts"

/** n values uniform in [-a, a), the same for the same seed. */
export const uniform = (n: number, a: number, seed: number): Float32Array => {
  let s = seed >>> 0
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    out[i] = (s / 2 ** 32 * 2 - 1) * a
  }
  return out
}

/** Float16 bit patterns of `v`, rounded to nearest. */
export const half = (v: Float32Array): Uint16Array => {
  const bytes = encodeFloat32("F16", v)
  return new Uint16Array(bytes.buffer, bytes.byteOffset, v.length)
}

/** Float32 values of float16 bit patterns. */
export const asFloat = (bits: Uint16Array): Float32Array => toFloat32("F16", new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength))
