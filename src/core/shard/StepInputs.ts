/**
 * The small per-step inputs every shard graph takes (`TensorNames.ts`), computed once from a plan: token ids
 * or hidden states, positions, per-row sequence lengths, the batch's total length and the logits positions. Both
 * runtimes (onnxruntime-node on the CPU, the native IO-binding addon on a device) feed these as host tensors.
 */
import type { ShardLoad, StepPlan } from "./StepProtocol.ts"
import * as TensorNames from "./TensorNames.ts"

export interface HostInput {
  readonly data: BigInt64Array | Int32Array | Float32Array | Uint16Array
  readonly dims: ReadonlyArray<number>
  /** Set where the array class is ambiguous: 16-bit hidden states of a bfloat16 model. */
  readonly dtype?: "bfloat16"
}

export interface StepInputs {
  readonly inputs: Record<string, HostInput>
  /** Longest cached length over the rows (the compact past a copying runtime passes). */
  readonly maxPast: number
  /** The last shard returns logits for every position of a prefill chunk. */
  readonly allLogits: boolean
}

export const stepInputs = (cfg: ShardLoad, plan: StepPlan): StepInputs => {
  const rows = plan.numRows
  const inputs: Record<string, HostInput> = {}
  if (cfg.isFirst) {
    inputs[TensorNames.inputIds] = { data: BigInt64Array.from(plan.tokenIds, (t) => BigInt(t)), dims: [rows, plan.seqLen] }
  } else {
    if (plan.hidden === undefined) throw new Error("a non-first shard needs hidden states")
    inputs[TensorNames.hiddenIn] = cfg.dtype === "bfloat16"
      ? { data: plan.hidden, dims: [rows, plan.seqLen, cfg.hiddenSize], dtype: "bfloat16" }
      : { data: plan.hidden, dims: [rows, plan.seqLen, cfg.hiddenSize] }
  }
  const seqlens = new Int32Array(rows)
  const positions = new BigInt64Array(rows * plan.seqLen)
  let total = 0
  let maxPast = 0
  for (let r = 0; r < rows; r++) {
    const past = plan.pastLens[r]!
    seqlens[r] = past + plan.seqLen - 1
    total = Math.max(total, past + plan.seqLen)
    maxPast = Math.max(maxPast, past)
    for (let j = 0; j < plan.seqLen; j++) positions[r * plan.seqLen + j] = BigInt(past + j)
  }
  inputs[TensorNames.positionIds] = { data: positions, dims: [rows, plan.seqLen] }
  inputs[TensorNames.seqlensK] = { data: seqlens, dims: [rows] }
  inputs[TensorNames.totalSequenceLength] = { data: Int32Array.of(total), dims: [] }
  const allLogits = cfg.isLast && plan.kind === "prefill" && plan.returnLogits === "all"
  if (cfg.isLast) {
    const n = allLogits ? plan.seqLen : 1
    const index = new BigInt64Array(rows * n)
    for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) index[r * n + j] = BigInt(allLogits ? j : plan.seqLen - 1)
    inputs[TensorNames.logitsIndex] = { data: index, dims: [rows, n] }
  }
  return { inputs, maxPast, allLogits }
}
