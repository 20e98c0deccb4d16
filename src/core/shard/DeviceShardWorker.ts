/**
 * The piscina entry of a shard on an accelerator (and, through the same addon, on the CPU with IO binding): the
 * native addon (`src/core/native/NativeOrt.ts`) runs the session with IO binding, so the KV cache stays in device
 * memory for the shard's whole life. Two cache layouts, chosen by the graph the shard was given:
 *
 * - `blocks` (a `paged` graph, PagedAttention): per layer one key and one value pool `[numBlocks, blockSize, kvHeads,
 *   headDim]`, bound as both `key_cache.{i}` input and `key_cache_out.{i}` output (the op writes in place). A whole
 *   packed plan runs in one call; the engine's block tables say where each sequence's tokens live. With `kvMemory`
 *   the pool is sized from the device memory left after the weights and a warm-up step of `maxNumBatchedTokens`.
 * - `rows` (a `fused` graph, GroupQueryAttention share-buffer): per layer `[maxSeqs, kvHeads, maxLen, headDim]`, one
 *   row per sequence. A plan runs as its `entryGroups`: the decoding entries together over rows `[0, maxRow]` (rows
 *   not decoding ride along with a dummy token written where their next token will land, so nothing cached is
 *   touched), then each prompt chunk alone on a one-row view.
 *
 * CUDA graphs (CUDA EP option `enable_cuda_graph: "1"`, one shard holding the whole model, half precision): greedy
 * decode-only steps replay a graph captured per batch-size bucket (1, 2, 4, ... up to `maxSeqs`), with the small
 * inputs in device tensors at fixed addresses refreshed by one upload each, and PagedAttention's host bounds
 * (`attention_metadata`) fixed at `[1, maxLen]`. Other steps run uncaptured (graph id -1). If capture fails, the shard
 * says so once and runs uncaptured from then on.
 */
import { chorusOpsChoice, cudaOpsLibrary, cudaOpsLibraryPath, rewriteForChorusOps } from "../native/CudaOps.ts"
import { type BoundRun, type DeviceTensor, type HostTensor, NativeOrt, type NativeSession } from "../native/NativeOrt.ts"
import { inTurn } from "./InTurn.ts"
import { pagedInputs } from "./PagedInputs.ts"
import { SamplerTable, StepOutputs } from "./SamplerTable.ts"
import { entryGroups, groupInputs, maskInputs, tokenOffsets } from "./StepInputs.ts"
import type { ShardLoad, ShardLoadResult, StepPlan, StepResult } from "./StepProtocol.ts"
import * as TensorNames from "./TensorNames.ts"

/** -1 tells ONNX Runtime not to capture a run. */
const NO_GRAPH = -1
const GiB = 1024 ** 3

type Feeds = Record<string, HostTensor | DeviceTensor>
type Outputs = Record<string, DeviceTensor | "host">

/** Fixed-address inputs and output of one captured decode bucket of the block layout. */
interface BlockBucket {
  readonly size: number
  readonly graphId: number
  readonly inputIds: DeviceTensor<"int64">
  readonly cumulative: DeviceTensor<"int32">
  readonly past: DeviceTensor<"int32">
  readonly table: DeviceTensor<"int32">
  readonly logitsIndex: DeviceTensor<"int64">
  readonly greedy: DeviceTensor<"int64">
  /** The step's binding, made at its first run (every tensor it binds is the same at every replay). */
  bound?: BoundRun
}

/** Fixed-address inputs and output of one captured decode bucket of the row layout (rows `[0, size)`). */
interface RowBucket {
  readonly size: number
  readonly graphId: number
  readonly inputIds: DeviceTensor<"int64">
  readonly seqlens: DeviceTensor<"int32">
  readonly positions: DeviceTensor<"int64"> | undefined
  readonly logitsIndex: DeviceTensor<"int64">
  readonly greedy: DeviceTensor<"int64">
  /** The step's binding, made at its first run (every tensor it binds is the same at every replay). */
  bound?: BoundRun
}

interface Common {
  readonly load: ShardLoad
  readonly session: NativeSession
  readonly samplers: SamplerTable
  readonly inputNames: ReadonlySet<string>
  /** [layer of the shard] -> its key / value cache (pool or row buffer). */
  readonly keys: ReadonlyArray<DeviceTensor>
  readonly values: ReadonlyArray<DeviceTensor>
  /** Bucket sizes for captured decode steps (ascending; the last is the largest batch); empty: no graphs. */
  readonly bucketSizes: ReadonlyArray<number>
  graphsDisabled: boolean
}

interface BlockShard extends Common {
  readonly layout: "blocks"
  readonly numBlocks: number
  /** Table columns of a captured step: blocks of one full-context sequence. */
  readonly maxBlocksPerSeq: number
  readonly buckets: Map<number, BlockBucket>
}

