/**
 * The KV blocks of every shard, as bookkeeping on the main thread (vLLM v1's `BlockPool`): which block ids are in
 * use, by how many sequences, and which free blocks still hold a cached prefix. The KV data itself stays in the
 * shard workers; a block id names the same block in every shard and every layer.
 *
 * - Block 0 is reserved and never handed out: runtimes point padding entries and padded block tables at it.
 * - Free blocks wait in least-recently-freed order; a free block that holds a cached full block keeps its hash until
 *   it is handed out again (eviction is reuse), so a later request can still find and revive it.
 *
 * @since 0.2.0
 */
import type { BlockHash } from "./BlockHashes.ts"

export interface Block {
  readonly id: number
  /** Sequences using the block; 0 means it is free (and evictable if cached). */
  refCount: number
  /** Set once the block is full and registered in the prefix cache. */
  hash: BlockHash | undefined
}

export class BlockPool {
  readonly numBlocks: number
  private readonly blocks: Array<Block>
  /** Free blocks, least recently freed first (a Map keeps insertion order; delete + set moves to the end). */
  private readonly free = new Map<number, Block>()
  private readonly cached = new Map<BlockHash, Block>()

  constructor(numBlocks: number) {
    if (!Number.isInteger(numBlocks) || numBlocks < 2) throw new RangeError(`a block pool needs at least 2 blocks, got ${numBlocks}`)
    this.numBlocks = numBlocks
    this.blocks = Array.from({ length: numBlocks }, (_, id): Block => ({ id, refCount: id === 0 ? 1 : 0, hash: undefined }))
    for (let id = 1; id < numBlocks; id++) this.free.set(id, this.blocks[id]!)
  }

  /** Blocks a sequence can hold at most (all but the reserved one). */
  get capacity(): number {
    return this.numBlocks - 1
  }

  get numFree(): number {
    return this.free.size
  }

  /** Fraction of usable blocks in use, 0..1. */
  get usage(): number {
    return 1 - this.free.size / this.capacity
  }

  /** The cached block holding the full block with this hash, in use or free. */
  lookup(hash: BlockHash): Block | undefined {
    return this.cached.get(hash)
  }

  /** Of `blocks` (cached hits), how many are free now: taking them costs that many free blocks. */
  countFree(blocks: ReadonlyArray<Block>): number {
    let n = 0
    for (const b of blocks) if (b.refCount === 0) n++
    return n
  }

  /** Takes a reference on cached blocks a sequence reuses (reviving free ones). */
  touch(blocks: ReadonlyArray<Block>): void {
    for (const b of blocks) {
      if (b.refCount === 0) this.free.delete(b.id)
      b.refCount++
    }
  }

  /** `n` fresh blocks, evicting the least recently freed cached ones; undefined (nothing taken) if too few are free. */
  allocate(n: number): Array<Block> | undefined {
    if (n > this.free.size) return undefined
    const out: Array<Block> = []
    for (const b of this.free.values()) {
      if (out.length === n) break
      out.push(b)
    }
    for (const b of out) {
      this.free.delete(b.id)
      if (b.hash !== undefined) {
        if (this.cached.get(b.hash) === b) this.cached.delete(b.hash)
        b.hash = undefined
      }
      b.refCount = 1
    }
    return out
  }

  /** Drops one reference on each block, in order: blocks that become free queue for reuse in that order. */
  release(blocks: ReadonlyArray<Block>): void {
    for (const b of blocks) {
      if (b.refCount <= 0) throw new Error(`block ${b.id} released more often than taken`)
      if (--b.refCount === 0) this.free.set(b.id, b)
    }
  }

  /** Registers a full block under its hash; a hash already cached by another block keeps the first (no duplicate). */
  cache(block: Block, hash: BlockHash): void {
    if (block.hash !== undefined || this.cached.has(hash)) return
    block.hash = hash
    this.cached.set(hash, block)
  }

  /** Forgets every cached hash (a shard restarted with an empty cache). Blocks in use stay in use. */
  clearCache(): void {
    for (const b of this.cached.values()) b.hash = undefined
    this.cached.clear()
  }
}
