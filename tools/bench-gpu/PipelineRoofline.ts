/**
 * The HBM roofline of decode through a pipeline of shards, one GPU each (issue 11). Each decode step of `batch`
 * sequences makes every shard stream its layers' weights (the first shard gathers embedding rows instead of reading
 * its table) and the keys and values of its layers for every cached position, at its GPU's bandwidth.
 *
 * - Stages in sequence: a step passes shard 0, then shard 1, ...; its floor is the sum of the shards' times, which for
 *   equal GPUs is the whole model's bytes over one GPU's bandwidth. This is the bound of a single stream (its next
 *   token needs the last one, so nothing can overlap) and of a pipeline that runs one step at a time, as Chorus does.
 * - Pipelined: with as many micro-batches in flight as shards, every GPU streams at once and the floor per step is the
 *   slowest shard's time: about 1/N of the above. The bound for many streams once micro-batches exist.
 */
import type { FloatDType, LlamaShape } from "../../src/adapters/llama3/ShardMemory.ts"
import { bytesPerElement, shardMemoryPlan } from "../../src/adapters/llama3/ShardMemory.ts"

export interface PipelineWorkload {
  readonly batch: number
  /** Cached positions each sequence attends to, on average over the timed steps (prompt + half the output). */
  readonly meanContext: number
}

export interface PipelineRoofline {
  /** Bytes each shard streams per step. */
  readonly shardBytes: ReadonlyArray<number>
  /** Floor of a step with the stages in sequence, and the output tokens per second it allows. */
  readonly sequentialMs: number
  readonly sequentialTokensPerSecond: number
  /** Floor of a step with every stage busy at once (micro-batches in flight). */
  readonly pipelinedMs: number
  readonly pipelinedTokensPerSecond: number
}

/**
 * The floors of one decode step of `w.batch` sequences through `shards` shards of model `c` at `dtype`, each shard on
 * a GPU that streams `bandwidth` bytes per second (a measured rate, e.g. a device-to-device copy's bytes read plus
 * written per second).
 */
export const pipelineRoofline = (c: LlamaShape, shards: number, dtype: FloatDType, w: PipelineWorkload, bandwidth: number): PipelineRoofline => {
  if (!(bandwidth > 0)) throw new RangeError(`bandwidth must be positive, found ${bandwidth}`)
  if (!(w.batch >= 1) || !(w.meanContext >= 0)) throw new RangeError(`batch must be at least 1 and meanContext non-negative, found ${w.batch} and ${w.meanContext}`)
  const b = bytesPerElement(dtype)
  const shardBytes = shardMemoryPlan(c, shards, dtype).map((s) => {
    // The first shard gathers one embedding row per sequence instead of reading its table.
    const table = s.layers[0] === 0 ? (c.vocabSize - w.batch) * c.hiddenSize * b : 0
    return s.weightBytes - table + s.kvBytesPerToken * w.batch * w.meanContext
  })
  const sequentialMs = (1000 * shardBytes.reduce((n, x) => n + x, 0)) / bandwidth
  const pipelinedMs = (1000 * Math.max(...shardBytes)) / bandwidth
  return {
    shardBytes,
    sequentialMs,
    sequentialTokensPerSecond: (1000 * w.batch) / sequentialMs,
    pipelinedMs,
    pipelinedTokensPerSecond: (1000 * w.batch) / pipelinedMs
  }
}