interface RowShard extends Common {
  readonly layout: "rows"
  /** Elements of one row (one sequence's slot) of a KV buffer. */
  readonly rowElements: number
  /** Per row: tokens written so far (where the row's next token lands); 0 for a free row. */
  readonly rowLen: Int32Array
  /** Per row: the sequence that last wrote it (-1 none), so `release` can free its row. */
  readonly rowSeq: Int32Array
  /** Freed rows keep their keys, values and length for reuse (see `release`); off where CUDA graphs replay. */
  readonly rowReuse: boolean
  readonly buckets: Map<number, RowBucket>
}

type DeviceShard = BlockShard | RowShard

let shard: DeviceShard | undefined

const nextPow2 = (n: number): number => {
  let p = 1
  while (p < n) p *= 2
  return p
}

/** 1, 2, 4, ... and the top one: `maxSeqs` rounded up to a power of two (blocks) or `maxSeqs` itself (rows). */
const bucketSizesOf = (top: number): Array<number> => {
  const sizes: Array<number> = []
  for (let b = 1; b < top; b *= 2) sizes.push(b)
  sizes.push(top)
  return sizes
}

const bucketFor = (sizes: ReadonlyArray<number>, n: number): { size: number; graphId: number } | undefined => {
  const i = sizes.findIndex((b) => b >= n)
  return i < 0 ? undefined : { size: sizes[i]!, graphId: i + 1 }
}

const elementBytes = (dtype: ShardLoad["dtype"]): number => (dtype === "float32" ? 4 : 2)
const gib = (bytes: number): string => (bytes / GiB).toFixed(2)

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/** Binds each layer's cache buffers both as input and as output (written in place). */
const bindCaches = (s: Common, feeds: Feeds, outputs: Outputs, keys: ReadonlyArray<DeviceTensor> = s.keys, values: ReadonlyArray<DeviceTensor> = s.values): void => {
  const cfg = s.load
  const paged = s.inputNames.has(TensorNames.keyCache(cfg.layers[0]))
  for (let i = 0; i < keys.length; i++) {
    const layer = cfg.layers[0] + i
    if (paged) {
      feeds[TensorNames.keyCache(layer)] = keys[i]!
      feeds[TensorNames.valueCache(layer)] = values[i]!
      outputs[TensorNames.keyCacheOut(layer)] = keys[i]!
      outputs[TensorNames.valueCacheOut(layer)] = values[i]!
    } else {
      feeds[TensorNames.pastKey(layer)] = keys[i]!
      feeds[TensorNames.pastValue(layer)] = values[i]!
      outputs[TensorNames.presentKey(layer)] = keys[i]!
      outputs[TensorNames.presentValue(layer)] = values[i]!
    }
  }
}

