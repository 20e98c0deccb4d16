/**
 * The records that cross the thread boundary between the engine (main thread) and a shard worker.
 * Plain data only (structured clone, typed arrays transferred): no classes, functions or Effect values.
 * Logits and KV never leave the worker; a step returns sampled token ids (or hidden states to the next shard).
 */
import type { SamplingParams } from "../sampling/SamplingParams.ts"

/**
 * Where a shard runs. `cpu` uses onnxruntime-node's CPU EP (no build step); `cuda` uses the native IO-binding addon
 * (`npm run build:native`) with the CUDA EP and a device-resident KV cache. `options` are CUDA EP provider options
 * (`gpu_mem_limit`, `arena_extend_strategy`, `cudnn_conv_algo_search`, `use_tf32`, `enable_cuda_graph`, ...).
 */
export type Device =
  | { readonly kind: "cpu" }
  | {
    readonly kind: "cuda"
    readonly id: number
    /** Several GPUs (`cuda:0,1`): shard i runs on `ids[i % ids.length]`; absent: every shard on `id`. */
    readonly ids?: ReadonlyArray<number>
    readonly options?: Readonly<Record<string, string>>
  }

/** `cpu`, `cuda`, `cuda:N` or `cuda:A,B,...` (one GPU per shard, round robin). */
export const parseDevice = (text: string): Device | undefined => {
  if (text === "cpu") return { kind: "cpu" }
  const m = /^cuda(?::(\d+(?:,\d+)*))?$/.exec(text)
  if (m === null) return undefined
  const ids = m[1] === undefined ? [0] : m[1].split(",").map(Number)
  return ids.length === 1 ? { kind: "cuda", id: ids[0]! } : { kind: "cuda", id: ids[0]!, ids }
}

/** The device of shard `index` of a model placed on `device`. */
export const shardDevice = (device: Device, index: number): Device =>
  device.kind === "cuda" && device.ids !== undefined ? { ...device, id: device.ids[index % device.ids.length]! } : device

/** How a shard worker is loaded. One worker thread per shard; the worker owns its ORT session and KV slots. */
export interface ShardLoad {
  /** Path of the shard's `.onnx` graph (weights in external data next to it). */
  readonly graphPath: string
  /** Decoder layers [start, end) this shard runs. */
  readonly layers: readonly [number, number]
  readonly isFirst: boolean
  readonly isLast: boolean
  readonly dtype: "float32" | "float16" | "bfloat16"
  readonly hiddenSize: number
  readonly vocabSize: number
  readonly numKvHeads: number
  readonly headDim: number
  /** KV slots: the most sequences this shard holds at once (rows of the cache). */
  readonly maxSeqs: number
  /** Tokens per slot (the context length). */
  readonly maxLen: number
  /** ORT intra-op threads for this worker. */
  readonly threads: number
  readonly device: Device
}

export interface ShardLoadResult {
  /** Bytes of KV cache allocated by this shard. */
  readonly kvBytes: number
  readonly loadMs: number
}

/** A new sequence registered in the last shard: its sampler lives there. */
export interface NewSequence {
  readonly row: number
  readonly params: SamplingParams
  readonly promptTokenIds: Int32Array
}

/**
 * One forward pass.
 * - `prefill`: one row (`firstRow`), `seqLen` new tokens appended after `pastLens[0]` cached tokens (a prompt chunk).
 * - `decode`: rows [0, numRows), one token each; rows not listed in `sampleRows` are idle or mid-prefill and only
 *   keep the batch contiguous (their write lands at their own next position and is overwritten later).
 */
export interface StepPlan {
  readonly kind: "prefill" | "decode"
  readonly firstRow: number
  readonly numRows: number
  readonly seqLen: number
  /** First shard: token ids, `numRows * seqLen` row-major. */
  readonly tokenIds: Int32Array
  /** Other shards: the previous shard's hidden states, `numRows * seqLen * hidden`. */
  readonly hidden?: Float32Array | Uint16Array
  /** Per row: tokens already in the cache before this step. */
  readonly pastLens: Int32Array
  /** Last shard: rows (relative to firstRow) to sample a token for. */
  readonly sampleRows: Int32Array
  /** Last shard: samplers to create before sampling (prefill of a new sequence). */
  readonly newSequences: ReadonlyArray<NewSequence>
  /** Last shard: also return the float32 logits of the sampled positions (`"last"`) or of every position of a prefill chunk (`"all"`). */
  readonly returnLogits: "none" | "last" | "all"
}

export interface StepResult {
  /** Last shard: one sampled token per entry of `sampleRows`. */
  readonly tokens?: Int32Array
  /** Last shard, when asked: float32 logits, `[entries, vocab]`. */
  readonly logits?: Float32Array
  /** Other shards: hidden states for the next shard. */
  readonly hidden?: Float32Array | Uint16Array
  /** Milliseconds inside ORT `run`, and in sampling. */
  readonly runMs: number
  readonly sampleMs: number
}
