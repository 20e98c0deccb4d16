/**
 * The piscina entry of a shard on an accelerator (and, through the same addon, on the CPU with IO binding): the
 * native addon (`src/core/native/NativeOrt.ts`) runs the session with IO binding, so the KV cache stays in device
 * memory for the shard's whole life. One buffer per layer for keys and one for values,
 * `[maxSeqs, kvHeads, maxLen, headDim]`, is bound as both `past_*` input and `present_*` output: GroupQueryAttention
 * appends the new tokens in place (share-buffer mode). Per step only token ids, positions and lengths go in, and
 * only sampled tokens (the graph's ArgMax) or, when a row samples, its logits come out.
 *
 * With the CUDA EP option `enable_cuda_graph: "1"`, greedy decode steps replay one captured CUDA graph: every slot
 * row runs (idle rows ride along at length 0), the small inputs live in device tensors at fixed addresses refreshed
 * by one upload each, and `total_sequence_length` is the slot length, so the step has one shape and one set of
 * addresses. Prefill and sampled steps run uncaptured. If capture fails, the shard says so once and runs uncaptured.
 */
import { type DeviceTensor, type HostTensor, NativeOrt, type NativeSession } from "../native/NativeOrt.ts"
import { SamplerTable } from "./SamplerTable.ts"
import { stepInputs } from "./StepInputs.ts"
import type { ShardLoad, ShardLoadResult, StepPlan, StepResult } from "./StepProtocol.ts"
import * as TensorNames from "./TensorNames.ts"

/** Fixed-address inputs and output of the captured decode step (all `maxSeqs` rows). */
interface DecodeGraph {
  readonly inputIds: DeviceTensor<"int64">
  readonly seqlens: DeviceTensor<"int32">
  readonly logitsIndex: DeviceTensor<"int64">
  readonly positions: DeviceTensor<"int64"> | undefined
  readonly greedy: DeviceTensor<"int64">
  readonly total: HostTensor
  disabled: boolean
}

/** The graph id of the captured greedy decode step; -1 tells ONNX Runtime not to capture a run. */
const DECODE_GRAPH_ID = 1
const NO_GRAPH = -1

interface DeviceShard {
  readonly load: ShardLoad
  readonly session: NativeSession
  /** [layer] -> the whole slot buffer of keys / values. */
  readonly keys: ReadonlyArray<DeviceTensor>
  readonly values: ReadonlyArray<DeviceTensor>
  readonly samplers: SamplerTable
  /** Elements of one row (one sequence's slot) of a KV buffer. */
  readonly rowElements: number
  readonly inputNames: ReadonlySet<string>
  readonly graph: DecodeGraph | undefined
}

let shard: DeviceShard | undefined

export async function load(task: ShardLoad): Promise<ShardLoadResult> {
  const started = performance.now()
  // CUDA graphs need every node on the GPU, and ORT 1.29 has no float32 GroupQueryAttention kernel on CUDA, so float32
  // shards never capture; a shard of several captures nothing either (its hidden states cross between sessions).
  // With the option on, ORT captures every run that does not opt out, so it is removed where graphs are not used.
  const useGraphs = task.device.kind === "cuda" && task.device.options?.enable_cuda_graph === "1" && task.dtype !== "float32" &&
    task.isFirst && task.isLast
  const device = task.device.kind === "cuda" && !useGraphs && task.device.options?.enable_cuda_graph !== undefined
    ? { ...task.device, options: Object.fromEntries(Object.entries(task.device.options).filter(([k]) => k !== "enable_cuda_graph")) }
    : task.device
  const session = NativeOrt.load().createSession(task.graphPath, {
    provider: device.kind,
    // TF32 would cost float32 graphs about 1e-3 relative error on the logits: exact float32 is what float32 asks for.
    ...(device.kind === "cuda"
      ? { deviceId: device.id, cuda: { arena_extend_strategy: "kSameAsRequested", ...(task.dtype === "float32" ? { use_tf32: "0" } : {}), ...device.options } }
      : {}),
    intraOpThreads: task.threads,
    graphOptimization: "all"
  })
  const dtype = task.dtype
  const dims = [task.maxSeqs, task.numKvHeads, task.maxLen, task.headDim]
  const numLayers = task.layers[1] - task.layers[0]
  const keys = Array.from({ length: numLayers }, () => session.allocate(dtype, dims))
  const values = Array.from({ length: numLayers }, () => session.allocate(dtype, dims))
  const rowElements = task.numKvHeads * task.maxLen * task.headDim
  const inputNames = new Set(session.inputNames)
  const graph: DecodeGraph | undefined = useGraphs
    ? {
      inputIds: session.allocate("int64", [task.maxSeqs, 1]),
      seqlens: session.allocate("int32", [task.maxSeqs]),
      logitsIndex: session.allocate("int64", [task.maxSeqs, 1]),
      positions: inputNames.has(TensorNames.positionIds) ? session.allocate("int64", [task.maxSeqs, 1]) : undefined,
      greedy: session.allocate("int64", [task.maxSeqs, 1]),
      total: { data: Int32Array.of(task.maxLen), dims: [] },
      disabled: false
    }
    : undefined
  shard = { load: task, session, keys, values, samplers: new SamplerTable(), rowElements, inputNames, graph }
  const bytes = 2 * numLayers * task.maxSeqs * rowElements * (dtype === "float32" ? 4 : 2)
  return { kvBytes: bytes, loadMs: performance.now() - started }
}