// ------------------------------------------------------------------------------------------------ load

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
  // Chorus's kernels: the same shard with its float16 MatMul (and, asked for, MatMulNBits and GroupQueryAttention)
  // nodes renamed, and the library that runs them. By default (`auto`) only where the library is built; asked for by
  // name, its absence is an error.
  let graphPath = task.graphPath
  let customOpsLibrary: string | undefined
  let explicit = false
  let kernels: string | undefined  // for the start-up log
  if (device.kind === "cuda") {
    const linearKernels = task.linearKernels ?? "auto", attention = task.chorusAttention === true
    const flag = linearKernels === "chorus" ? "--linear-kernels chorus" : attention ? "--decode-attention chorus" : undefined
    explicit = flag !== undefined
    const library = cudaOpsLibrary()
    if (flag !== undefined && library === undefined) throw new Error(`${flag} needs ${cudaOpsLibraryPath()}: build it with npm run build:cuda-ops (nvcc)`)
    const choice = chorusOpsChoice(linearKernels, attention, library !== undefined)
    if (library !== undefined && (choice.float16Linears || choice.int4Linears || choice.attention)) {
      const rewritten = rewriteForChorusOps(task.graphPath, choice)
      if (flag !== undefined && rewritten.int4Linears + rewritten.float16Linears + rewritten.attentions > 0 && task.dtype !== "float16") {
        throw new Error(`${flag} runs float16 shards only, this one is ${task.dtype}`)
      }
      if (rewritten.path !== task.graphPath) {
        graphPath = rewritten.path
        customOpsLibrary = library
        kernels = `Chorus's kernels for ${[
          rewritten.float16Linears > 0
            ? `${rewritten.float16Linears} float16 linears${rewritten.swigluFolds > 0 ? ` (SwiGLU inside ${rewritten.swigluFolds} down projections)` : ""}`
            : "",
          rewritten.int4Linears > 0 ? `${rewritten.int4Linears} 4-bit linears` : "",
          rewritten.attentions > 0 ? `${rewritten.attentions} attention layers` : "",
          rewritten.swigluOps > 0 ? `${rewritten.swigluOps} SwiGLUs` : "",
          rewritten.greedyArgmax > 0 ? "the greedy ArgMax" : ""
        ].filter((k) => k !== "").join(", ")} (${library})`
      }
    }
  }
  const open = (graph: string, library: string | undefined) =>
    NativeOrt.load().createSession(graph, {
      provider: device.kind,
      ...(library === undefined ? {} : { customOpsLibrary: library }),
      // TF32 would cost float32 graphs about 1e-3 relative error on the logits: exact float32 is what float32 asks for.
      ...(device.kind === "cuda"
        ? { deviceId: device.id, cuda: { arena_extend_strategy: "kSameAsRequested", ...(task.dtype === "float32" ? { use_tf32: "0" } : {}), ...device.options } }
        : {}),
      intraOpThreads: task.threads,
      graphOptimization: "all"
    })
  let session: ReturnType<typeof open>
  try {
    session = open(graphPath, customOpsLibrary)
  } catch (e) {
    // Taken by default (`auto`), a library that is there but does not load here (built against another CUDA runtime
    // or ONNX Runtime) leaves the shard to ORT's kernels instead of failing the start; asked for, it fails.
    if (customOpsLibrary === undefined || explicit) throw e
    kernels = `ONNX Runtime's kernels: Chorus's library did not load (${String(e instanceof Error ? e.message : e).split("\n")[0]})`
    session = open(task.graphPath, undefined)
  }
  const inputNames = new Set(session.inputNames)
  const numLayers = task.layers[1] - task.layers[0]
  const common = { load: task, session, samplers: new SamplerTable(task), inputNames, graphsDisabled: false }

  if (inputNames.has(TensorNames.keyCache(task.layers[0]))) {
    const numBlocks = task.kvMemory !== undefined && task.device.kind === "cuda"
      ? sizePool(task, session, task.device.id, useGraphs)
      : task.numBlocks
    if (!(numBlocks >= 2)) {
      throw new Error(`a paged shard needs at least 2 KV blocks (block 0 is reserved), got numBlocks ${numBlocks} and no kvMemory sizing`)
    }
    const dims = [numBlocks, task.blockSize, task.numKvHeads, task.headDim]
    const keys = Array.from({ length: numLayers }, () => session.allocate(task.dtype, dims))
    const values = Array.from({ length: numLayers }, () => session.allocate(task.dtype, dims))
    shard = {
      ...common,
      layout: "blocks",
      keys,
      values,
      numBlocks,
      maxBlocksPerSeq: Math.ceil(task.maxLen / task.blockSize),
      bucketSizes: useGraphs ? bucketSizesOf(nextPow2(task.maxSeqs)) : [],
      buckets: new Map()
    }
    const kvBytes = 2 * numLayers * numBlocks * task.blockSize * task.numKvHeads * task.headDim * elementBytes(task.dtype)
    return { kvBytes, loadMs: performance.now() - started, layout: "blocks", numBlocks, ...(kernels === undefined ? {} : { kernels }) }
  }

  // Rows the device holds: all `maxSeqs`, or fewer when free memory after weights and a warm-up is short.
  const maxSeqs = task.kvMemory !== undefined && task.device.kind === "cuda" ? sizeRows(task, session, task.device.id, useGraphs) : task.maxSeqs
  const dims = [maxSeqs, task.numKvHeads, task.maxLen, task.headDim]
  const keys = Array.from({ length: numLayers }, () => session.allocate(task.dtype, dims))
  const values = Array.from({ length: numLayers }, () => session.allocate(task.dtype, dims))
  const rowElements = task.numKvHeads * task.maxLen * task.headDim
  shard = {
    ...common,
    load: { ...task, maxSeqs },
    layout: "rows",
    keys,
    values,
    rowElements,
    rowLen: new Int32Array(maxSeqs),
    rowSeq: new Int32Array(maxSeqs).fill(-1),
    rowReuse: !useGraphs,
    bucketSizes: useGraphs ? bucketSizesOf(maxSeqs) : [],
    buckets: new Map()
  }
  const kvBytes = 2 * numLayers * maxSeqs * rowElements * elementBytes(task.dtype)
  // A row layout holds `maxSeqs` whole rows: the engine sees it as `maxSeqs * maxLen / blockSize` blocks.
  return {
    kvBytes,
    loadMs: performance.now() - started,
    layout: "rows",
    numBlocks: maxSeqs * Math.ceil(task.maxLen / task.blockSize) + 1,
    maxSeqs,
    rowReuse: shard.rowReuse,
    ...(kernels === undefined ? {} : { kernels })
  }
}

/** What `utilization` (times this shard's share) of the device allows beyond everything in use now. */
const kvBudget = (task: ShardLoad, deviceId: number) => {
  const { free, total } = NativeOrt.load().deviceMemory(deviceId)
  const kvMemory = task.kvMemory!
  return { free, total, budget: Math.max(0, total * kvMemory.utilization - (total - free)) * kvMemory.share }
}

