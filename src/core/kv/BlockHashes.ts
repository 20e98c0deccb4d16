/**
 * Keys of full KV blocks for automatic prefix caching (vLLM's `hash_block_tokens`): block `i` of a token sequence is
 * keyed by a hash of (the key of block `i - 1`, the block's token ids), so equal keys mean equal whole prefixes, not
 * merely equal blocks, and a lookup can walk a prompt block by block from its start. Only full blocks have keys: a
 * partly filled block is still changing.
 *
 * SHA-256 (node:crypto) over the parent digest and the block's int32 bytes: stable across processes and collisions
 * are not a practical concern, so a hit never needs a token-by-token check.
 *
 * @since 0.2.0
 */
import { createHash } from "node:crypto"

/** A full block's key: base64 of the chained digest. */
export type BlockHash = string & { readonly BlockHash: unique symbol }

const ROOT = Buffer.alloc(0)

/** The key of one block given its parent's key (undefined for the first block) and its `blockSize` token ids. */
export const hashBlock = (parent: BlockHash | undefined, tokens: Int32Array): BlockHash =>
  createHash("sha256")
    .update(parent === undefined ? ROOT : Buffer.from(parent, "base64"))
    .update(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength))
    .digest("base64") as BlockHash

/**
 * Extends `hashes` (the keys of the first `hashes.length` blocks of `tokens`) with the keys of the following full
 * blocks, up to `numBlocks` blocks in all (fewer when `tokens` has fewer full blocks). Returns `hashes`, so a
 * sequence can keep one array and grow it as its tokens grow.
 */
export const extendBlockHashes = (
  hashes: Array<BlockHash>,
  tokens: Int32Array,
  blockSize: number,
  numBlocks: number = Math.floor(tokens.length / blockSize)
): Array<BlockHash> => {
  const last = Math.min(numBlocks, Math.floor(tokens.length / blockSize))
  for (let i = hashes.length; i < last; i++) {
    hashes.push(hashBlock(hashes[i - 1], tokens.subarray(i * blockSize, (i + 1) * blockSize)))
  }
  return hashes
}
