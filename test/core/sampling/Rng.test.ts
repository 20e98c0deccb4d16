import { describe, expect, it } from "vitest"
import { Rng } from "../../../src/core/sampling/Rng.ts"

const take = (rng: Rng, n: number): Array<number> => Array.from({ length: n }, () => rng.nextUint32())

describe("Rng", () => {
  it("matches an independent implementation of splitmix32 + xoshiro128** (cross-machine determinism)", () => {
    // values from a separate Python implementation of the same algorithms
    expect(take(new Rng(0), 5)).toEqual([1789933344, 44971166, 2521387044, 3848737593, 1138324114])
    expect(take(new Rng(42), 5)).toEqual([660444221, 3652823732, 77672526, 910233633, 2297337756])
    expect(take(new Rng(1), 3)).toEqual([393288148, 2174103013, 3814759091])
    expect(take(new Rng(2 ** 32 + 1), 3)).toEqual([2113752136, 1120643331, 1514025516])
  })

  it("gives the same stream for the same seed and different streams for different seeds", () => {
    expect(take(new Rng(123), 100)).toEqual(take(new Rng(123), 100))
    expect(take(new Rng(123), 100)).not.toEqual(take(new Rng(124), 100))
    expect(take(new Rng(-5), 10)).not.toEqual(take(new Rng(5), 10))
    expect(take(new Rng(7.9), 10)).toEqual(take(new Rng(7), 10))
    expect(take(new Rng(Number.NaN), 10)).toEqual(take(new Rng(0), 10))
  })

  it("next() is uniform in [0, 1)", () => {
    const rng = new Rng(9)
    const n = 100_000
    const bins = new Array<number>(10).fill(0)
    let sum = 0
    for (let i = 0; i < n; i++) {
      const u = rng.next()
      expect(u >= 0 && u < 1).toBe(true)
      sum += u
      bins[Math.floor(u * 10)]++
    }
    expect(Math.abs(sum / n - 0.5)).toBeLessThan(0.005)
    // chi-square with 9 degrees of freedom: 27.9 is the 0.999 quantile
    const chi2 = bins.reduce((acc, b) => acc + (b - n / 10) ** 2 / (n / 10), 0)
    expect(chi2).toBeLessThan(27.9)
  })
})