/**
 * Rows that fit: one uncaptured warm-up prompt chunk of `maxNumBatchedTokens` tokens (at most `maxLen`, the largest
 * single run of a row layout) over a scratch row leaves ORT's arena holding the activation memory; the rows then take
 * what `utilization` allows beyond everything in use. Throws a one-line Error when not even one row fits.
 */
const sizeRows = (task: ShardLoad, session: NativeSession, deviceId: number, graphs: boolean): number => {
  const numLayers = task.layers[1] - task.layers[0]
  const chunk = Math.max(1, Math.min(task.maxLen, task.kvMemory!.maxNumBatchedTokens))
  const dims = [1, task.numKvHeads, task.maxLen, task.headDim]
  const keys = Array.from({ length: numLayers }, () => session.allocate(task.dtype, dims))
  const values = Array.from({ length: numLayers }, () => session.allocate(task.dtype, dims))
  const plan: StepPlan = {
    seqIds: Int32Array.of(0),
    rows: Int32Array.of(0),
    numTokens: Int32Array.of(chunk),
    pastLens: Int32Array.of(0),
    tokenIds: new Int32Array(chunk),
    ...(task.isFirst ? {} : { hidden: task.dtype === "float32" ? new Float32Array(chunk * task.hiddenSize) : new Uint16Array(chunk * task.hiddenSize) }),
    blockTables: Int32Array.of(0),
    blocksPerEntry: 1,
    sampleEntries: Int32Array.of(0),
    newSequences: [],
    returnLogits: Uint8Array.of(0)
  }
  const inputNames = new Set(session.inputNames)
  const { inputs } = groupInputs(task, plan, { entries: Int32Array.of(0), seqLen: chunk, allLogits: false }, tokenOffsets(plan))
  const feeds: Feeds = {}
  for (const [name, t] of Object.entries(inputs)) if (inputNames.has(name)) feeds[name] = t
  const outputs: Outputs = { [task.isLast ? TensorNames.logits : TensorNames.hiddenOut]: "host" }
  bindCaches({ load: task, session, inputNames } as unknown as Common, feeds, outputs, keys, values)
  session.run(feeds, outputs, graphs ? { cudaGraphId: NO_GRAPH } : {})
  for (const t of [...keys, ...values]) t.release()
  const { free, total, budget } = kvBudget(task, deviceId)
  const bytesPerRow = 2 * numLayers * task.numKvHeads * task.maxLen * task.headDim * elementBytes(task.dtype)
  const rows = Math.min(task.maxSeqs, Math.floor(budget / bytesPerRow))
  if (rows < 1) {
    throw new Error(
      `not enough GPU memory for the KV cache on cuda:${deviceId}: one ${task.maxLen}-token sequence needs ${gib(bytesPerRow)} GiB ` +
        `but ${gib(budget)} GiB is left (${gib(free)} GiB free of ${gib(total)} GiB after weights and a ` +
        `${chunk}-token warm-up, utilization ${task.kvMemory!.utilization}); raise --gpu-memory-utilization or lower --context-length`
    )
  }
  return rows
}

/**
 * Blocks per layer that fit: one uncaptured warm-up step of `maxNumBatchedTokens` tokens (prompt-sized entries of at
 * most `maxLen`, over a scratch pool of one sequence's blocks they all share) leaves ORT's arena holding the
 * activation memory of the largest step; then what `utilization` of the device allows beyond everything in use goes
 * to the pool. Throws a one-line Error when not even one full-context sequence fits.
 */
