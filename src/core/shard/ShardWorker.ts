/**
 * The piscina entry of a shard: runs on its own worker thread, never on the event loop (ORT `run` is synchronous).
 *
 * The thread owns the ORT session and the KV cache of its sequences: per layer and slot (row), keys and values
 * `[kvHeads, capacity, headDim]`, grown by doubling up to `maxLen`, so memory follows what sequences really hold.
 * onnxruntime-node copies every output back into JS memory (a pre-allocated output is a copy too, so
 * GroupQueryAttention never sees a shared past/present buffer here): each step therefore passes a compact past of
 * exactly the longest row's length and fetches only the new tokens' keys and values (`new_key.{i}`), never the
 * whole present cache, keeping the per-step cost proportional to the tokens in use, not to the context window.
 * The last shard also owns each sequence's sampler: logits stay here, only token ids go back.
 */
import { ort } from "../../onnx/OrtFloat16Fix.ts"
import { SamplerTable } from "./SamplerTable.ts"
import { stepInputs } from "./StepInputs.ts"
import type { ShardLoad, ShardLoadResult, StepPlan, StepResult } from "./StepProtocol.ts"
import * as TensorNames from "./TensorNames.ts"

type KvArray = Float32Array | Uint16Array

/** One slot's keys or values for one layer: `[kvHeads, capacity, headDim]`. */
interface SlotCache {
  capacity: number
  data: KvArray
}

interface ShardState {
  readonly load: ShardLoad
  readonly session: ort.InferenceSession
  /** [layer][row] */
  readonly keys: Array<Array<SlotCache>>
  readonly values: Array<Array<SlotCache>>
  readonly samplers: SamplerTable
  /** Output names of this step's new keys and values, fetched on every step (never the whole present cache). */
  readonly newKvNames: ReadonlyArray<string>
}


let state: ShardState | undefined

const kvType = (load: ShardLoad) => (load.dtype === "float16" ? "float16" : "float32") as "float16" | "float32"
const allocate = (load: ShardLoad, n: number): KvArray => (load.dtype === "float16" ? new Uint16Array(n) : new Float32Array(n))
const INITIAL_CAPACITY = 64

export async function load(task: ShardLoad): Promise<ShardLoadResult> {
  const started = performance.now()
  const session = await ort.InferenceSession.create(task.graphPath, {
    intraOpNumThreads: task.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    logSeverityLevel: 3
  })
  const numLayers = task.layers[1] - task.layers[0]
  const empty = () => Array.from({ length: numLayers }, () => Array.from({ length: task.maxSeqs }, (): SlotCache => ({ capacity: 0, data: allocate(task, 0) })))
  const newKvNames = Array.from({ length: numLayers }, (_, i) => [TensorNames.newKey(task.layers[0] + i), TensorNames.newValue(task.layers[0] + i)]).flat()
  state = { load: task, session, keys: empty(), values: empty(), samplers: new SamplerTable(), newKvNames }
  return { kvBytes: 0, loadMs: performance.now() - started }
}

/** Makes room for `needed` positions in a slot, keeping what it holds. */
const reserve = (cfg: ShardLoad, slot: SlotCache, needed: number) => {
  if (needed <= slot.capacity) return
  const capacity = Math.min(cfg.maxLen, Math.max(needed, INITIAL_CAPACITY, slot.capacity * 2))
  const data = allocate(cfg, cfg.numKvHeads * capacity * cfg.headDim)
  const hd = cfg.headDim
  for (let h = 0; h < cfg.numKvHeads; h++) {
    data.set(slot.data.subarray(h * slot.capacity * hd, (h * slot.capacity + slot.capacity) * hd), h * capacity * hd)
  }
  slot.capacity = capacity
  slot.data = data
}

/** The past of rows [firstRow, firstRow + rows) as one `[rows, kvHeads, past, headDim]` array. */
const gatherPast = (cfg: ShardLoad, slots: Array<SlotCache>, firstRow: number, rows: number, pastLens: Int32Array, past: number): KvArray => {
  const hd = cfg.headDim
  const out = allocate(cfg, rows * cfg.numKvHeads * past * hd)
  if (past === 0) return out
  for (let r = 0; r < rows; r++) {
    const slot = slots[firstRow + r]!
    const n = Math.min(pastLens[r]!, slot.capacity)
    if (n === 0) continue
    for (let h = 0; h < cfg.numKvHeads; h++) {
      const from = h * slot.capacity * hd
      out.set(slot.data.subarray(from, from + n * hd), ((r * cfg.numKvHeads + h) * past) * hd)
    }
  }
  return out
}

