/**
 * The grammar masks of one graph-masked step (`SamplerTable.graphMasked`) in the form the graph takes them
 * (`TensorNames.ts`): a row whose grammar allows at most `MAX_SPARSE_IDS` ids (inside an enum word, a number,
 * between array items: most constrained steps) goes in as the list of those ids (`allowed_rows`, `allowed_ids`), and
 * the graph gathers just those logits; a row that allows more (a free string) goes in as its xgrammar bitmask
 * (`token_bitmask_rows`, `token_bitmask`), unpacked over that row alone. Rows in neither list keep the graph's plain
 * ArgMax.
 *
 * The lists of a step share one width, the largest row's count rounded up to a power of two (at least 16), so a
 * step's input shapes come from a handful; a shorter row repeats its last (largest) id, so ties in the graph's ArgMax
 * still go to the lowest id, as in the sampler.
 */

/** Above this many allowed ids a row goes in as a bitmask (the padded list would cost more than unpacking the row). */
export const MAX_SPARSE_IDS = 1024
/** The narrowest `allowed_ids` width. */
export const MIN_SPARSE_WIDTH = 16

/** The `allowed_ids` width for a step whose longest list holds `count` ids. */
export const sparseWidth = (count: number): number => {
  let k = MIN_SPARSE_WIDTH
  while (k < count) k *= 2
  return k
}

export interface GraphMask {
  /** `token_bitmask_rows`: the group row each bitmask row masks. */
  readonly denseRows: BigInt64Array
  /** `token_bitmask`: `[denseRows.length, words]`. */
  readonly bitmask: Int32Array
  /** `allowed_rows`: the group row of each id list. */
  readonly sparseRows: BigInt64Array
  /** `allowed_ids`: `[sparseRows.length, sparseK]`, each row ascending, padded with its last id. */
  readonly sparseIds: BigInt64Array
  readonly sparseK: number
}

const littleEndian = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1

const popcount = (x: number): number => {
  x -= (x >>> 1) & 0x55555555
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333)
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24
}

/** Scratch of the id lists, reused from step to step (one worker thread, one step at a time). */
let idScratch = new Int32Array(0)

/**
 * Collects one group's masks, row by row, then `build()`s the graph's form. `words`: the bitmask width,
 * `ceil(vocab / 32)`.
 */
export class GraphMaskBuilder {
  private readonly vocab: number
  private readonly words: number
  private readonly sparse: Array<number> = []
  private readonly counts: Array<number> = []
  private readonly dense: Array<number> = []
  private readonly denseMasks: Array<Int32Array> = []
  private readonly maxSparse: number
  private maxCount = 0

  /** `maxSparse`: the most ids a row's list may hold (tests lower it to reach the bitmask rows on a small vocabulary). */
  constructor(rows: number, vocab: number, maxSparse = MAX_SPARSE_IDS) {
    this.vocab = vocab
    this.words = Math.ceil(vocab / 32)
    this.maxSparse = maxSparse
    if (idScratch.length < rows * maxSparse) idScratch = new Int32Array(rows * maxSparse)
  }

  /**
   * Group row `row`'s mask (xgrammar's bitmask: bit j of word i allows id 32 i + j; ids at or past the vocabulary are
   * ignored). Read now: the caller may reuse `mask` for the next row.
   */
  add(row: number, mask: Int32Array): void {
    const at = this.sparse.length * this.maxSparse
    const usable = Math.min(this.words, mask.length)
    let n = 0
    for (let w = 0; w < usable; w++) {
      let bits = mask[w]!
      if (bits === 0) continue
      if (n + popcount(bits) > this.maxSparse) {
        n = -1
        break
      }
      const base = w * 32
      while (bits !== 0) {
        const low = bits & -bits
        const id = base + 31 - Math.clz32(low)
        if (id < this.vocab) idScratch[at + n++] = id
        bits ^= low
      }
    }
    if (n > 0) {
      this.sparse.push(row)
      this.counts.push(n)
      if (n > this.maxCount) this.maxCount = n
      return
    }
    // too many ids for a list (or none: the graph's ArgMax over an all -Infinity row, as before)
    this.dense.push(row)
    this.denseMasks.push(mask.slice(0, this.words))
  }

  build(): GraphMask {
    const words = this.words
    const bitmask = new Int32Array(this.dense.length * words)
    this.denseMasks.forEach((m, i) => bitmask.set(m, i * words))
    const k = this.sparse.length === 0 ? 1 : sparseWidth(this.maxCount)
    const sparseIds = new BigInt64Array(this.sparse.length * k)
    // int64 ids < 2^31 written as their low 32-bit halves (the high halves stay 0): no BigInt per id
    const halves = littleEndian ? new Int32Array(sparseIds.buffer) : undefined
    for (let s = 0; s < this.sparse.length; s++) {
      const from = s * this.maxSparse
      const n = this.counts[s]!
      const last = idScratch[from + n - 1]!
      for (let j = 0; j < k; j++) {
        const id = j < n ? idScratch[from + j]! : last
        if (halves !== undefined) halves[2 * (s * k + j)] = id
        else sparseIds[s * k + j] = BigInt(id)
      }
    }
    return {
      denseRows: BigInt64Array.from(this.dense, BigInt),
      bitmask,
      sparseRows: BigInt64Array.from(this.sparse, BigInt),
      sparseIds,
      sparseK: k
    }
  }
}

/**
 * No constrained row: what a step that does not fetch `masked_greedy_token` feeds (the graph still declares the
 * inputs, and ORT runs their nodes whatever the fetches: on 0 rows they cost nothing).
 */
export const emptyGraphMask: GraphMask = {
  denseRows: new BigInt64Array(0),
  bitmask: new Int32Array(0),
  sparseRows: new BigInt64Array(0),
  sparseIds: new BigInt64Array(0),
  sparseK: 1
}