const sizePool = (task: ShardLoad, session: NativeSession, deviceId: number, graphs: boolean): number => {
  const kvMemory = task.kvMemory!
  const numLayers = task.layers[1] - task.layers[0]
  const perSeqBlocks = Math.ceil(task.maxLen / task.blockSize)
  const tokens = Math.max(1, kvMemory.maxNumBatchedTokens)
  const chunk = Math.min(task.maxLen, tokens)
  const numTokens: Array<number> = []
  for (let left = tokens; left > 0; left -= chunk) numTokens.push(Math.min(chunk, left))
  const entries = numTokens.length
  const scratchBlocks = Math.ceil(chunk / task.blockSize)
  const dims = [scratchBlocks, task.blockSize, task.numKvHeads, task.headDim]
  const keys = Array.from({ length: numLayers }, () => session.allocate(task.dtype, dims))
  const values = Array.from({ length: numLayers }, () => session.allocate(task.dtype, dims))
  const cumulative = new Int32Array(entries + 1)
  numTokens.forEach((n, e) => (cumulative[e + 1] = cumulative[e]! + n))
  const table = new Int32Array(entries * scratchBlocks)
  for (let e = 0; e < entries; e++) for (let b = 0; b < scratchBlocks; b++) table[e * scratchBlocks + b] = b
  const feeds: Feeds = {
    [TensorNames.cumulativeSequenceLength]: { data: cumulative, dims: [entries + 1] },
    [TensorNames.pastSeqlens]: { data: new Int32Array(entries), dims: [entries] },
    [TensorNames.blockTable]: { data: table, dims: [entries, scratchBlocks] },
    [TensorNames.attentionMetadata]: { data: Int32Array.of(chunk, chunk), dims: [2] }
  }
  if (task.isFirst) feeds[TensorNames.inputIds] = { data: new BigInt64Array(tokens), dims: [tokens] }
  else {
    feeds[TensorNames.hiddenIn] = task.dtype === "bfloat16"
      ? { data: new Uint16Array(tokens * task.hiddenSize), dims: [tokens, task.hiddenSize], dtype: "bfloat16" }
      : { data: new Uint16Array(tokens * task.hiddenSize), dims: [tokens, task.hiddenSize] }
  }
  const outputs: Outputs = {}
  if (task.isLast) {
    // As many logits rows as the widest decode step samples, so the LM head's output is in the arena too.
    const n = Math.min(tokens, Math.max(1, task.maxSeqs))
    feeds[TensorNames.logitsIndex] = { data: BigInt64Array.from({ length: n }, (_, i) => BigInt(i)), dims: [n] }
    outputs[TensorNames.logits] = "host"
  } else outputs[TensorNames.hiddenOut] = "host"
  const common = { load: task, session, inputNames: new Set(session.inputNames) } as unknown as Common
  bindCaches(common, feeds, outputs, keys, values)
  session.run(feeds, outputs, graphs ? { cudaGraphId: NO_GRAPH } : {})
  for (const t of [...keys, ...values]) t.release()

  const { free, total, budget } = kvBudget(task, deviceId)
  const bytesPerBlock = 2 * numLayers * task.blockSize * task.numKvHeads * task.headDim * elementBytes(task.dtype)
  let numBlocks = Math.floor(Math.max(0, budget) / bytesPerBlock)
  if (task.numBlocks > 0) numBlocks = Math.min(numBlocks, task.numBlocks)
  // One full-context sequence, plus block 0 that the engine keeps back as padding.
  const needed = perSeqBlocks + 1
  if (numBlocks < needed) {
    throw new Error(
      `not enough GPU memory for the KV cache on cuda:${deviceId}: one ${task.maxLen}-token sequence needs ${gib(needed * bytesPerBlock)} GiB ` +
        `but ${gib(Math.max(0, budget))} GiB is left (${gib(free)} GiB free of ${gib(total)} GiB after weights and a ` +
        `${tokens}-token warm-up, utilization ${kvMemory.utilization}); raise --gpu-memory-utilization or lower --context-length or --max-batch`
    )
  }
  return numBlocks
}

// ------------------------------------------------------------------------------------------------ blocks

const blockBucket = (s: BlockShard, size: number, graphId: number): BlockBucket => {
  const found = s.buckets.get(size)
  if (found !== undefined) return found
  const b: BlockBucket = {
    size,
    graphId,
    inputIds: s.session.allocate("int64", [size]),
    cumulative: s.session.allocate("int32", [size + 1]),
    past: s.session.allocate("int32", [size]),
    table: s.session.allocate("int32", [size, s.maxBlocksPerSeq]),
    logitsIndex: s.session.allocate("int64", [size]),
    greedy: s.session.allocate("int64", [size])
  }
  // Every entry, padding included, has exactly one token: the packed layout and the logits rows never change.
  b.cumulative.upload(Int32Array.from({ length: size + 1 }, (_, i) => i))
  b.logitsIndex.upload(BigInt64Array.from({ length: size }, (_, i) => BigInt(i)))
  s.buckets.set(size, b)
  return b
}

/** A greedy decode-only step through the bucket's captured graph; padding entries write into reserved block 0. */
const blockGraphStep = (s: BlockShard, plan: StepPlan, outs: StepOutputs, bucket: { size: number; graphId: number }): number => {
  const b = blockBucket(s, bucket.size, bucket.graphId)
  const n = plan.numTokens.length
  const ids = new BigInt64Array(b.size)
  const past = new Int32Array(b.size)
  const table = new Int32Array(b.size * s.maxBlocksPerSeq)
  const width = Math.min(plan.blocksPerEntry, s.maxBlocksPerSeq)
  for (let e = 0; e < n; e++) {
    ids[e] = BigInt(plan.tokenIds[e]!)
    past[e] = plan.pastLens[e]!
    table.set(plan.blockTables.subarray(e * plan.blocksPerEntry, e * plan.blocksPerEntry + width), e * s.maxBlocksPerSeq)
  }
  b.inputIds.upload(ids)
  b.past.upload(past)
  b.table.upload(table)
  if (b.bound === undefined) {
    const feeds: Feeds = {
      [TensorNames.inputIds]: b.inputIds,
      [TensorNames.cumulativeSequenceLength]: b.cumulative,
      [TensorNames.pastSeqlens]: b.past,
      [TensorNames.blockTable]: b.table,
      [TensorNames.attentionMetadata]: { data: Int32Array.of(1, s.load.maxLen), dims: [2] },
      [TensorNames.logitsIndex]: b.logitsIndex
    }
    const outputs: Outputs = { [TensorNames.greedyToken]: b.greedy }
    bindCaches(s, feeds, outputs)
    b.bound = s.session.bind(feeds, outputs)
  }
  const t0 = performance.now()
  b.bound.run({ cudaGraphId: b.graphId })
  const greedy = b.greedy.download()
  const runMs = performance.now() - t0
  outs.greedy(Int32Array.from({ length: n }, (_, e) => e), greedy, 1)
  return runMs
}

