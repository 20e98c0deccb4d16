// The block pool and KV cache manager alone: no model, no engine. Allocation by blocks, frees (tail first),
// prefix hits through chained hashes, LRU eviction of free cached blocks, the reserved block 0.
import { describe, expect, it } from "vitest"
import { BlockPool } from "../../../src/core/kv/BlockPool.ts"
import { KvCacheManager, type KvSequence } from "../../../src/core/kv/KvCacheManager.ts"

const seq = (id: number, prompt: ReadonlyArray<number>, output: Array<number> = []): KvSequence => ({
  id,
  promptTokenIds: Int32Array.from(prompt),
  outputTokenIds: output
})
const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i)

describe("BlockPool", () => {
  it("never hands out block 0 and refuses what it cannot give whole", () => {
    const pool = new BlockPool(4)
    expect(pool.capacity).toBe(3)
    const got = pool.allocate(3)!
    expect(got.map((b) => b.id).sort()).toEqual([1, 2, 3])
    expect(pool.allocate(1)).toBeUndefined()
    expect(pool.usage).toBe(1)
    pool.release(got)
    expect(pool.numFree).toBe(3)
  })

  it("a free cached block is evicted only when handed out again, least recently freed first", () => {
    const pool = new BlockPool(3)
    const [a, b] = pool.allocate(2)!
    pool.cache(a!, "ha" as never)
    pool.cache(b!, "hb" as never)
    pool.release([b!, a!])
    expect(pool.lookup("ha" as never)).toBe(a)
    // b was freed first: it goes first.
    const [c] = pool.allocate(1)!
    expect(c).toBe(b)
    expect(pool.lookup("hb" as never)).toBeUndefined()
    expect(pool.lookup("ha" as never)).toBe(a)
  })
})

describe("KvCacheManager", () => {
  it("allocates whole blocks as tokens grow and frees them all", () => {
    const kv = new KvCacheManager({ blockSize: 4, numBlocks: 6, enablePrefixCaching: false })
    const s = seq(1, range(0, 6))
    expect(kv.allocate(s, 0, 6)).toBe(true)
    expect(kv.numBlocksOf(s)).toBe(2)
    expect(kv.allocate(s, 6, 2)).toBe(true) // 8 tokens: still 2 blocks
    expect(kv.numBlocksOf(s)).toBe(2)
    expect(kv.allocate(s, 8, 1)).toBe(true)
    expect(kv.numBlocksOf(s)).toBe(3)
    expect(kv.blockIds(s)).not.toContain(0)
    expect(kv.allocate(seq(2, range(0, 12)), 0, 12)).toBe(false) // 3 blocks wanted, 2 free: nothing taken
    expect(kv.pool.numFree).toBe(2)
    kv.free(s)
    expect(kv.pool.numFree).toBe(5)
  })

  it("a second sequence with the same prefix reuses its full blocks, and the last token is always computed", () => {
    const kv = new KvCacheManager({ blockSize: 4, numBlocks: 16, enablePrefixCaching: true })
    const first = seq(1, range(100, 10))
    expect(kv.cachedPrefix(first).numTokens).toBe(0)
    kv.allocate(first, 0, 10)
    kv.cacheComputed(first, 10) // blocks 0 and 1 are full
    const second = seq(2, [...range(100, 8), 7, 7, 7])
    const hit = kv.cachedPrefix(second)
    expect(hit.numTokens).toBe(8)
    expect(hit.blocks.map((b) => b.id)).toEqual(kv.blockIds(first).slice(0, 2))
    expect(kv.allocate(second, 8, 3, hit)).toBe(true)
    expect(kv.blockIds(second).slice(0, 2)).toEqual(kv.blockIds(first).slice(0, 2))
    expect(kv.hits).toBe(8)
    expect(kv.queries).toBe(10 + 11)
    // Exactly 8 tokens cached of an 8-token prompt: the last block is left to compute its logits.
    expect(kv.cachedPrefix(seq(3, range(100, 8))).numTokens).toBe(4)
    // A different first block misses everything after it, even where later blocks match.
    expect(kv.cachedPrefix(seq(4, [1, 2, 3, 4, ...range(104, 4), 0])).numTokens).toBe(0)
  })

  it("blocks of a finished sequence stay cached until evicted; shared blocks are not freed while in use", () => {
    const kv = new KvCacheManager({ blockSize: 2, numBlocks: 5, enablePrefixCaching: true })
    const a = seq(1, [1, 2, 3, 4, 5])
    kv.allocate(a, 0, 5)
    kv.cacheComputed(a, 5)
    kv.free(a)
    expect(kv.pool.numFree).toBe(4)
    const b = seq(2, [1, 2, 3, 4, 9])
    const hit = kv.cachedPrefix(b)
    expect(hit.numTokens).toBe(4)
    kv.allocate(b, 4, 1, hit)
    const c = seq(3, [1, 2, 3, 4, 8])
    const hitC = kv.cachedPrefix(c)
    kv.allocate(c, 4, 1, hitC)
    expect(kv.pool.numFree).toBe(0) // two shared blocks + one each
    kv.free(b)
    expect(kv.pool.numFree).toBe(1) // the shared blocks are still held by c
    kv.free(c)
    expect(kv.pool.numFree).toBe(4)
  })

  it("generated tokens are cached too: the next chat turn finds prompt and answer", () => {
    const kv = new KvCacheManager({ blockSize: 4, numBlocks: 16, enablePrefixCaching: true })
    const turn1 = seq(1, range(0, 6), [50, 51, 52])
    kv.allocate(turn1, 0, 9)
    kv.cacheComputed(turn1, 8) // the last sampled token has no KV yet
    kv.free(turn1)
    const turn2 = seq(2, [...range(0, 6), 50, 51, 52, 60, 61])
    expect(kv.cachedPrefix(turn2).numTokens).toBe(8)
  })
})
