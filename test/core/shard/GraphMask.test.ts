// The grammar masks of a graph-masked step in the graph's form (`GraphMask.ts`): id lists for rows that allow few ids,
// bitmask rows for the others. `test/adapters/llama3/MaskedGreedy.test.ts` runs both through the graph.
import { describe, expect, it } from "vitest"
import { GraphMaskBuilder, MAX_SPARSE_IDS, sparseWidth } from "../../../src/core/shard/GraphMask.ts"

const rowOf = (vocab: number, ids: ReadonlyArray<number>): Int32Array => {
  const row = new Int32Array(Math.ceil(vocab / 32))
  for (const id of ids) row[id >> 5]! |= 1 << (id & 31)
  return row
}

describe("GraphMaskBuilder", () => {
  it("lists each row's ids ascending, padded to the step's width with the row's last id", () => {
    const b = new GraphMaskBuilder(3, 1000)
    b.add(0, rowOf(1000, [999, 5, 31, 32, 64]))
    b.add(2, rowOf(1000, Array.from({ length: 20 }, (_, i) => 3 * i)))
    const m = b.build()
    expect([...m.sparseRows]).toEqual([0n, 2n])
    expect(m.sparseK).toBe(32)
    const ids = [...m.sparseIds].map(Number)
    expect(ids.slice(0, 32)).toEqual([5, 31, 32, 64, ...new Array(28).fill(999)])
    expect(ids.slice(32)).toEqual([...Array.from({ length: 20 }, (_, i) => 3 * i), ...new Array(12).fill(57)])
    expect(m.denseRows.length).toBe(0)
    expect(m.bitmask.length).toBe(0)
  })

  it("ignores ids at or past the vocabulary (a padded last word)", () => {
    const b = new GraphMaskBuilder(1, 40)
    b.add(0, rowOf(64, [3, 39, 40, 63]))
    expect([...b.build().sparseIds].map(Number)).toEqual([3, 39, ...new Array(14).fill(39)])
  })

  it("sends a row with more than MAX_SPARSE_IDS ids (or none) as its bitmask", () => {
    const vocab = 4 * MAX_SPARSE_IDS
    const b = new GraphMaskBuilder(3, vocab)
    const atMost = rowOf(vocab, Array.from({ length: MAX_SPARSE_IDS }, (_, i) => 2 * i))
    const over = rowOf(vocab, Array.from({ length: MAX_SPARSE_IDS + 1 }, (_, i) => 3 * i))
    b.add(0, atMost)
    b.add(1, over)
    b.add(2, new Int32Array(vocab / 32))
    const m = b.build()
    expect([...m.sparseRows]).toEqual([0n])
    expect(m.sparseK).toBe(MAX_SPARSE_IDS)
    expect([...m.denseRows]).toEqual([1n, 2n])
    expect([...m.bitmask.subarray(0, vocab / 32)]).toEqual([...over])
    expect(m.bitmask.subarray(vocab / 32).every((w) => w === 0)).toBe(true)
  })

  it("no constrained row: empty lists; widths are powers of two from 16", () => {
    const m = new GraphMaskBuilder(4, 128).build()
    expect([m.sparseRows.length, m.sparseIds.length, m.denseRows.length, m.bitmask.length, m.sparseK]).toEqual([0, 0, 0, 0, 1])
    expect([1, 16, 17, 32, 33, 100, 1024].map(sparseWidth)).toEqual([16, 16, 32, 32, 64, 128, 1024])
  })
})
