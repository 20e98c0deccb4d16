/**
 * Which KV blocks each sequence owns, and automatic prefix caching (vLLM v1's `KVCacheManager`): a sequence's
 * blocks grow as its tokens are computed, a request first takes the cached blocks of its longest cached prefix, full
 * blocks are registered under a chained hash of their tokens as soon as they are computed, and a finished sequence's
 * blocks are freed tail first, so under pressure the end of a cached prefix is evicted before its start.
 *
 * Plain synchronous TypeScript: the scheduler is its only caller.
 *
 * @since 0.2.0
 */
import { type BlockHash, hashBlock } from "./BlockHashes.ts"
import { type Block, BlockPool } from "./BlockPool.ts"

/** What the manager needs from a sequence: its tokens so far and how many have keys and values in the cache. */
export interface KvSequence {
  readonly id: number
  readonly promptTokenIds: Int32Array
  readonly outputTokenIds: ReadonlyArray<number>
}

export interface KvCacheConfig {
  readonly blockSize: number
  /** Blocks in the pool, the reserved block 0 included. */
  readonly numBlocks: number
  readonly enablePrefixCaching: boolean
}

export interface CachedPrefix {
  readonly blocks: ReadonlyArray<Block>
  readonly numTokens: number
}

interface Owned {
  readonly blocks: Array<Block>
  readonly hashes: Array<BlockHash>
}

const NO_PREFIX: CachedPrefix = { blocks: [], numTokens: 0 }

export class KvCacheManager {
  readonly config: KvCacheConfig
  readonly pool: BlockPool
  private readonly owned = new Map<number, Owned>()
  /** Hash chains of waiting sequences' full blocks, kept while they wait (a full pool retries them every step). */
  private readonly chains = new Map<number, { readonly total: number; readonly hashes: Array<BlockHash> }>()
  /** Prompt tokens looked up in the prefix cache, and of those found (vLLM's prefix_cache_queries / hits, in tokens). */
  queries = 0
  hits = 0

  constructor(config: KvCacheConfig) {
    if (!Number.isInteger(config.blockSize) || config.blockSize < 1) throw new RangeError(`block size must be a positive integer, got ${config.blockSize}`)
    this.config = config
    this.pool = new BlockPool(config.numBlocks)
  }

  /** Tokens the pool holds for one sequence at most. */
  get maxTokens(): number {
    return this.pool.capacity * this.config.blockSize
  }

  get usage(): number {
    return this.pool.usage
  }

  /** Block ids of a sequence, in order. */
  blockIds(seq: KvSequence): ReadonlyArray<number> {
    return this.owned.get(seq.id)?.blocks.map((b) => b.id) ?? []
  }

  numBlocksOf(seq: KvSequence): number {
    return this.owned.get(seq.id)?.blocks.length ?? 0
  }

  /**
   * The cached blocks of the longest cached prefix of a sequence about to be scheduled from scratch. At least its
   * last token is left to compute (its logits give the next token), so a fully cached prompt still runs one token.
   */
  cachedPrefix(seq: KvSequence): CachedPrefix {
    if (!this.config.enablePrefixCaching) return NO_PREFIX
    const bs = this.config.blockSize
    const total = seq.promptTokenIds.length + seq.outputTokenIds.length
    let chain = this.chains.get(seq.id)
    if (chain === undefined || chain.total !== total) {
      const hashes: Array<BlockHash> = []
      for (let i = 0; i < Math.floor((total - 1) / bs); i++) hashes.push(hashBlock(hashes[i - 1], tokensOf(seq, i * bs, (i + 1) * bs)))
      chain = { total, hashes }
      this.chains.set(seq.id, chain)
    }
    const blocks: Array<Block> = []
    for (const h of chain.hashes) {
      const b = this.pool.lookup(h)
      if (b === undefined) break
      blocks.push(b)
    }
    return { blocks, numTokens: blocks.length * bs }
  }

  /**
   * Makes room for `numNewTokens` more tokens after `numComputed` (which includes a new sequence's cached `prefix`).
   * False, with nothing taken, when the pool has too few free blocks.
   */
  allocate(seq: KvSequence, numComputed: number, numNewTokens: number, prefix: CachedPrefix = NO_PREFIX): boolean {
    const owned = this.owned.get(seq.id)
    const have = (owned?.blocks.length ?? 0) + prefix.blocks.length
    const need = Math.ceil((numComputed + numNewTokens) / this.config.blockSize) - have
    if (need > this.pool.numFree - this.pool.countFree(prefix.blocks)) return false
    this.pool.touch(prefix.blocks)
    if (owned === undefined && this.config.enablePrefixCaching) {
      // Counted once per admission, in tokens, as vLLM counts its prefix_cache_queries and hits.
      this.queries += seq.promptTokenIds.length + seq.outputTokenIds.length
      this.hits += prefix.numTokens
      this.chains.delete(seq.id)
    }
    const fresh = need > 0 ? this.pool.allocate(need)! : []
    const entry = owned ?? { blocks: [], hashes: [] }
    entry.blocks.push(...prefix.blocks, ...fresh)
    if (owned === undefined) this.owned.set(seq.id, entry)
    // The reused blocks' hashes are the chain's first links.
    for (const b of prefix.blocks) entry.hashes.push(b.hash!)
    return true
  }

  /** Counts an admission's prefix lookup made elsewhere (a row layout's row reuse), in tokens. */
  countPrefixQuery(numTokens: number, numHits: number): void {
    this.queries += numTokens
    this.hits += numHits
  }

  /** Registers the sequence's newly full blocks (those whose `numComputed` tokens are all in the cache). */
  cacheComputed(seq: KvSequence, numComputed: number): void {
    if (!this.config.enablePrefixCaching) return
    const owned = this.owned.get(seq.id)
    if (owned === undefined) return
    const bs = this.config.blockSize
    const full = Math.min(Math.floor(numComputed / bs), owned.blocks.length)
    for (let i = owned.hashes.length; i < full; i++) {
      const hash = hashBlock(owned.hashes[i - 1], tokensOf(seq, i * bs, (i + 1) * bs))
      owned.hashes.push(hash)
      this.pool.cache(owned.blocks[i]!, hash)
    }
  }

  /** Frees a sequence's blocks, last block first (the tail of a cached prefix is evicted before its head). */
  free(seq: KvSequence): void {
    this.chains.delete(seq.id)
    const owned = this.owned.get(seq.id)
    if (owned === undefined) return
    this.owned.delete(seq.id)
    this.pool.release(owned.blocks.reverse())
  }

  /** After a shard restart: the workers' caches are empty, so no hash may point at their old contents. */
  clearCache(): void {
    this.pool.clearCache()
    for (const o of this.owned.values()) o.hashes.length = 0
  }
}

/** Tokens [from, to) of a sequence's prompt followed by its output. */
const tokensOf = (seq: KvSequence, from: number, to: number): Int32Array => {
  const p = seq.promptTokenIds
  if (to <= p.length) return p.subarray(from, to)
  const out = new Int32Array(to - from)
  for (let i = from; i < to; i++) out[i - from] = i < p.length ? p[i]! : seq.outputTokenIds[i - p.length]!
  return out
}