const blockStep = (s: BlockShard, plan: StepPlan): StepResult => {
  const cfg = s.load
  if (cfg.isLast) s.samplers.register(plan.newSequences)
  const greedyOnly = cfg.isLast && s.samplers.greedyOnly(plan)
  const outs = new StepOutputs(plan, s.samplers)
  if (s.bucketSizes.length > 0 && !s.graphsDisabled && greedyOnly && plan.numTokens.every((n) => n === 1)) {
    const bucket = bucketFor(s.bucketSizes, plan.numTokens.length)
    if (bucket !== undefined) {
      try {
        return outs.result(blockGraphStep(s, plan, outs, bucket))
      } catch (e) {
        // Capture can fail on an ONNX Runtime or driver that does not support it for this graph: serve uncaptured.
        s.graphsDisabled = true
        console.warn(`chorus: CUDA graph decode disabled on this shard: ${message(e)}`)
      }
    }
  }
  const { inputs, logitsEntries, logitsRows } = pagedInputs(cfg, plan)
  const feeds: Feeds = { ...inputs }
  const outputs: Outputs = {}
  bindCaches(s, feeds, outputs)
  const wanted = cfg.isLast ? (greedyOnly ? TensorNames.greedyToken : TensorNames.logits) : TensorNames.hiddenOut
  outputs[wanted] = "host"
  const t0 = performance.now()
  const out = s.session.run(feeds, outputs, s.bucketSizes.length > 0 ? { cudaGraphId: NO_GRAPH } : {})
  const runMs = performance.now() - t0
  const result = out[wanted]!
  if (!cfg.isLast) return { hidden: result.data as Float32Array | Uint16Array, runMs, sampleMs: 0 }
  if (logitsEntries.length > 0) {
    if (greedyOnly) outs.greedy(logitsEntries, result.data as BigInt64Array, 1)
    else outs.logits(logitsEntries, logitsRows, result.data as Float32Array, cfg.vocabSize)
  }
  return outs.result(runMs)
}

// ------------------------------------------------------------------------------------------------ rows

const rowBucket = (s: RowShard, size: number, graphId: number): RowBucket => {
  const found = s.buckets.get(size)
  if (found !== undefined) return found
  const b: RowBucket = {
    size,
    graphId,
    inputIds: s.session.allocate("int64", [size, 1]),
    seqlens: s.session.allocate("int32", [size]),
    positions: s.inputNames.has(TensorNames.positionIds) ? s.session.allocate("int64", [size, 1]) : undefined,
    logitsIndex: s.session.allocate("int64", [size, 1]),
    greedy: s.session.allocate("int64", [size, 1])
  }
  s.buckets.set(size, b)
  return b
}

/** Views of rows `[first, first + count)` of every layer's buffers. */
const rowViews = (s: RowShard, first: number, count: number) => {
  const cfg = s.load
  const dims = [count, cfg.numKvHeads, cfg.maxLen, cfg.headDim]
  return {
    keys: s.keys.map((k) => k.view(first * s.rowElements, dims)),
    values: s.values.map((v) => v.view(first * s.rowElements, dims))
  }
}

/**
 * The decode group's token and length per row of `[0, rows)`: a decoding row gets its token after its cached
 * length; any other row a dummy token at its written length (where its own next token will overwrite it, so nothing
 * cached is touched, and a free row costs one position of attention).
 */
const decodeRows = (s: RowShard, plan: StepPlan, entries: Int32Array, rows: number) => {
  const ids = new BigInt64Array(rows)
  const seqlens = new Int32Array(rows)
  const entryOfRow = new Int32Array(rows).fill(-1)
  for (let r = 0; r < rows; r++) seqlens[r] = Math.min(s.rowLen[r]!, s.load.maxLen - 1)
  for (const e of entries) {
    const r = plan.rows[e]!
    entryOfRow[r] = e
    ids[r] = BigInt(plan.tokenIds[tokenOffsetOf(plan, e)]!)
    seqlens[r] = plan.pastLens[e]!
  }
  return { ids, seqlens, entryOfRow }
}

