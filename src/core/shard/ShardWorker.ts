/**
 * The piscina entry of a shard: runs on its own worker thread, never on the event loop (ORT `run` is synchronous).
 *
 * The thread owns the ORT session and the KV cache of its sequences: one buffer per layer for keys and one for
 * values, `[maxSeqs, kvHeads, maxLen, headDim]`, bound as both `past_*` input and `present_*` output so that
 * GroupQueryAttention appends in place (share-buffer mode) and nothing is copied between steps. The last shard also
 * owns each sequence's sampler: logits stay here, only token ids go back.
 */
import { ort } from "../onnx/OrtFloat16Fix.ts"
import { Sampler } from "../sampling/Sampler.ts"
import type { ShardLoad, ShardLoadResult, StepPlan, StepResult } from "./StepProtocol.ts"

interface ShardState {
  readonly load: ShardLoad
  readonly session: ort.InferenceSession
  readonly keys: Array<Float32Array | Uint16Array>
  readonly values: Array<Float32Array | Uint16Array>
  readonly samplers: Map<number, Sampler>
}

let state: ShardState | undefined

const kvType = (load: ShardLoad) => (load.dtype === "float16" ? "float16" : "float32") as "float16" | "float32"

export async function load(task: ShardLoad): Promise<ShardLoadResult> {
  const started = performance.now()
  const session = await ort.InferenceSession.create(task.graphPath, {
    intraOpNumThreads: task.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    logSeverityLevel: 3
  })
  const perLayer = task.maxSeqs * task.numKvHeads * task.maxLen * task.headDim
  const make = () => (task.dtype === "float16" ? new Uint16Array(perLayer) : new Float32Array(perLayer))
  const numLayers = task.layers[1] - task.layers[0]
  const keys = Array.from({ length: numLayers }, make)
  const values = Array.from({ length: numLayers }, make)
  state = { load: task, session, keys, values, samplers: new Map() }
  const bytesPer = task.dtype === "float16" ? 2 : 4
  return { kvBytes: 2 * numLayers * perLayer * bytesPer, loadMs: performance.now() - started }
}

export async function step(plan: StepPlan): Promise<StepResult> {
  const s = state
  if (s === undefined) throw new Error("shard worker used before load")
  const { load: cfg } = s
  const rows = plan.numRows
  const feeds: Record<string, ort.Tensor> = {}
  const fetches: Record<string, ort.Tensor> = {}

  if (cfg.isFirst) {
    feeds.input_ids = new ort.Tensor("int64", BigInt64Array.from(plan.tokenIds, (t) => BigInt(t)), [rows, plan.seqLen])
  } else {
    if (plan.hidden === undefined) throw new Error("a non-first shard needs hidden states")
    feeds.hidden_in = new ort.Tensor(kvType(cfg), plan.hidden, [rows, plan.seqLen, cfg.hiddenSize])
  }
  const seqlens = new Int32Array(rows)
  let total = 0
  for (let r = 0; r < rows; r++) {
    seqlens[r] = plan.pastLens[r]! + plan.seqLen - 1
    total = Math.max(total, seqlens[r]! + 1)
  }
  feeds.seqlens_k = new ort.Tensor("int32", seqlens, [rows])
  feeds.total_sequence_length = new ort.Tensor("int32", Int32Array.of(total), [])

  // Views of the slot rows this step touches: contiguous, so no copy in or out.
  const rowElems = cfg.numKvHeads * cfg.maxLen * cfg.headDim
  const kvDims = [rows, cfg.numKvHeads, cfg.maxLen, cfg.headDim]
  for (let i = 0; i < s.keys.length; i++) {
    const layer = cfg.layers[0] + i
    const k = new ort.Tensor(kvType(cfg), s.keys[i]!.subarray(plan.firstRow * rowElems, (plan.firstRow + rows) * rowElems), kvDims)
    const v = new ort.Tensor(kvType(cfg), s.values[i]!.subarray(plan.firstRow * rowElems, (plan.firstRow + rows) * rowElems), kvDims)
    feeds[`past_key.${layer}`] = k
    feeds[`past_value.${layer}`] = v
    fetches[`present_key.${layer}`] = k
    fetches[`present_value.${layer}`] = v
  }

  const allLogits = cfg.isLast && plan.kind === "prefill" && plan.returnLogits === "all"
  if (cfg.isLast) {
    const n = allLogits ? plan.seqLen : 1
    const index = new BigInt64Array(rows * n)
    for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) index[r * n + j] = BigInt(allLogits ? j : plan.seqLen - 1)
    feeds.logits_index = new ort.Tensor("int64", index, [rows, n])
  }

  const t0 = performance.now()
  const out = await s.session.run(feeds, { ...fetches, [cfg.isLast ? "logits" : "hidden_out"]: null } as never)
  const runMs = performance.now() - t0

  if (!cfg.isLast) {
    const hidden = out.hidden_out!.data as Float32Array | Uint16Array
    return { hidden, runMs, sampleMs: 0 }
  }

  const logits = out.logits!.data as Float32Array
  const vocab = cfg.vocabSize
  const perRow = allLogits ? plan.seqLen : 1
  const t1 = performance.now()
  for (const seq of plan.newSequences) s.samplers.set(seq.row, new Sampler(seq.params, seq.promptTokenIds))
  const tokens = new Int32Array(plan.sampleRows.length)
  for (let i = 0; i < plan.sampleRows.length; i++) {
    const rel = plan.sampleRows[i]!
    const sampler = s.samplers.get(plan.firstRow + rel)
    if (sampler === undefined) throw new Error(`no sampler registered for row ${plan.firstRow + rel}`)
    tokens[i] = sampler.sample(logits, (rel * perRow + perRow - 1) * vocab, vocab)
  }
  const sampleMs = performance.now() - t1

  let returned: Float32Array | undefined
  if (plan.returnLogits === "all") returned = logits.slice()
  else if (plan.returnLogits === "last") {
    returned = new Float32Array(plan.sampleRows.length * vocab)
    for (let i = 0; i < plan.sampleRows.length; i++) {
      const off = (plan.sampleRows[i]! * perRow + perRow - 1) * vocab
      returned.set(logits.subarray(off, off + vocab), i * vocab)
    }
  }
  const result: StepResult = returned === undefined ? { tokens, runMs, sampleMs } : { tokens, logits: returned, runMs, sampleMs }
  return result
}

/** Forgets the samplers of rows whose sequences finished (their KV rows are simply reused). */
export async function release(rows: ReadonlyArray<number>): Promise<void> {
  for (const r of rows) state?.samplers.delete(r)
}
