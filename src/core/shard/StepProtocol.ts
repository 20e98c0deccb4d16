/**
 * The records that cross the thread boundary between the engine (main thread) and a shard worker.
 * Plain data only (structured clone, typed arrays transferred): no classes, functions or Effect values.
 * Logits and KV never leave the worker; a step returns sampled token ids (or hidden states to the next shard).
 */
import type { LinearKernels } from "../native/CudaOps.ts"
import type { GrammarVocab } from "../sampling/Grammar.ts"
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

/**
 * `cpu`, `cuda`, `cuda:N`, `cuda:A,B,...` (one GPU per shard, round robin) or `cuda:all` (GPUs 0 to `gpuCount` - 1;
 * undefined without a count of at least 1, which the caller finds: `countGpus` in native/GpuCount.ts).
 */
export const parseDevice = (text: string, gpuCount?: number): Device | undefined => {
  if (text === "cpu") return { kind: "cpu" }
  if (text === "cuda:all") {
    if (gpuCount === undefined || !Number.isInteger(gpuCount) || gpuCount < 1) return undefined
    return cudaDevices(Array.from({ length: gpuCount }, (_, i) => i))
  }
  const m = /^cuda(?::(\d+(?:,\d+)*))?$/.exec(text)
  if (m === null) return undefined
  return cudaDevices(m[1] === undefined ? [0] : m[1].split(",").map(Number))
}

const cudaDevices = (ids: ReadonlyArray<number>): Device =>
  ids.length === 1 ? { kind: "cuda", id: ids[0]! } : { kind: "cuda", id: ids[0]!, ids }

/** GPUs a device spreads its shards over (1 for `cuda:N`; 0 for the CPU). */
export const gpuCountOf = (device: Device): number => device.kind === "cpu" ? 0 : device.ids?.length ?? 1

/** The device of shard `index` of a model placed on `device`. */
export const shardDevice = (device: Device, index: number): Device =>
  device.kind === "cuda" && device.ids !== undefined ? { ...device, id: device.ids[index % device.ids.length]! } : device

/**
 * How a shard worker is loaded. One worker thread per shard; the worker owns its ORT session and its KV cache.
 *
 * KV lives in blocks of `blockSize` tokens, `numBlocks` per layer; the engine's block manager decides which blocks a
 * sequence owns (its block table) and the worker only reads and writes where the table says. A runtime whose
 * attention needs one contiguous row per sequence (GroupQueryAttention share-buffer on a device) holds `maxSeqs` rows
 * of `maxLen` tokens instead and uses the plan's `rows`; it reports `layout: "rows"` and the engine then gives every
 * sequence a row and turns prefix caching off.
 */
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
  /** The most sequences in one step (rows of a row-layout cache). */
  readonly maxSeqs: number
  /** Tokens per sequence (the context length). */
  readonly maxLen: number
  /** Tokens per KV block. */
  readonly blockSize: number
  /**
   * KV blocks per layer. A device runtime may size its pool itself (`kvMemory`) and report the number it allocated;
   * the engine then uses the smallest over the shards.
   */
  readonly numBlocks: number
  /** Device runtimes: size the pool from free memory after weights and a warm-up step (vLLM's `gpu_memory_utilization`). */
  readonly kvMemory?: {
    readonly utilization: number
    readonly maxNumBatchedTokens: number
    /**
     * The part of what is left that this shard takes: 1 / (shards still to load on its device, itself included), so
     * shards sharing a GPU split its memory instead of the first taking it all.
     */
    readonly share: number
  } | undefined
  /** ORT intra-op threads for this worker. */
  readonly threads: number
  readonly device: Device
  /** CUDA: 4-bit linears through Chorus's custom-op library (`CudaOps.ts`) instead of ORT's MatMulNBits. */
  readonly linearKernels?: LinearKernels
  /** CUDA: GroupQueryAttention through Chorus's custom-op library (`--decode-attention chorus`, experimental). */
  readonly chorusAttention?: boolean
  /**
   * Last shard: the vocabulary for constrained decoding (`SamplingParams.grammar`); absent where the model's codec
   * cannot give token bytes (a grammar is then refused).
   */
  readonly grammar?: GrammarVocab | undefined
  /**
   * Last shard (CPU runtime): a greedy step with constrained sequences feeds their grammar masks to the graph and
   * fetches its masked ArgMax instead of the logits. Default true; false takes the logits path (tests and benchmarks
   * compare the two).
   */
  readonly grammarMaskInGraph?: boolean | undefined
}