let offsetsCache: { plan: StepPlan; offsets: Int32Array } | undefined
const offsetsOf = (plan: StepPlan): Int32Array => {
  if (offsetsCache?.plan !== plan) offsetsCache = { plan, offsets: tokenOffsets(plan) }
  return offsetsCache.offsets
}
const tokenOffsetOf = (plan: StepPlan, e: number): number => offsetsOf(plan)[e]!

const rowGraphStep = (s: RowShard, plan: StepPlan, outs: StepOutputs, entries: Int32Array, bucket: { size: number; graphId: number }): number => {
  const b = rowBucket(s, bucket.size, bucket.graphId)
  const { ids, seqlens, entryOfRow } = decodeRows(s, plan, entries, b.size)
  b.inputIds.upload(ids)
  b.seqlens.upload(seqlens)
  if (b.positions !== undefined) b.positions.upload(BigInt64Array.from(seqlens, (n) => BigInt(n)))
  if (b.bound === undefined) {
    const feeds: Feeds = {
      [TensorNames.inputIds]: b.inputIds,
      [TensorNames.seqlensK]: b.seqlens,
      [TensorNames.totalSequenceLength]: { data: Int32Array.of(s.load.maxLen), dims: [] },
      [TensorNames.logitsIndex]: b.logitsIndex
    }
    if (b.positions !== undefined) feeds[TensorNames.positionIds] = b.positions
    const outputs: Outputs = { [TensorNames.greedyToken]: b.greedy }
    // Rows [0, size) start where the buffers start: the same addresses at every replay.
    const views = rowViews(s, 0, b.size)
    bindCaches(s, feeds, outputs, views.keys, views.values)
    b.bound = s.session.bind(feeds, outputs)
  }
  const t0 = performance.now()
  b.bound.run({ cudaGraphId: b.graphId })
  const greedy = b.greedy.download()
  const runMs = performance.now() - t0
  outs.greedy(entryOfRow, greedy, 1)
  return runMs
}