/** A greedy decode step through the captured graph: all slot rows, fixed addresses, one shape. */
const graphDecode = (s: DeviceShard, g: DecodeGraph, plan: StepPlan): StepResult => {
  const cfg = s.load
  const rows = cfg.maxSeqs
  const ids = new BigInt64Array(rows)
  const lens = new Int32Array(rows)
  for (let r = 0; r < plan.numRows; r++) {
    ids[r] = BigInt(plan.tokenIds[r]!)
    lens[r] = plan.pastLens[r]!
  }
  g.inputIds.upload(ids)
  g.seqlens.upload(lens)
  if (g.positions !== undefined) g.positions.upload(BigInt64Array.from(lens, (n) => BigInt(n)))
  const feeds: Record<string, HostTensor | DeviceTensor> = {
    [TensorNames.inputIds]: g.inputIds,
    [TensorNames.seqlensK]: g.seqlens,
    [TensorNames.totalSequenceLength]: g.total,
    [TensorNames.logitsIndex]: g.logitsIndex
  }
  if (g.positions !== undefined) feeds[TensorNames.positionIds] = g.positions
  const outputs: Record<string, DeviceTensor | "host"> = { [TensorNames.greedyToken]: g.greedy }
  for (let i = 0; i < s.keys.length; i++) {
    const layer = cfg.layers[0] + i
    feeds[TensorNames.pastKey(layer)] = s.keys[i]!
    feeds[TensorNames.pastValue(layer)] = s.values[i]!
    outputs[TensorNames.presentKey(layer)] = s.keys[i]!
    outputs[TensorNames.presentValue(layer)] = s.values[i]!
  }
  const t0 = performance.now()
  s.session.run(feeds, outputs, { cudaGraphId: DECODE_GRAPH_ID })
  const greedy = g.greedy.download()
  return s.samplers.fromGreedy(plan, greedy, performance.now() - t0)
}

export async function step(plan: StepPlan): Promise<StepResult> {
  const s = shard
  if (s === undefined) throw new Error("shard worker used before load")
  const cfg = s.load
  const g = s.graph
  if (g !== undefined && !g.disabled && plan.kind === "decode" && plan.firstRow === 0 && s.samplers.greedyOnly(plan)) {
    try {
      return graphDecode(s, g, plan)
    } catch (e) {
      // Capture can fail on an ONNX Runtime or driver that does not support it for this graph: serve uncaptured.
      g.disabled = true
      console.warn(`chorus: CUDA graph decode disabled on this shard: ${e instanceof Error ? e.message : String(e)}`)
    }
  }
  const { inputs, allLogits } = stepInputs(cfg, plan)
  // A fused-attention graph takes no position_ids (rotary happens inside attention): feed only what it declares.
  const feeds: Record<string, HostTensor | DeviceTensor> = {}
  for (const [name, t] of Object.entries(inputs)) if (s.inputNames.has(name)) feeds[name] = t
  const outputs: Record<string, DeviceTensor | "host"> = {}
  // The rows this step touches, [firstRow, firstRow + numRows), are contiguous in every slot buffer: a view, no copy.
  const offset = plan.firstRow * s.rowElements
  const dims = [plan.numRows, cfg.numKvHeads, cfg.maxLen, cfg.headDim]
  for (let i = 0; i < s.keys.length; i++) {
    const layer = cfg.layers[0] + i
    const k = s.keys[i]!.view(offset, dims)
    const v = s.values[i]!.view(offset, dims)
    feeds[TensorNames.pastKey(layer)] = k
    feeds[TensorNames.pastValue(layer)] = v
    outputs[TensorNames.presentKey(layer)] = k
    outputs[TensorNames.presentValue(layer)] = v
  }
  if (cfg.isLast) s.samplers.register(plan.newSequences)
  const greedyOnly = cfg.isLast && s.samplers.greedyOnly(plan)
  const wanted = cfg.isLast ? (greedyOnly ? TensorNames.greedyToken : TensorNames.logits) : TensorNames.hiddenOut
  outputs[wanted] = "host"

  const t0 = performance.now()
  const out = s.session.run(feeds, outputs, g === undefined ? {} : { cudaGraphId: NO_GRAPH })
  const runMs = performance.now() - t0
  const result = out[wanted]!

  if (!cfg.isLast) return { hidden: result.data as Float32Array | Uint16Array, runMs, sampleMs: 0 }
  if (greedyOnly) return s.samplers.fromGreedy(plan, result.data as BigInt64Array, runMs)
  return s.samplers.fromLogits(plan, result.data as Float32Array, cfg.vocabSize, allLogits ? plan.seqLen : 1, runMs)
}

export async function release(rows: ReadonlyArray<number>): Promise<void> {
  shard?.samplers.release(rows)
}

/** Fault injection, as in the CPU worker: the thread ends between two steps. */
export function crash(): never {
  process.exit(1)
}
