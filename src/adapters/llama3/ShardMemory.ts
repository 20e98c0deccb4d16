/**
 * What each shard of a pipeline split holds in GPU memory, from the config alone: its float weights (the layers it
 * runs, plus the embedding table on the first shard and the final norm and LM head on the last) and the KV cache
 * bytes it adds per cached token. For planning a split before any checkpoint exists (docs/multi-gpu.md) and for the
 * per-GPU roofline of a pipeline (tools/bench-gpu/pipeline-roofline.ts). ONNX Runtime's workspace and activations are
 * not counted: the device runtime measures those after a warm-up step and sizes the KV pool from what is left.
 */
import { planShards } from "./Converter.ts"

export { rangesOf } from "./Converter.ts"
import type { LlamaConfig } from "./LlamaConfig.ts"

export type FloatDType = "float32" | "float16" | "bfloat16"

export const bytesPerElement = (dtype: FloatDType): number => dtype === "float32" ? 4 : 2

/** The config fields the estimate reads. */
export type LlamaShape = Pick<LlamaConfig, "vocabSize" | "hiddenSize" | "intermediateSize" | "numLayers" | "numHeads" | "numKvHeads" | "headDim" | "tieWordEmbeddings">

export interface ShardMemory {
  /** Decoder layers [start, end). */
  readonly layers: readonly [number, number]
  readonly weightBytes: number
  /** KV cache bytes per cached token of one sequence: K and V of each of its layers. */
  readonly kvBytesPerToken: number
}

/** Elements of one decoder layer: q, k, v, o, gate, up, down and its two norms. */
export const layerElements = (c: LlamaShape): number => {
  const q = c.numHeads * c.headDim
  const kv = c.numKvHeads * c.headDim
  return c.hiddenSize * (2 * q + 2 * kv) + 3 * c.hiddenSize * c.intermediateSize + 2 * c.hiddenSize
}

/** Weight bytes of the shard that runs `layers`. The converter writes the LM head as its own [hidden, vocab] weight, so a tied table is held twice. */
export const shardWeightBytes = (c: LlamaShape, layers: readonly [number, number], dtype: FloatDType): number => {
  const table = c.vocabSize * c.hiddenSize
  const first = layers[0] === 0 ? table : 0
  const last = layers[1] === c.numLayers ? table + c.hiddenSize : 0
  return (first + (layers[1] - layers[0]) * layerElements(c) + last) * bytesPerElement(dtype)
}

/** The shards `chorus convert --shards n` makes (planShards: equal layer counts) and what each holds. */
export const shardMemoryPlan = (c: LlamaShape, shards: number, dtype: FloatDType): Array<ShardMemory> =>
  planShards(c.numLayers, shards).map((layers) => ({
    layers,
    weightBytes: shardWeightBytes(c, layers, dtype),
    kvBytesPerToken: 2 * (layers[1] - layers[0]) * c.numKvHeads * c.headDim * bytesPerElement(dtype)
  }))

/**
 * The most tokens a shard's KV pool can hold on a GPU of `gpuBytes` at `utilization` (what `--gpu-memory-utilization`
 * allows, less the weights), before the workspace and activations the runtime measures: an upper bound; 0 where the
 * weights alone do not fit.
 */
export const kvTokenCeiling = (shard: ShardMemory, gpuBytes: number, utilization: number): number =>
  Math.max(0, Math.floor((gpuBytes * utilization - shard.weightBytes) / shard.kvBytesPerToken))

/**
 * Layers per shard for GPUs of different sizes (`gpuBytes[i]`: shard i's GPU): the contiguous split whose smallest
 * KV pool is largest, since the engine's pool is the smallest over the shards (each holds every sequence's keys for
 * its own layers). Shard i may use `gpuBytes[i] * utilization` for its weights (the embedding table on the first,
 * the final norm and LM head on the last) and `tokens` of KV for its layers; the largest `tokens` for which the
 * layers fit in order is found by bisection. Throws where the weights alone do not fit.
 */
export const planShardsByMemory = (c: LlamaShape, dtype: FloatDType, gpuBytes: ReadonlyArray<number>, utilization: number): Array<number> => {
  const n = gpuBytes.length
  if (n < 1 || n > c.numLayers) throw new RangeError(`a split needs 1 to ${c.numLayers} shards (the number of layers), found ${n}`)
  const b = bytesPerElement(dtype)
  const layerBytes = layerElements(c) * b
  const kvPerLayerToken = 2 * c.numKvHeads * c.headDim * b
  const table = c.vocabSize * c.hiddenSize * b
  const fixed = (i: number) => (i === 0 ? table : 0) + (i === n - 1 ? table + c.hiddenSize * b : 0)
  // Layers shard i can hold at `tokens` of KV, at least 1.
  const room = (i: number, tokens: number) => Math.floor((gpuBytes[i]! * utilization - fixed(i)) / (layerBytes + tokens * kvPerLayerToken))
  const split = (tokens: number): Array<number> | undefined => {
    const out: Array<number> = []
    let left = c.numLayers
    for (let i = 0; i < n; i++) {
      const later = n - 1 - i // every later shard needs a layer
      const take = i === n - 1 ? left : Math.min(room(i, tokens), left - later)
      if (take < 1 || take > room(i, tokens)) return undefined
      out.push(take)
      left -= take
    }
    return left === 0 ? out : undefined
  }
  let best = split(0)
  if (best === undefined) {
    const need = gpuBytes.map((_, i) => fixed(i)).reduce((a, x) => a + x, 0) + c.numLayers * layerBytes
    throw new RangeError(
      `the weights (${(need / 1e9).toFixed(1)} GB) do not fit ${n} GPU(s) of ${gpuBytes.map((g) => (g / 2 ** 30).toFixed(0)).join(", ")} GiB at utilization ${utilization}`
    )
  }
  let lo = 0
  let hi = Math.max(1, Math.ceil(Math.max(...gpuBytes) / kvPerLayerToken))
  while (lo < hi) {
    const mid = Math.floor((lo + hi + 1) / 2)
    const s = split(mid)
    if (s !== undefined) {
      lo = mid
      best = s
    } else hi = mid - 1
  }
  return best
}