const rowStep = (s: RowShard, plan: StepPlan): StepResult => {
  const cfg = s.load
  if (cfg.isLast) s.samplers.register(plan.newSequences)
  const greedyOnly = cfg.isLast && s.samplers.greedyOnly(plan)
  const outs = new StepOutputs(plan, s.samplers)
  const offsets = offsetsOf(plan)
  const groups = entryGroups(plan)
  const totalTokens = offsets[plan.numTokens.length]!
  const hidden = cfg.isLast ? undefined : cfg.dtype === "float32" ? new Float32Array(totalTokens * cfg.hiddenSize) : new Uint16Array(totalTokens * cfg.hiddenSize)
  const graphOpts = s.bucketSizes.length > 0 ? { cudaGraphId: NO_GRAPH } : {}
  const wanted = cfg.isLast ? (greedyOnly ? TensorNames.greedyToken : TensorNames.logits) : TensorNames.hiddenOut
  let runMs = 0

  for (const group of groups) {
    if (group.seqLen === 1 && !group.allLogits) {
      let maxRow = 0
      for (const e of group.entries) maxRow = Math.max(maxRow, plan.rows[e]!)
      // Only in decode-only steps: replaying the bucket's graph beside prompt chunks (rows being prefilled in the same
      // step) was measured on an H200 and hit an illegal memory access (docs/native.md, 2026-12-02).
      const bucket = groups.length === 1 && greedyOnly && s.bucketSizes.length > 0 && !s.graphsDisabled
        ? bucketFor(s.bucketSizes, maxRow + 1)
        : undefined
      let done = false
      if (bucket !== undefined) {
        try {
          runMs += rowGraphStep(s, plan, outs, group.entries, bucket)
          done = true
        } catch (e) {
          s.graphsDisabled = true
          console.warn(`chorus: CUDA graph decode disabled on this shard (replaying the ${bucket.size}-row graph for rows up to ${maxRow}): ${message(e)}`)
        }
      }
      if (!done) {
        const rows = maxRow + 1
        const { ids, seqlens, entryOfRow } = decodeRows(s, plan, group.entries, rows)
        const feeds: Feeds = {}
        if (cfg.isFirst) feeds[TensorNames.inputIds] = { data: ids, dims: [rows, 1] }
        else {
          const h = cfg.hiddenSize
          const src = plan.hidden!
          const rowsHidden = src instanceof Float32Array ? new Float32Array(rows * h) : new Uint16Array(rows * h)
          for (const e of group.entries) rowsHidden.set(src.subarray(offsets[e]! * h, (offsets[e]! + 1) * h), plan.rows[e]! * h)
          feeds[TensorNames.hiddenIn] = cfg.dtype === "bfloat16"
            ? { data: rowsHidden, dims: [rows, 1, h], dtype: "bfloat16" }
            : { data: rowsHidden, dims: [rows, 1, h] }
        }
        let total = 1
        for (const n of seqlens) total = Math.max(total, n + 1)
        if (s.inputNames.has(TensorNames.positionIds)) feeds[TensorNames.positionIds] = { data: BigInt64Array.from(seqlens, (n) => BigInt(n)), dims: [rows, 1] }
        feeds[TensorNames.seqlensK] = { data: seqlens, dims: [rows] }
        feeds[TensorNames.totalSequenceLength] = { data: Int32Array.of(total), dims: [] }
        if (cfg.isLast) feeds[TensorNames.logitsIndex] = { data: new BigInt64Array(rows), dims: [rows, 1] }
        // The CPU's rotary-outside graph (this worker with `nativeRuntime`) has the grammar's mask inputs, and the addon
        // binds every input: no constrained row, as the prompt chunks get (constrained steps go through the logits here).
        if (cfg.isLast && s.inputNames.has(TensorNames.allowedIds)) Object.assign(feeds, maskInputs(cfg.vocabSize))
        const outputs: Outputs = { [wanted]: "host" }
        const views = rowViews(s, 0, rows)
        bindCaches(s, feeds, outputs, views.keys, views.values)
        const t0 = performance.now()
        const out = s.session.run(feeds, outputs, graphOpts)[wanted]!
        runMs += performance.now() - t0
        if (hidden !== undefined) {
          const h = cfg.hiddenSize
          for (const e of group.entries) hidden.set((out.data as Float32Array | Uint16Array).subarray(plan.rows[e]! * h, (plan.rows[e]! + 1) * h), offsets[e]! * h)
        } else if (greedyOnly) outs.greedy(entryOfRow, out.data as BigInt64Array, 1)
        else outs.logits(entryOfRow, new Int32Array(rows).fill(1), out.data as Float32Array, cfg.vocabSize)
      }
    } else {
      // A prompt chunk: its row alone, through a one-row view.
      const e = group.entries[0]!
      const { inputs } = groupInputs(cfg, plan, group, offsets)
      const feeds: Feeds = {}
      for (const [name, t] of Object.entries(inputs)) if (s.inputNames.has(name)) feeds[name] = t
      const outputs: Outputs = { [wanted]: "host" }
      const views = rowViews(s, plan.rows[e]!, 1)
      bindCaches(s, feeds, outputs, views.keys, views.values)
      const t0 = performance.now()
      const out = s.session.run(feeds, outputs, graphOpts)[wanted]!
      runMs += performance.now() - t0
      const n = group.allLogits ? group.seqLen : 1
      if (hidden !== undefined) hidden.set(out.data as Float32Array | Uint16Array, offsets[e]! * cfg.hiddenSize)
      else if (greedyOnly) outs.greedy(group.entries, out.data as BigInt64Array, n)
      else outs.logits(group.entries, Int32Array.of(n), out.data as Float32Array, cfg.vocabSize)
    }
    for (const e of group.entries) {
      const r = plan.rows[e]!
      s.rowLen[r] = plan.pastLens[e]! + plan.numTokens[e]!
      s.rowSeq[r] = plan.seqIds[e]!
    }
  }
  if (hidden !== undefined) return { hidden, runMs, sampleMs: 0 }
  return outs.result(runMs)
}

// ------------------------------------------------------------------------------------------------ entry points

export function step(plan: StepPlan): Promise<StepResult> {
  return inTurn(() => {
    const s = shard
    if (s === undefined) throw new Error("shard worker used before load")
    // Decode ahead: the tokens this thread sampled in the step before, where the plan could not know them yet.
    if (s.load.isLast) s.samplers.resolveFeedback(plan)
    return s.layout === "blocks" ? blockStep(s, plan) : rowStep(s, plan)
  })
}

/**
 * Drops the samplers of finished sequences (and, in a row layout, marks their rows free). Where rows are reused a
 * freed row keeps its length: its keys and values stay in place for a later sequence with the same prefix (the
 * scheduler's row reuse), and the dummy token a free row gets in a decode step lands after them. Where CUDA graphs
 * replay, a freed row's length goes back to 0, as in every measured graph run before row reuse existed: a free row
 * then costs its decode step one position of attention.
 */
export function release(seqIds: ReadonlyArray<number>): Promise<void> {
  return inTurn(() => {
    const s = shard
    if (s === undefined) return
    s.samplers.release(seqIds)
    if (s.layout === "rows") {
      const gone = new Set(seqIds)
      for (let r = 0; r < s.rowSeq.length; r++) {
        if (!gone.has(s.rowSeq[r]!)) continue
        s.rowSeq[r] = -1
        if (!s.rowReuse) s.rowLen[r] = 0
      }
    }
  })
}

/** Fault injection, as in the CPU worker: the thread ends between two steps. */
export function crash(): Promise<never> {
  return inTurn(() => process.exit(1))
}
