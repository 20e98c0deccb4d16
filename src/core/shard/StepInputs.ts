/**
 * The small per-step inputs a GroupQueryAttention shard graph takes (`TensorNames.ts`), for one group of a plan's
 * entries that append the same number of tokens (that graph batches `[rows, seqLen]`, so a packed plan runs as one
 * group of decoding entries plus one group per prompt chunk): token ids or hidden states, positions, per-row sequence
 * lengths, the group's total length and the logits positions. Both GQA runtimes (onnxruntime-node on the CPU, the
 * native addon with a row cache) feed these as host tensors.
 */
import { emptyGraphMask, type GraphMask } from "./GraphMask.ts"
import type { ShardLoad, StepPlan } from "./StepProtocol.ts"
import * as TensorNames from "./TensorNames.ts"

export interface HostInput {
  readonly data: BigInt64Array | Int32Array | Float32Array | Uint16Array
  readonly dims: ReadonlyArray<number>
  /** Set where the array class is ambiguous: 16-bit hidden states of a bfloat16 model. */
  readonly dtype?: "bfloat16"
}

/** Entries of a plan that run in one ORT call: the same number of new tokens each. */
export interface EntryGroup {
  readonly entries: Int32Array
  readonly seqLen: number
  /** The last shard returns logits of every position (a prompt chunk that asked for its prompt logits). */
  readonly allLogits: boolean
}

export interface StepInputs {
  readonly inputs: Record<string, HostInput>
  /** Longest cached length over the group's rows (the compact past a copying runtime passes). */
  readonly maxPast: number
}

/** Where each entry's tokens start in the plan's packed tokens. */
export const tokenOffsets = (plan: StepPlan): Int32Array => {
  const out = new Int32Array(plan.numTokens.length + 1)
  for (let e = 0; e < plan.numTokens.length; e++) out[e + 1] = out[e]! + plan.numTokens[e]!
  return out
}

/**
 * Splits a plan into groups a `[rows, seqLen]` graph can run: every single-token entry in one group (decode),
 * every longer entry alone (its prompt chunk), in entry order of first appearance.
 */
export const entryGroups = (plan: StepPlan): Array<EntryGroup> => {
  const groups: Array<EntryGroup> = []
  const singles: Array<number> = []
  for (let e = 0; e < plan.numTokens.length; e++) {
    const n = plan.numTokens[e]!
    if (n === 1 && plan.returnLogits[e] !== 2) singles.push(e)
    else groups.push({ entries: Int32Array.of(e), seqLen: n, allLogits: plan.returnLogits[e] === 2 })
  }
  if (singles.length > 0) groups.unshift({ entries: Int32Array.from(singles), seqLen: 1, allLogits: false })
  return groups
}

/** Words of a `token_bitmask` row: one bit per id. */
export const bitmaskWords = (vocab: number): number => Math.ceil(vocab / 32)

/**
 * The grammar-mask inputs of a rotary-outside last shard (`token_bitmask`, `token_bitmask_rows`, `allowed_rows`,
 * `allowed_ids`) for `mask`; by default no constrained row (0 rows of each kind), what every step that does not fetch
 * `masked_greedy_token` feeds.
 */
export const maskInputs = (vocab: number, mask: GraphMask = emptyGraphMask): Record<string, HostInput> => ({
  [TensorNames.tokenBitmask]: { data: mask.bitmask, dims: [mask.denseRows.length, bitmaskWords(vocab)] },
  [TensorNames.tokenBitmaskRows]: { data: mask.denseRows, dims: [mask.denseRows.length] },
  [TensorNames.allowedRows]: { data: mask.sparseRows, dims: [mask.sparseRows.length] },
  [TensorNames.allowedIds]: { data: mask.sparseIds, dims: [mask.sparseRows.length, mask.sparseK] }
})

/**
 * The graph inputs of one group; `offsets` from `tokenOffsets(plan)`. `mask`: the group's grammar masks (rows are
 * group rows), for a constrained greedy step that fetches `masked_greedy_token`; else none (0 rows of each kind).
 */
export const groupInputs = (cfg: ShardLoad, plan: StepPlan, group: EntryGroup, offsets: Int32Array, mask: GraphMask = emptyGraphMask): StepInputs => {
  const rows = group.entries.length
  const seqLen = group.seqLen
  const inputs: Record<string, HostInput> = {}
  if (cfg.isFirst) {
    const ids = new BigInt64Array(rows * seqLen)
    for (let r = 0; r < rows; r++) {
      const from = offsets[group.entries[r]!]!
      for (let j = 0; j < seqLen; j++) ids[r * seqLen + j] = BigInt(plan.tokenIds[from + j]!)
    }
    inputs[TensorNames.inputIds] = { data: ids, dims: [rows, seqLen] }
  } else {
    if (plan.hidden === undefined) throw new Error("a non-first shard needs hidden states")
    const h = cfg.hiddenSize
    const hidden = plan.hidden instanceof Float32Array ? new Float32Array(rows * seqLen * h) : new Uint16Array(rows * seqLen * h)
    for (let r = 0; r < rows; r++) {
      const from = offsets[group.entries[r]!]! * h
      hidden.set(plan.hidden.subarray(from, from + seqLen * h), r * seqLen * h)
    }
    inputs[TensorNames.hiddenIn] = cfg.dtype === "bfloat16"
      ? { data: hidden, dims: [rows, seqLen, h], dtype: "bfloat16" }
      : { data: hidden, dims: [rows, seqLen, h] }
  }
  const seqlens = new Int32Array(rows)
  const positions = new BigInt64Array(rows * seqLen)
  let total = 0
  let maxPast = 0
  for (let r = 0; r < rows; r++) {
    const past = plan.pastLens[group.entries[r]!]!
    seqlens[r] = past + seqLen - 1
    total = Math.max(total, past + seqLen)
    maxPast = Math.max(maxPast, past)
    for (let j = 0; j < seqLen; j++) positions[r * seqLen + j] = BigInt(past + j)
  }
  inputs[TensorNames.positionIds] = { data: positions, dims: [rows, seqLen] }
  inputs[TensorNames.seqlensK] = { data: seqlens, dims: [rows] }
  inputs[TensorNames.totalSequenceLength] = { data: Int32Array.of(total), dims: [] }
  if (cfg.isLast) {
    const n = group.allLogits ? seqLen : 1
    const index = new BigInt64Array(rows * n)
    for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) index[r * n + j] = BigInt(group.allLogits ? j : seqLen - 1)
    inputs[TensorNames.logitsIndex] = { data: index, dims: [rows, n] }
    Object.assign(inputs, maskInputs(cfg.vocabSize, mask))
  }
  return { inputs, maxPast }
}
