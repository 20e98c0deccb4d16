/**
 * The piscina entry of a shard: runs on its own worker thread, never on the event loop (ORT `run` is synchronous).
 *
 * The thread owns the ORT session and the KV blocks of its sequences: per layer and block id, keys and values
 * `[kvHeads, blockSize, headDim]`, allocated when first written, so memory follows what sequences really hold. The
 * engine's block manager says which blocks a sequence owns (the plan's block tables); blocks shared by a cached
 * prefix are only read. onnxruntime-node copies every output back into JS memory (a pre-allocated output is a copy
 * too, so GroupQueryAttention never sees a shared past/present buffer here): each run therefore passes a compact past
 * gathered from the blocks, exactly the longest row's length, and fetches only the new tokens' keys and values
 * (`new_key.{i}`), never the whole present cache. A packed plan runs as one ORT call for its decoding entries and
 * one per prompt chunk (the graph batches rows of equal length). The last shard also owns each sequence's sampler:
 * logits stay here, only token ids go back.
 */
import { ort } from "../../onnx/OrtFloat16Fix.ts"
import { inTurn } from "./InTurn.ts"
import { SamplerTable, StepOutputs } from "./SamplerTable.ts"
import { type EntryGroup, entryGroups, groupInputs, tokenOffsets } from "./StepInputs.ts"
import type { ShardLoad, ShardLoadResult, StepPlan, StepResult } from "./StepProtocol.ts"
import * as TensorNames from "./TensorNames.ts"

type KvArray = Float32Array | Uint16Array

interface ShardState {
  readonly load: ShardLoad
  readonly session: ort.InferenceSession
  /** [layer] -> block id -> `[kvHeads, blockSize, headDim]` (undefined until first written). */
  readonly keys: Array<Array<KvArray | undefined>>
  readonly values: Array<Array<KvArray | undefined>>
  readonly samplers: SamplerTable
  /** Output names of this step's new keys and values, fetched on every run (never the whole present cache). */
  readonly newKvNames: ReadonlyArray<string>
  /** The graph's inputs: a step feeds only these (graphs converted before the grammar-mask inputs lack them). */
  readonly inputNames: ReadonlySet<string>
  /** Constrained greedy steps fetch the graph's masked ArgMax (the graph has it and the load did not turn it off). */
  readonly maskInGraph: boolean
}

let state: ShardState | undefined

const kvType = (load: ShardLoad) => (load.dtype === "float16" ? "float16" : "float32") as "float16" | "float32"
const allocate = (load: ShardLoad, n: number): KvArray => (load.dtype === "float16" ? new Uint16Array(n) : new Float32Array(n))

export async function load(task: ShardLoad): Promise<ShardLoadResult> {
  const started = performance.now()
  const session = await ort.InferenceSession.create(task.graphPath, {
    intraOpNumThreads: task.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    logSeverityLevel: 3
  })
  const numLayers = task.layers[1] - task.layers[0]
  const empty = () => Array.from({ length: numLayers }, () => new Array<KvArray | undefined>(task.numBlocks).fill(undefined))
  const newKvNames = Array.from({ length: numLayers }, (_, i) => [TensorNames.newKey(task.layers[0] + i), TensorNames.newValue(task.layers[0] + i)]).flat()
  const inputNames = new Set(session.inputNames)
  // (a graph converted before the id lists, FORMAT_VERSION < 7, reads `token_bitmask` otherwise: it takes the logits path)
  const maskInGraph = task.isLast && task.grammarMaskInGraph !== false && inputNames.has(TensorNames.allowedIds)
  state = { load: task, session, keys: empty(), values: empty(), samplers: new SamplerTable(task), newKvNames, inputNames, maskInGraph }
  return { kvBytes: 0, loadMs: performance.now() - started, layout: "blocks", numBlocks: task.numBlocks }
}

