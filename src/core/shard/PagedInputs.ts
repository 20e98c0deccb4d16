/**
 * The per-step inputs of a `paged` shard graph (`TensorNames.ts`): the whole packed plan in one run. Token ids (or
 * hidden states) as packed, per entry its start in them (`cumulative_sequence_length`), its cached length and its
 * block table, the host bounds PagedAttention chooses kernels by (`attention_metadata`), and the packed positions
 * whose logits come out (`logits_index`). Pure: the device worker uploads these, the contract test checks the names.
 */
import type { HostInput } from "./StepInputs.ts"
import type { ShardLoad, StepPlan } from "./StepProtocol.ts"
import * as TensorNames from "./TensorNames.ts"

export interface PagedInputs {
  readonly inputs: Record<string, HostInput>
  /** Last shard: the entries with logits rows, in order, and how many rows each has (for `StepOutputs`). */
  readonly logitsEntries: Int32Array
  readonly logitsRows: Int32Array
}

/** Entries whose last position's logits are needed: those that sample, and those that asked for them. */
const logitsPlan = (plan: StepPlan): { entries: Int32Array; rows: Int32Array } => {
  const samples = new Uint8Array(plan.numTokens.length)
  for (const e of plan.sampleEntries) samples[e] = 1
  const entries: Array<number> = []
  const rows: Array<number> = []
  for (let e = 0; e < plan.numTokens.length; e++) {
    const mode = plan.returnLogits[e]!
    if (mode === 2) entries.push(e), rows.push(plan.numTokens[e]!)
    else if (mode === 1 || samples[e] === 1) entries.push(e), rows.push(1)
  }
  return { entries: Int32Array.from(entries), rows: Int32Array.from(rows) }
}

/** Bounds of a plan for `attention_metadata`: the most new tokens of an entry, the longest sequence after the step. */
export const attentionBounds = (plan: StepPlan): Int32Array => {
  let q = 1
  let kv = 1
  for (let e = 0; e < plan.numTokens.length; e++) {
    q = Math.max(q, plan.numTokens[e]!)
    kv = Math.max(kv, plan.pastLens[e]! + plan.numTokens[e]!)
  }
  return Int32Array.of(q, kv)
}

export const pagedInputs = (cfg: ShardLoad, plan: StepPlan): PagedInputs => {
  const entries = plan.numTokens.length
  const inputs: Record<string, HostInput> = {}
  const cumulative = new Int32Array(entries + 1)
  for (let e = 0; e < entries; e++) cumulative[e + 1] = cumulative[e]! + plan.numTokens[e]!
  const tokens = cumulative[entries]!
  if (cfg.isFirst) {
    inputs[TensorNames.inputIds] = { data: BigInt64Array.from(plan.tokenIds.subarray(0, tokens), (t) => BigInt(t)), dims: [tokens] }
  } else {
    if (plan.hidden === undefined) throw new Error("a non-first shard needs hidden states")
    const hidden = plan.hidden.subarray(0, tokens * cfg.hiddenSize)
    inputs[TensorNames.hiddenIn] = cfg.dtype === "bfloat16"
      ? { data: hidden, dims: [tokens, cfg.hiddenSize], dtype: "bfloat16" }
      : { data: hidden, dims: [tokens, cfg.hiddenSize] }
  }
  inputs[TensorNames.cumulativeSequenceLength] = { data: cumulative, dims: [entries + 1] }
  inputs[TensorNames.pastSeqlens] = { data: Int32Array.from(plan.pastLens.subarray(0, entries)), dims: [entries] }
  // A plan with no table columns (nothing cached anywhere yet cannot happen: new tokens need blocks) still gets one.
  const width = Math.max(1, plan.blocksPerEntry)
  const table = plan.blocksPerEntry > 0 ? plan.blockTables.subarray(0, entries * width) : new Int32Array(entries)
  inputs[TensorNames.blockTable] = { data: table, dims: [entries, width] }
  inputs[TensorNames.attentionMetadata] = { data: attentionBounds(plan), dims: [2] }
  if (!cfg.isLast) return { inputs, logitsEntries: new Int32Array(0), logitsRows: new Int32Array(0) }
  const { entries: logitsEntries, rows: logitsRows } = logitsPlan(plan)
  let n = 0
  for (const r of logitsRows) n += r
  // No entry wants logits (every entry is a mid-prompt chunk): one dummy row keeps the head's shapes non-empty.
  if (n === 0) {
    inputs[TensorNames.logitsIndex] = { data: BigInt64Array.of(0n), dims: [1] }
    return { inputs, logitsEntries, logitsRows }
  }
  const index = new BigInt64Array(n)
  let at = 0
  for (let i = 0; i < logitsEntries.length; i++) {
    const e = logitsEntries[i]!
    const rows = logitsRows[i]!
    const end = cumulative[e + 1]!
    for (let j = 0; j < rows; j++) index[at++] = BigInt(end - rows + j)
  }
  inputs[TensorNames.logitsIndex] = { data: index, dims: [n] }
  return { inputs, logitsEntries, logitsRows }
}