export interface ShardLoadResult {
  /** Bytes of KV cache allocated by this shard (0 where blocks are allocated as they are first written). */
  readonly kvBytes: number
  readonly loadMs: number
  /** `blocks`: reads and writes through block tables (prefix caching works); `rows`: one row per sequence. */
  readonly layout: "blocks" | "rows"
  /** Blocks per layer this shard holds (its `numBlocks`, or what it sized from free memory). */
  readonly numBlocks: number
  /** Row layouts: the rows (sequences at the full context) it holds, `maxSeqs` or fewer where memory is short. */
  readonly maxSeqs?: number
  /**
   * Row layouts: a freed row's keys and values may be reused by a new sequence with the same prefix. False where
   * the shard replays CUDA graphs: on ONNX Runtime 1.29 on an H200, graph replays beside freed rows that kept their
   * contents ended in an illegal memory access (with reuse at 16 streams, without it at 256), while graph runs whose
   * freed rows start over at length 0 have not failed (docs/benchmarks.md, "Row reuse and CUDA graphs").
   */
  readonly rowReuse?: boolean
  /** CUDA: which of Chorus's kernels the shard runs, or why it runs ONNX Runtime's after all (for the start-up log). */
  readonly kernels?: string
}

/** A new sequence registered in the last shard: its sampler lives there until `release`. */
export interface NewSequence {
  readonly seqId: number
  readonly params: SamplingParams
  readonly promptTokenIds: Int32Array
  /**
   * Set when the sequence asked for logprobs: how many top alternatives to return with each sampled token's own
   * logprob (0..20). Such a sequence is always sampled from the logits (never the graph's ArgMax).
   */
  readonly logprobs?: number
}

/**
 * A plan's token id that stands for the token its sequence's previous step sampled (decode ahead: the engine handed
 * this step out before that token came back). The last shard, which sampled it, puts it in (`SamplerTable`); only
 * plans for a model of one shard carry it.
 */
export const FEEDBACK_TOKEN = -1

/**
 * One forward pass over a packed batch (vLLM v1's one rule): each entry is a sequence that appends `numTokens` tokens
 * after the `pastLens` tokens already cached — 1 for a decoding sequence, a prompt chunk for a prefilling one — and
 * every entry's tokens sit back to back in `tokenIds` (or `hidden`). Entries that complete their known tokens sample
 * the next one (`sampleEntries`). A runtime may split an entry group into several ORT runs where its graph needs
 * equal lengths per batch (the CPU's GroupQueryAttention); a paged device graph runs the whole plan at once.
 */
export interface StepPlan {
  /** Per entry: the sequence (sampler key). */
  readonly seqIds: Int32Array
  /** Per entry: its row in a row-layout cache (unused by block layouts). */
  readonly rows: Int32Array
  /** Per entry: new tokens in this step. */
  readonly numTokens: Int32Array
  /** Per entry: tokens already in the cache before this step. */
  readonly pastLens: Int32Array
  /** First shard: the new tokens, packed in entry order (`sum(numTokens)`). */
  readonly tokenIds: Int32Array
  /** Other shards: the previous shard's hidden states, packed `[sum(numTokens), hidden]`. */
  readonly hidden?: Float32Array | Uint16Array
  /** Per entry: its block ids, `[entries, blocksPerEntry]` row-major (padding repeats the entry's last block). */
  readonly blockTables: Int32Array
  readonly blocksPerEntry: number
  /** Last shard: entries that sample a token, in the order the result's `tokens` come back. */
  readonly sampleEntries: Int32Array
  /** Last shard: samplers to create before sampling (first chunk of a new sequence). */
  readonly newSequences: ReadonlyArray<NewSequence>
  /**
   * Last shard, per entry: 0 no logits back; 1 the float32 logits of its last position; 2 of every new position
   * (a prompt's logits for echo and prompt logprobs). Returned packed in entry order.
   */
  readonly returnLogits: Uint8Array
}

export interface StepResult {
  /** Last shard: one sampled token per entry of `sampleEntries`. */
  readonly tokens?: Int32Array
  /** Last shard, when any entry asked: float32 logits `[positions, vocab]`, entries in order. */
  readonly logits?: Float32Array
  /** Other shards: hidden states for the next shard, packed like the plan's tokens. */
  readonly hidden?: Float32Array | Uint16Array
  /**
   * Last shard, when a sampled entry's sequence asked for logprobs: per sample entry (the order of `tokens`) the
   * number of values it has (0: none; else 1 + its top alternatives), then those values packed in that order: first
   * the sampled token's id and logprob, then the top ids and logprobs, most likely first. Computed in the worker
   * from the raw logits the token was sampled from; the logits themselves stay there.
   */
  readonly logprobs?: { readonly counts: Int32Array; readonly ids: Int32Array; readonly values: Float32Array }
  /** Milliseconds inside ORT `run`, and in sampling. */
  readonly runMs: number
  readonly sampleMs: number
}

/** Total new tokens of a plan. */
export const planTokens = (plan: StepPlan): number => {
  let n = 0
  for (const t of plan.numTokens) n += t
  return n
}