/** The past of a group's entries as one `[rows, kvHeads, past, headDim]` array, gathered through their block tables. */
const gatherPast = (cfg: ShardLoad, blocks: Array<KvArray | undefined>, plan: StepPlan, group: EntryGroup, past: number): KvArray => {
  const hd = cfg.headDim
  const bs = cfg.blockSize
  const heads = cfg.numKvHeads
  const rows = group.entries.length
  const out = allocate(cfg, rows * heads * past * hd)
  if (past === 0) return out
  for (let r = 0; r < rows; r++) {
    const e = group.entries[r]!
    const n = plan.pastLens[e]!
    for (let t0 = 0; t0 < n; t0 += bs) {
      const block = blocks[plan.blockTables[e * plan.blocksPerEntry + t0 / bs]!]
      if (block === undefined) throw new Error(`KV block ${plan.blockTables[e * plan.blocksPerEntry + t0 / bs]} read before it was written`)
      const len = Math.min(bs, n - t0)
      for (let h = 0; h < heads; h++) {
        out.set(block.subarray(h * bs * hd, (h * bs + len) * hd), ((r * heads + h) * past + t0) * hd)
      }
    }
  }
  return out
}

/** Writes a group's new keys or values (`[rows, seqLen, kvHeads * headDim]`) into its entries' blocks. */
const writeNew = (cfg: ShardLoad, blocks: Array<KvArray | undefined>, plan: StepPlan, group: EntryGroup, fresh: KvArray) => {
  const hd = cfg.headDim
  const bs = cfg.blockSize
  const heads = cfg.numKvHeads
  const rowStride = group.seqLen * heads * hd
  for (let r = 0; r < group.entries.length; r++) {
    const e = group.entries[r]!
    const start = plan.pastLens[e]!
    for (let t = start; t < start + group.seqLen; t++) {
      const id = plan.blockTables[e * plan.blocksPerEntry + Math.floor(t / bs)]!
      const block = blocks[id] ?? (blocks[id] = allocate(cfg, heads * bs * hd))
      const from = r * rowStride + (t - start) * heads * hd
      const slot = t % bs
      for (let h = 0; h < heads; h++) block.set(fresh.subarray(from + h * hd, from + (h + 1) * hd), (h * bs + slot) * hd)
    }
  }
}

/** Hidden states of every group, back in the plan's packed token order. */
const packHidden = (cfg: ShardLoad, plan: StepPlan, parts: ReadonlyArray<[EntryGroup, KvArray]>, offsets: Int32Array): KvArray => {
  const h = cfg.hiddenSize
  const out = parts[0]![1] instanceof Float32Array ? new Float32Array(offsets[offsets.length - 1]! * h) : new Uint16Array(offsets[offsets.length - 1]! * h)
  for (const [group, data] of parts) {
    for (let r = 0; r < group.entries.length; r++) {
      const e = group.entries[r]!
      out.set(data.subarray(r * group.seqLen * h, (r + 1) * group.seqLen * h), offsets[e]! * h)
    }
  }
  return out
}

export function step(plan: StepPlan): Promise<StepResult> {
  return inTurn(() => runStep(plan))
}

