/**
 * What each shard of a pipeline split holds in GPU memory, from the config alone: its float weights (the layers it
 * runs, plus the embedding table on the first shard and the final norm and LM head on the last) and the KV cache
 * bytes it adds per cached token. For planning a split before any checkpoint exists (docs/multi-gpu.md) and for the
 * per-GPU roofline of a pipeline (tools/bench-gpu/pipeline-roofline.ts). ONNX Runtime's workspace and activations are
 * not counted: the device runtime measures those after a warm-up step and sizes the KV pool from what is left.
 */
import { planShards } from "./Converter.ts"
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
