/**
 * The names of a shard graph's inputs and outputs: the contract between the graph a model adapter builds and the
 * shard workers that run it (`ShardWorker.ts` on the CPU, `DeviceShardWorker.ts` through the native addon, and
 * `StepInputs.ts`, which both use). Core owns the names because the workers are core; an adapter's graph builder
 * (`Llama3`'s `GraphBuilder.ts`) imports them to build graphs that meet core's contract, so a rename here is a
 * rename everywhere and a misspelling is a compile error, not a runtime "input not found".
 *
 * Import it as a namespace: `import * as TensorNames from "./TensorNames.ts"`, then `TensorNames.inputIds`.
 *
 * Shapes (T is the shard's dtype; `i` a layer index of the whole model, not of the shard):
 * - inputs: `input_ids` int64 [batch, seq] (first shard) or `hidden_in` T [batch, seq, hidden] (other shards);
 *   `position_ids` int64 [batch, seq] (only graphs with rotary outside attention); `seqlens_k` int32 [batch]
 *   (per row: past + new - 1); `total_sequence_length` int32 [] (max over rows of past + new);
 *   `past_key.{i}` / `past_value.{i}` T [batch, kv_heads, max_len, head_dim];
 *   `logits_index` int64 [batch, n_logits] (last shard); `token_bitmask` int32 [dense_rows, ceil(vocab / 32)],
 *   `token_bitmask_rows` int64 [dense_rows], `allowed_rows` int64 [sparse_rows], `allowed_ids` int64
 *   [sparse_rows, sparse_k] (last shard, rotary-outside graphs only; any of the row counts may be 0).
 * - outputs: `logits` float32 [batch, n_logits, vocab], `greedy_token` int64 [batch, n_logits] and (rotary-outside
 *   graphs only) `masked_greedy_token` int64 [batch, n_logits] (last shard), or
 *   `hidden_out` T [batch, seq, hidden]; `present_key.{i}` / `present_value.{i}` T [batch, kv_heads, present_len,
 *   head_dim]; `new_key.{i}` / `new_value.{i}` T [batch, seq, kv_heads * head_dim] (rotary-outside graphs only).
 *
 * @since 0.1.0
 */

/** Token ids of the step, the first shard's input. */
export const inputIds = "input_ids"
/** The previous shard's hidden states, the input of every shard but the first. */
export const hiddenIn = "hidden_in"
/** Each new token's position; graphs that apply rotary inside attention take none. */
export const positionIds = "position_ids"
/** Per row, the index of its last token after the step (GroupQueryAttention's `seqlens_k`). */
export const seqlensK = "seqlens_k"
/** The longest row's length after the step (GroupQueryAttention's `total_sequence_length`). */
export const totalSequenceLength = "total_sequence_length"
/** Last shard: the positions within each row whose logits (and greedy tokens) come out. */
export const logitsIndex = "logits_index"

/** Last shard: float32 logits of the positions `logits_index` selects. */
export const logits = "logits"
/** Last shard: the graph's ArgMax of those logits (ties to the lowest id), fetched when every row is greedy. */
export const greedyToken = "greedy_token"
/**
 * Last shard of a rotary-outside graph: the grammar's bitmask of allowed ids of each dense row (xgrammar's layout:
 * bit j of word i allows id 32 i + j; int32 `[dense_rows, ceil(vocab / 32)]`, possibly 0 rows). Only
 * `masked_greedy_token` reads it.
 */
export const tokenBitmask = "token_bitmask"
/** Last shard of a rotary-outside graph: which row (of `greedy_token`, flattened) each `token_bitmask` row masks, int64 `[dense_rows]`. */
export const tokenBitmaskRows = "token_bitmask_rows"
/** Last shard of a rotary-outside graph: the sparse rows (of `greedy_token`, flattened), int64 `[sparse_rows]`. */
export const allowedRows = "allowed_rows"
/**
 * Last shard of a rotary-outside graph: each sparse row's allowed ids, ascending, padded to `sparse_k` by repeating
 * the row's last id (ties then still go to the lowest id), int64 `[sparse_rows, sparse_k]`.
 */
export const allowedIds = "allowed_ids"
/**
 * Last shard: `greedy_token` where the rows of `allowed_rows` and `token_bitmask_rows` take the ArgMax over the ids
 * their list or bitmask allows (constrained greedy rows); other rows keep their plain ArgMax.
 */
export const maskedGreedyToken = "masked_greedy_token"
/** Every shard but the last: hidden states for the next shard. */
export const hiddenOut = "hidden_out"

/** Layer `layer`'s cached keys, input. */
export const pastKey = (layer: number): string => `past_key.${layer}`
/** Layer `layer`'s cached values, input. */
export const pastValue = (layer: number): string => `past_value.${layer}`
/** Layer `layer`'s whole key cache after the step, output (bound to the past buffer where a runtime can share it). */
export const presentKey = (layer: number): string => `present_key.${layer}`
/** Layer `layer`'s whole value cache after the step, output. */
export const presentValue = (layer: number): string => `present_value.${layer}`
/** Layer `layer`'s rotated keys of this step's tokens alone: what a runtime that keeps its own cache appends. */
export const newKey = (layer: number): string => `new_key.${layer}`
/** Layer `layer`'s values of this step's tokens alone. */
export const newValue = (layer: number): string => `new_value.${layer}`

// ---- the `paged` layout (PagedAttention over a block pool; packed tokens, no batch axis) ----
// inputs: `input_ids` int64 [tokens] or `hidden_in` T [tokens, hidden]; `cumulative_sequence_length` int32 [entries + 1];
// `past_seqlens` int32 [entries]; `block_table` int32 [entries, max_blocks]; `attention_metadata` int32 [2] in CPU
// memory ([max new tokens of an entry, max past + new]: bounds, which keep the op from reading lengths back, so a run
// can be captured); `key_cache.{i}` / `value_cache.{i}` T [num_blocks, block_size, kv_heads, head_dim];
// `logits_index` int64 [n_logits] (packed positions, last shard).
// outputs: `logits` float32 [n_logits, vocab] and `greedy_token` int64 [n_logits], or `hidden_out` T [tokens, hidden];
// `key_cache_out.{i}` / `value_cache_out.{i}` (the op writes the pool in place: bind them to the input buffers).

/** Paged: per entry, where its tokens start in the packed tokens (`[entries + 1]`, starting at 0). */
export const cumulativeSequenceLength = "cumulative_sequence_length"
/** Paged: per entry, tokens already cached. */
export const pastSeqlens = "past_seqlens"
/** Paged: per entry, its block ids `[entries, max_blocks]`. */
export const blockTable = "block_table"
/** Paged: `[max new tokens of an entry, max cached + new]`, int32 in CPU memory. */
export const attentionMetadata = "attention_metadata"
/** Paged: layer `layer`'s key block pool, input. */
export const keyCache = (layer: number): string => `key_cache.${layer}`
/** Paged: layer `layer`'s value block pool, input. */
export const valueCache = (layer: number): string => `value_cache.${layer}`
/** Paged: layer `layer`'s key block pool after the step, output (must be bound to the input buffer). */
export const keyCacheOut = (layer: number): string => `key_cache_out.${layer}`
/** Paged: layer `layer`'s value block pool after the step, output. */
export const valueCacheOut = (layer: number): string => `value_cache_out.${layer}`