const runStep = async (plan: StepPlan): Promise<StepResult> => {
  const s = state
  if (s === undefined) throw new Error("shard worker used before load")
  const { load: cfg } = s
  // Register new samplers first: whether this step needs full logits depends on every sampled entry's parameters.
  if (cfg.isLast) {
    s.samplers.register(plan.newSequences)
    // Decode ahead: the tokens this thread sampled in the step before, where the plan could not know them yet.
    s.samplers.resolveFeedback(plan)
  }
  const greedyOnly = cfg.isLast && s.samplers.greedyOnly(plan)
  // Structured output at temperature 0: the grammar masks go into the graph, its masked ArgMax comes out (no logits).
  const graphMasked = !greedyOnly && s.maskInGraph && s.samplers.graphMasked(plan)
  const outputs = new StepOutputs(plan, s.samplers)
  const offsets = tokenOffsets(plan)
  const hiddenParts: Array<[EntryGroup, KvArray]> = []
  let runMs = 0

  for (const group of entryGroups(plan)) {
    // The matchers' state is known before the run: each constrained row's mask is computed now, fed with the step.
    const masks = graphMasked ? outputs.prepareMasks(group.entries, cfg.vocabSize) : undefined
    const { inputs, maxPast } = groupInputs(cfg, plan, group, offsets, masks)
    const feeds: Record<string, ort.Tensor> = {}
    for (const [name, t] of Object.entries(inputs)) {
      if (!s.inputNames.has(name)) continue
      const type = t.data instanceof BigInt64Array ? "int64" : t.data instanceof Int32Array ? "int32" : kvType(cfg)
      feeds[name] = new ort.Tensor(type, t.data, [...t.dims])
    }
    const kvDims = [group.entries.length, cfg.numKvHeads, maxPast, cfg.headDim]
    for (let i = 0; i < s.keys.length; i++) {
      const layer = cfg.layers[0] + i
      feeds[TensorNames.pastKey(layer)] = new ort.Tensor(kvType(cfg), gatherPast(cfg, s.keys[i]!, plan, group, maxPast), kvDims)
      feeds[TensorNames.pastValue(layer)] = new ort.Tensor(kvType(cfg), gatherPast(cfg, s.values[i]!, plan, group, maxPast), kvDims)
    }
    const result = !cfg.isLast ? TensorNames.hiddenOut
      : greedyOnly ? TensorNames.greedyToken
      : graphMasked ? TensorNames.maskedGreedyToken
      : TensorNames.logits
    const fetches = [...s.newKvNames, result]

    const t0 = performance.now()
    const out = await s.session.run(feeds, fetches)
    runMs += performance.now() - t0
    for (let i = 0; i < s.keys.length; i++) {
      const layer = cfg.layers[0] + i
      writeNew(cfg, s.keys[i]!, plan, group, out[TensorNames.newKey(layer)]!.data as KvArray)
      writeNew(cfg, s.values[i]!, plan, group, out[TensorNames.newValue(layer)]!.data as KvArray)
    }
    if (!cfg.isLast) hiddenParts.push([group, out[TensorNames.hiddenOut]!.data as KvArray])
    else if (greedyOnly) outputs.greedy(group.entries, out[TensorNames.greedyToken]!.data as BigInt64Array)
    else if (graphMasked) {
      const rejected = outputs.maskedGreedy(group.entries, out[TensorNames.maskedGreedyToken]!.data as BigInt64Array)
      // Never expected (the graph's token is one the mask allows): the group runs again for its logits, and those
      // rows take the logits path. The run writes the same keys and values again.
      if (rejected.length > 0) {
        const t1 = performance.now()
        const again = await s.session.run(feeds, [TensorNames.logits])
        runMs += performance.now() - t1
        const logits = again[TensorNames.logits]!.data as Float32Array
        const V = cfg.vocabSize
        const rows = new Float32Array(rejected.length * V)
        rejected.forEach((e, k) => {
          const r = group.entries.indexOf(e)
          rows.set(logits.subarray(r * V, (r + 1) * V), k * V)
        })
        outputs.logits(rejected, new Int32Array(rejected.length).fill(1), rows, V)
      }
    } else {
      const perEntry = group.allLogits ? group.seqLen : 1
      outputs.logits(group.entries, new Int32Array(group.entries.length).fill(perEntry), out[TensorNames.logits]!.data as Float32Array, cfg.vocabSize)
    }
  }
  if (!cfg.isLast) return { hidden: packHidden(cfg, plan, hiddenParts, offsets), runMs, sampleMs: 0 }
  return outputs.result(runMs)
}

/** Forgets the samplers of sequences that left (their blocks are simply reused). */
export function release(seqIds: ReadonlyArray<number>): Promise<void> {
  return inTurn(async () => state?.samplers.release(seqIds))
}

/**
 * Fault injection: ends this worker thread abruptly, as a native crash or an out-of-memory kill would, between two
 * steps (never inside ORT's `run`, which would take the whole process down). Used by fault tests and chaos drills.
 */
export function crash(): Promise<never> {
  return inTurn(async () => process.exit(1))
}