/** Appends this step's keys or values (`[rows, seqLen, kvHeads * headDim]`) to the slots at each row's past length. */
const appendNew = (cfg: ShardLoad, slots: Array<SlotCache>, plan: StepPlan, fresh: KvArray) => {
  const hd = cfg.headDim
  const rowStride = plan.seqLen * cfg.numKvHeads * hd
  for (let r = 0; r < plan.numRows; r++) {
    const start = plan.pastLens[r]!
    const end = Math.min(start + plan.seqLen, cfg.maxLen)
    if (end <= start) continue
    const slot = slots[plan.firstRow + r]!
    reserve(cfg, slot, end)
    for (let t = start; t < end; t++) {
      const from = r * rowStride + (t - start) * cfg.numKvHeads * hd
      for (let h = 0; h < cfg.numKvHeads; h++) {
        slot.data.set(fresh.subarray(from + h * hd, from + (h + 1) * hd), (h * slot.capacity + t) * hd)
      }
    }
  }
}

export async function step(plan: StepPlan): Promise<StepResult> {
  const s = state
  if (s === undefined) throw new Error("shard worker used before load")
  const { load: cfg } = s
  const rows = plan.numRows
  const { inputs, maxPast, allLogits } = stepInputs(cfg, plan)
  const feeds: Record<string, ort.Tensor> = {}
  for (const [name, t] of Object.entries(inputs)) {
    const type = t.data instanceof BigInt64Array ? "int64" : t.data instanceof Int32Array ? "int32" : kvType(cfg)
    feeds[name] = new ort.Tensor(type, t.data, [...t.dims])
  }
  const kvDims = [rows, cfg.numKvHeads, maxPast, cfg.headDim]
  for (let i = 0; i < s.keys.length; i++) {
    const layer = cfg.layers[0] + i
    feeds[TensorNames.pastKey(layer)] = new ort.Tensor(kvType(cfg), gatherPast(cfg, s.keys[i]!, plan.firstRow, rows, plan.pastLens, maxPast), kvDims)
    feeds[TensorNames.pastValue(layer)] = new ort.Tensor(kvType(cfg), gatherPast(cfg, s.values[i]!, plan.firstRow, rows, plan.pastLens, maxPast), kvDims)
  }

  // Register new samplers first: whether this step needs full logits depends on every sampled row's parameters.
  if (cfg.isLast) s.samplers.register(plan.newSequences)
  const greedyOnly = cfg.isLast && s.samplers.greedyOnly(plan)
  const fetches = [...s.newKvNames, cfg.isLast ? (greedyOnly ? TensorNames.greedyToken : TensorNames.logits) : TensorNames.hiddenOut]

  const t0 = performance.now()
  const out = await s.session.run(feeds, fetches)
  const runMs = performance.now() - t0
  for (let i = 0; i < s.keys.length; i++) {
    const layer = cfg.layers[0] + i
    appendNew(cfg, s.keys[i]!, plan, out[TensorNames.newKey(layer)]!.data as KvArray)
    appendNew(cfg, s.values[i]!, plan, out[TensorNames.newValue(layer)]!.data as KvArray)
  }

  if (!cfg.isLast) return { hidden: out[TensorNames.hiddenOut]!.data as Float32Array | Uint16Array, runMs, sampleMs: 0 }
  if (greedyOnly) return s.samplers.fromGreedy(plan, out[TensorNames.greedyToken]!.data as BigInt64Array, runMs)
  return s.samplers.fromLogits(plan, out[TensorNames.logits]!.data as Float32Array, cfg.vocabSize, allLogits ? plan.seqLen : 1, runMs)
}

/** Forgets the samplers of rows whose sequences finished (their KV rows are simply reused). */
export async function release(rows: ReadonlyArray<number>): Promise<void> {
  state?.samplers.release(rows)
}

/**
 * Fault injection: ends this worker thread abruptly, as a native crash or an out-of-memory kill would, between two
 * steps (never inside ORT's `run`, which would take the whole process down). Used by fault tests and chaos drills.
 */
export function crash(): never {
  process.exit(1)
}
