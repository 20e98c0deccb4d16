/**
 * Rng: the seeded random generator of one sequence (xoshiro128**, state filled by splitmix32).
 *
 * Only 32-bit integer operations (Math.imul, shifts), so a seed gives the same stream on every machine and
 * Node version; Math.random is never used, which keeps "same seed, same prompt, same tokens" true.
 */

const TWO_POW_32 = 4294967296

/** splitmix32 step: the well-mixed stream that turns one seed into four non-zero state words. */
const splitmix32 = (state: { s: number }): number => {
  state.s = (state.s + 0x9e3779b9) | 0
  let z = state.s
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad)
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97)
  return (z ^ (z >>> 15)) >>> 0
}

export class Rng {
  #a: number
  #b: number
  #c: number
  #d: number

  /**
   * Any finite number is a seed: its integer part is used, and seeds beyond 32 bits (up to 2^53) keep their
   * high word, so 1 and 2^32 + 1 give different streams. Non-finite seeds act as 0.
   */
  constructor(seed: number) {
    const n = Number.isFinite(seed) ? Math.trunc(seed) : 0
    const lo = n >>> 0
    const hi = Math.floor(n / TWO_POW_32) >>> 0
    const state = { s: (lo ^ Math.imul(hi, 0x85ebca6b)) | 0 }
    this.#a = splitmix32(state)
    this.#b = splitmix32(state)
    this.#c = splitmix32(state)
    this.#d = splitmix32(state)
    // xoshiro must not start from the all-zero state; splitmix32 practically never yields it, but be sure
    if ((this.#a | this.#b | this.#c | this.#d) === 0) this.#a = 1
  }

  /** Next 32-bit unsigned integer of the stream. */
  nextUint32(): number {
    const a = this.#a, b = this.#b
    const r = Math.imul(b, 5)
    const result = Math.imul((r << 7) | (r >>> 25), 9) >>> 0
    const t = b << 9
    this.#c ^= a
    this.#d ^= b
    this.#b = b ^ this.#c
    this.#a = a ^ this.#d
    this.#c ^= t
    this.#d = (this.#d << 11) | (this.#d >>> 21)
    return result
  }

  /** Uniform in [0, 1), 32 bits of resolution (enough to draw among 2^17 tokens). */
  next(): number {
    return this.nextUint32() / TWO_POW_32
  }
}
