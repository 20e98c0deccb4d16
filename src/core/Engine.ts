/**
 * The engine: an Effect service that takes chat or completion requests and returns a Stream of events, batching
 * concurrent requests into the same steps. This module loads the shards, sizes the KV cache and admits requests;
 * the loop that schedules and runs steps is `EngineLoop.ts`, the batching rule is `Scheduler.ts`.
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Queue, Stream } from "effect"
import * as os from "node:os"
import type { EngineObserver } from "./EngineObserver.ts"
import { silentObserver } from "./EngineObserver.ts"
import { type EngineError, makeEngineLoop } from "./EngineLoop.ts"
import { type CheckpointError, type ConversionError, GenerationError, type ModelConfigError, Overloaded } from "./Errors.ts"
import { type JobView, startJob } from "./JobMachine.ts"
import type { LoadedModel, ModelAdapter } from "./ModelAdapter.ts"
import type { LinearKernels } from "./native/CudaOps.ts"
import { applyDecodeAttention, type DecodeAttention } from "./native/DecodeAttention.ts"
import type { GenerateRequest, GenerationEvent, PromptInput } from "./Request.ts"
import { makeSequenceOutput } from "./SequenceOutput.ts"
import { makeShardActor, type ShardActor } from "./shard/ShardActor.ts"
import type { RestartPolicy } from "./shard/ShardLifecycle.ts"
import { type Device, shardDevice } from "./shard/StepProtocol.ts"
import { grammarVocab } from "./sampling/Grammar.ts"
import { validateRequest } from "./Validation.ts"

export type { EngineError } from "./EngineLoop.ts"

/** @category models */
export interface EngineCapacity {
  /** Usable KV blocks (the reserved one excluded) and tokens per block. */
  readonly numBlocks: number
  readonly blockSize: number
  /** Bytes of KV memory the shards allocated up front (0 where blocks are allocated as first written). */
  readonly kvBytes: number
  /** Sequences at the full context the pool holds at once. */
  readonly fullContextSequences: number
  readonly prefixCaching: boolean
  /** Why prefix caching is off though it was asked for (a runtime that cannot reuse rows), for the log. */
  readonly prefixCachingOffBecause?: string
  /** The most sequences running at once, and what was asked (`maxNumSeqs`) where memory lowered it. */
  readonly maxNumSeqs: number
  readonly requestedMaxNumSeqs: number
  /** CUDA: the first shard's note on Chorus's kernels (`--linear-kernels`, `--decode-attention chorus`), for the log. */
  readonly kernels?: string
}

/** One line for the start-up log: the KV pool and what it holds. */
export const describeCapacity = (c: EngineCapacity, contextLength: number): string =>
  `KV cache: ${c.numBlocks} blocks of ${c.blockSize} tokens (${c.numBlocks * c.blockSize} tokens` +
  (c.kvBytes > 0 ? `, ${(c.kvBytes / 2 ** 30).toFixed(2)} GiB` : "") +
  `), ${c.fullContextSequences} sequences at the full context of ${contextLength}; prefix caching ${c.prefixCaching ? "on" : "off"}` +
  (c.prefixCachingOffBecause === undefined ? "" : ` (${c.prefixCachingOffBecause})`) +
  (c.maxNumSeqs < c.requestedMaxNumSeqs ? `; --max-batch ${c.requestedMaxNumSeqs} lowered to ${c.maxNumSeqs} by memory (lower --context-length for more)` : "") +
  (c.kernels === undefined ? "" : `; ${c.kernels}`)

/** @category models */
export interface EngineOptions {
  /** KV slots per shard: the most sequences decoding together. Default 16. */
  readonly maxNumSeqs?: number
  /**
   * Tokens per step over all sequences: one per decoding sequence plus prompt chunks (long prompts are chunked).
   * Default 8192 on CUDA, 512 on the CPU; never less than `maxNumSeqs`.
   */
  readonly maxNumBatchedTokens?: number
  /** Tokens per KV block. Default 16. */
  readonly blockSize?: number
  /**
   * KV blocks per layer (the pool). Default: on the CPU, enough for every sequence at the full context (allocated as
   * blocks are first written); on CUDA, sized from free memory after the weights (`gpuMemoryUtilization`).
   */
  readonly numBlocks?: number
  /** Fraction of the GPU's memory the process may use, weights and KV together (vLLM's default 0.90). */
  readonly gpuMemoryUtilization?: number
  /** Reuse the KV blocks of cached prompt prefixes (system prompts, earlier turns). Default true. */
  readonly enablePrefixCaching?: boolean
  /** Tokens per sequence; default and maximum: the model's context length. */
  readonly contextLength?: number
  /**
   * Steps on the shards at once (micro-batches over disjoint sequences; vLLM's pipeline-parallel virtual engines):
   * while shard k+1 runs one, shard k runs the next. Default: on CUDA the number of distinct GPUs the shards are on
   * (shards sharing a GPU only take turns on it), on the CPU the number of shards. 1 runs one step at a time through
   * every shard, and is the only value for a model of one shard.
   */
  readonly pipelineDepth?: number
  /** ORT threads per shard; default: cores / shards. */
  readonly threadsPerShard?: number
  /**
   * Where shards run: `cpu` (default) or `cuda`. With several shards, `cuda:0,1` puts shard i on GPU `ids[i % n]`
   * (`--shards 2 --device cuda:0,1` splits a model over two GPUs); `cuda:N` keeps every shard on GPU N.
   */
  readonly device?: Device
  /**
   * Run CPU shards through the native IO-binding runtime too (the KV cache then stays in place in native memory);
   * default false: onnxruntime-node, which needs no build step. CUDA shards always use the native runtime.
   */
  readonly nativeRuntime?: boolean
  /** Waiting requests beyond which new ones fail at once with Overloaded. Default 1024. */
  readonly maxQueue?: number
  /** Default per-request deadline in milliseconds (requests may ask for less). Default: none. */
  readonly timeoutMs?: number
  /** When a shard whose worker died is brought back, and after how many crashes it stays down. */
  readonly shardRestarts?: RestartPolicy
  /**
   * Special-token strings in prompts and messages (`<|eot_id|>`) become special tokens, as a trusted caller may
   * want. Default false: they are encoded as text, and only the chat format writes control tokens.
   */
  readonly allowSpecialTokens?: boolean
  /**
   * CPU runtime: structured-output steps that are all greedy apply the grammar's mask inside the graph and fetch token
   * ids, not logits. Default true; false masks the fetched logits in the sampler (the same tokens, slower).
   */
  readonly grammarMaskInGraph?: boolean
  /**
   * CUDA row cache: the kernel GroupQueryAttention decodes with, `xqa` (default) or `flash` (flash decoding). Set
   * process-wide through ORT's `ORT_ENABLE_XQA`; without this option a value already in the environment stands
   * (`src/core/native/DecodeAttention.ts`).
   */
  readonly decodeAttention?: DecodeAttention
  /**
   * CUDA: the kernels of the linears. `auto` (default): where its custom-op library is built (`npm run build:cuda-ops`),
   * Chorus's float16 GEMV (`chorus.Linear`) and its greedy ArgMax and SwiGLU kernels, ONNX Runtime's kernels otherwise
   * and for 4-bit linears; `chorus`: Chorus's for float16 and 4-bit linears too (float16 shards; the library
   * required); `ort`: ONNX Runtime's only (`src/core/native/CudaOps.ts`).
   */
  readonly linearKernels?: LinearKernels
  /**
   * A model of one shard: hand out each decode step's successor while it runs, its tokens taken from the step before
   * in the shard (vLLM's async scheduling; `EngineLoop.ts`). Default true, or false where the environment has
   * `CHORUS_DECODE_AHEAD=0` (to measure the difference).
   */
  readonly decodeAhead?: boolean
  readonly observer?: EngineObserver
}

/** @category models */
export interface EngineStats {
  readonly numRunning: number
  readonly numWaiting: number
  readonly numSteps: number
  /** The most steps that were on the shards at once (micro-batches; 1 without them). Engines without shards omit it. */
  readonly maxStepsInFlight?: number
  /** Decode steps that carried more than one sequence. */
  readonly numBatchedSteps: number
  readonly promptTokens: number
  readonly generatedTokens: number
  readonly maxNumSeqs: number
  /** Shard restarts after a worker failure (the sum over the shards' lifecycle machines). */
  readonly restarts: number
  /** KV pool: blocks (the reserved one excluded), tokens per block, and the fraction of blocks in use. */
  readonly numBlocks: number
  readonly blockSize: number
  readonly kvUsage: number
  /** Prompt tokens looked up in the prefix cache at admission, and those found there. */
  readonly prefixCacheQueries: number
  readonly prefixCacheHits: number
  readonly numPreemptions: number
}

/**
 * @category services
 */
export class Engine extends Context.Service<Engine, {
  readonly model: { readonly id: string; readonly contextLength: number; readonly vocabSize: number }
  readonly codec: LoadedModel["codec"]
  readonly generate: (request: GenerateRequest) => Stream.Stream<GenerationEvent, EngineError>
  /**
   * Validates and admits a request now, failing at once on bad input or a full queue; the returned stream then
   * carries its events (protocols use this to answer 4xx before sending a first byte).
   */
  readonly submit: (request: GenerateRequest) => Effect.Effect<Stream.Stream<GenerationEvent, EngineError>, EngineError>
  /** The prompt token ids `submit` would run for this input (chat template applied, checked against the context). */
  readonly tokenize: (input: PromptInput) => Effect.Effect<Int32Array, EngineError>
  /**
   * 1-based position of a request whose job machine is `queued` (from its `Queued` event), 0 once the machine left
   * `queued`, -1 when unknown.
   */
  readonly queuePosition: (requestId: number) => number
  /** The lifecycle machine of a live request (from its `Queued` event); undefined once it ended. */
  readonly job: (requestId: number) => JobView | undefined
  readonly stats: Effect.Effect<EngineStats>
  readonly shards: ReadonlyArray<ShardActor>
  /** The KV pool as sized at start. */
  readonly capacity: EngineCapacity
}>()("chorus/core/Engine") {
  /** The engine over an already loaded model. */
  static readonly layerFor = (model: LoadedModel, options: EngineOptions = {}): Layer.Layer<Engine, GenerationError> =>
    Layer.effect(Engine, makeEngine(model, options))

  /** Loads a model through an adapter, then runs the engine over it; the model's resources share the layer's scope. */
  static readonly layer = <Options>(
    adapter: ModelAdapter<Options>,
    adapterOptions: Options,
    options: EngineOptions = {}
  ): Layer.Layer<Engine, GenerationError | CheckpointError | ModelConfigError | ConversionError> =>
    Layer.unwrap(Effect.map(adapter.load(adapterOptions), (model) => Engine.layerFor(model, options)))
}

/**
 * Steps in flight by default. Micro-batches pay where the shards run on separate hardware; shards sharing a GPU only
 * take turns on it (on an H200, 2 shards of the 8B on GPU 0 served 0.88x the tokens/s at depth 2 of depth 1,
 * docs/multi-gpu.md). So on CUDA: the number of distinct GPUs the shards are on; on the CPU: the shard count (each
 * shard has its own threads).
 */
export const defaultPipelineDepth = (device: Device, shards: number): number => {
  if (device.kind !== "cuda") return shards
  const gpus = new Set<number>()
  for (let i = 0; i < shards; i++) {
    const d = shardDevice(device, i)
    if (d.kind === "cuda") gpus.add(d.id)
  }
  return Math.max(1, Math.min(gpus.size, shards))
}

const makeEngine = (model: LoadedModel, options: EngineOptions) =>
  Effect.gen(function*() {
    const contextLength = Math.min(options.contextLength ?? model.contextLength, model.contextLength)
    const maxNumSeqs = options.maxNumSeqs ?? 16
    const maxQueue = options.maxQueue ?? 1024
    const observer = options.observer ?? silentObserver
    const threads = options.threadsPerShard ?? Math.max(1, Math.floor(os.availableParallelism() / model.shards.length))
    const device = options.device ?? { kind: "cpu" }
    const native = device.kind === "cuda" || options.nativeRuntime === true
    const blockSize = options.blockSize ?? 16
    const maxNumBatchedTokens = Math.max(options.maxNumBatchedTokens ?? (device.kind === "cuda" ? 8192 : 512), maxNumSeqs)
    const blocksPerSeq = Math.ceil(contextLength / blockSize)
    if (model.shards.some((s) => s.dtype === "bfloat16") && device.kind !== "cuda") {
      return yield* Effect.fail(new GenerationError({ message: "bfloat16 runs on the device runtime only (--device cuda); use float32 or float16 on the CPU" }))
    }
    const deviceOf = (i: number) => shardDevice(device, i)
    const gpuOf = (i: number) => {
      const d = deviceOf(i)
      return d.kind === "cuda" ? d.id : -1
    }
    const pipelineDepth = options.pipelineDepth ?? defaultPipelineDepth(device, model.shards.length)
    if (!Number.isInteger(pipelineDepth) || pipelineDepth < 1 || (model.shards.length === 1 && pipelineDepth !== 1)) {
      return yield* Effect.fail(
        new GenerationError({
          message: `the pipeline depth must be an integer from 1 (one step at a time) up, and 1 for a model of one shard; got ${pipelineDepth} for ${model.shards.length} shard(s)`
        })
      )
    }
    if (native && model.deviceWorkerUrl === undefined) {
      return yield* Effect.fail(new GenerationError({ message: `the ${model.id} adapter has no device runtime; use --device cpu` }))
    }
    if (device.kind === "cuda") applyDecodeAttention(options.decodeAttention)
    const shards: Array<ShardActor> = []
    // Constrained decoding: the last shard gets the vocabulary (token bytes) to build its grammar compiler from.
    const tokenBytes = model.codec.tokenBytes
    const vocab = tokenBytes === undefined ? undefined : grammarVocab(model.vocabSize, tokenBytes, model.stopTokenIds)
    for (const [i, spec] of model.shards.entries()) {
      const workerUrl = native ? model.deviceWorkerUrl! : model.workerUrl
      // Shards still to load on this shard's GPU, itself included: each takes its share of what is left.
      const sameGpuLeft = model.shards.filter((_, j) => j >= i && gpuOf(j) === gpuOf(i)).length
      const load = {
        ...spec,
        maxSeqs: maxNumSeqs,
        maxLen: contextLength,
        blockSize,
        // The most blocks worth holding: every sequence at the full context. A device sizes its pool from free
        // memory up to that unless told a number; elsewhere blocks are allocated as first written.
        numBlocks: options.numBlocks ?? maxNumSeqs * blocksPerSeq + 1,
        kvMemory: device.kind === "cuda" && options.numBlocks === undefined
          ? { utilization: options.gpuMemoryUtilization ?? 0.9, maxNumBatchedTokens, share: 1 / sameGpuLeft }
          : undefined,
        threads,
        device: deviceOf(i),
        grammar: spec.isLast ? vocab : undefined,
        grammarMaskInGraph: options.grammarMaskInGraph,
        ...(device.kind === "cuda" && options.linearKernels !== undefined ? { linearKernels: options.linearKernels } : {}),
        ...(device.kind === "cuda" && options.decodeAttention === "chorus" ? { chorusAttention: true } : {})
      }
      shards.push(yield* makeShardActor(i, workerUrl, load, options.shardRestarts))
    }
    const loads = yield* Effect.forEach(shards, (s) => s.loaded)
    const rows = loads.some((l) => l.layout === "rows")
    // A row cache holds sequences at the full context, as many as every shard's memory allowed.
    const maxSeqs = Math.min(maxNumSeqs, ...loads.map((l) => l.maxSeqs ?? maxNumSeqs))
    const numBlocks = rows ? maxSeqs * blocksPerSeq + 1 : Math.min(...loads.map((l) => l.numBlocks))
    const prefixCaching = options.enablePrefixCaching ?? true
    // Blocks are shared through the block pool's hashes; a row layout reuses a free row's contents instead.
    const enablePrefixCaching = !rows && prefixCaching
    const rowPrefixReuse = rows && prefixCaching && loads.every((l) => l.rowReuse !== false)
    if ((numBlocks - 1) * blockSize < contextLength) {
      return yield* Effect.fail(
        new GenerationError({
          message: `the KV cache holds ${(numBlocks - 1) * blockSize} tokens, less than one sequence of ${contextLength}; ` +
            "lower --context-length or raise --gpu-memory-utilization / --num-gpu-blocks"
        })
      )
    }
    const kvBytes = loads.reduce((n, l) => n + l.kvBytes, 0)
    const kernels = loads.find((l) => l.kernels !== undefined)?.kernels
    const capacity = {
      numBlocks: numBlocks - 1,
      blockSize,
      kvBytes,
      fullContextSequences: Math.min(maxSeqs, Math.floor(((numBlocks - 1) * blockSize) / contextLength)),
      prefixCaching: enablePrefixCaching || rowPrefixReuse,
      ...(rows && prefixCaching && !rowPrefixReuse
        ? { prefixCachingOffBecause: "the row cache is not reused where CUDA graphs replay; serve without --cuda-graphs to reuse it" }
        : {}),
      maxNumSeqs: maxSeqs,
      requestedMaxNumSeqs: maxNumSeqs,
      ...(kernels === undefined ? {} : { kernels })
    }
    const loop = yield* makeEngineLoop({
      shards,
      observer,
      decodeAhead: options.decodeAhead ?? process.env.CHORUS_DECODE_AHEAD !== "0",
      scheduler: {
        maxNumSeqs: maxSeqs,
        maxNumBatchedTokens,
        contextLength,
        blockSize,
        numBlocks,
        enablePrefixCaching,
        rowPrefixReuse,
        stopTokenIds: model.stopTokenIds,
        pipelineDepth
      }
    })
    const { scheduler, sinks, stats } = loop
    yield* Effect.forkScoped(loop.run)

    const sized: LoadedModel = { ...model, contextLength }
    const defaultTimeout = options.timeoutMs ?? Number.POSITIVE_INFINITY
    const promptOptions = { allowSpecialTokens: options.allowSpecialTokens ?? false }

    /** A shard that stays down: the engine cannot serve, and says why. */
    const downShard = () => {
      const down = shards.find((s) => s.status().state === "failed")
      return down === undefined
        ? undefined
        : new GenerationError({ message: `shard ${down.index} has failed and stays down (${down.status().lastError ?? "unknown"})` })
    }

    /** Requests between admission and the scheduler: their prompts are being rendered and tokenized. */
    let validating = 0
    const submit = (request: GenerateRequest): Effect.Effect<Stream.Stream<GenerationEvent, EngineError>, EngineError> =>
      Effect.gen(function*() {
        const down = downShard()
        if (down !== undefined) {
          observer.failed(down.errorType)
          return yield* Effect.fail(down)
        }
        // Admission before work: a full queue refuses at once, before tokenizing. Prompts still being tokenized
        // count as waiting, so a burst of large prompts cannot pile up in front of the tokenizer threads.
        if (scheduler.numWaiting + validating >= maxQueue) {
          observer.failed("overloaded")
          return yield* Effect.fail(new Overloaded({ maxQueue, message: `the queue is full (${maxQueue} requests waiting); retry later` }))
        }
        validating++
        const validated = yield* validateRequest(request, sized, promptOptions).pipe(
          Effect.tapError((e) => Effect.sync(() => observer.failed(e.errorType))),
          Effect.ensuring(Effect.sync(() => validating--))
        )
        return Stream.callback<GenerationEvent, EngineError>((queue) =>
          Effect.gen(function*() {
            const arrivedAt = performance.now()
            const timeoutMs = Math.min(validated.timeoutMs, defaultTimeout)
            const sequence = scheduler.add({ ...validated, timeoutMs }, arrivedAt + timeoutMs)
            const job = startJob(String(sequence.id))
            sinks.set(sequence.id, {
              queue,
              job,
              arrivedAt,
              admittedAt: 0,
              firstTokenAt: 0,
              lastTokenAt: 0,
              output: makeSequenceOutput({ codec: model.codec, request: validated })
            })
            observer.queued()
            Queue.offerUnsafe(queue, { _tag: "Queued", requestId: sequence.id, job })
            loop.wake()
            // A consumer that goes away (client disconnect, interrupt) drops the sequence before the next step.
            yield* Effect.addFinalizer(() =>
              Effect.sync(() => {
                // The machine refuses a cancel once the job ended (finished, failed, expired): nothing to stop then.
                if (job.send({ type: "CANCEL" })) {
                  scheduler.drop(sequence)
                  loop.wake()
                }
              })
            )
          })
        )
      })

    const generate = (request: GenerateRequest): Stream.Stream<GenerationEvent, EngineError> => Stream.unwrap(submit(request))

    const queuePosition = (requestId: number) => {
      const sink = sinks.get(requestId)
      if (sink === undefined) return -1
      if (sink.job.state() !== "queued") return 0
      return scheduler.waitingSequences().findIndex((s) => s.id === requestId) + 1
    }

    return Engine.of({
      model: { id: model.id, contextLength, vocabSize: model.vocabSize },
      codec: model.codec,
      generate,
      submit,
      tokenize: (input) => Effect.map(validateRequest({ input }, sized, promptOptions), (v) => v.promptTokenIds),
      queuePosition,
      job: (requestId) => sinks.get(requestId)?.job,
      shards,
      capacity,
      stats: Effect.sync(() => ({
        numRunning: scheduler.numRunning,
        numWaiting: scheduler.numWaiting,
        maxNumSeqs: maxSeqs,
        ...stats,
        restarts: shards.reduce((n, s) => n + s.status().restarts, 0),
        numBlocks: numBlocks - 1,
        blockSize,
        kvUsage: scheduler.kv.usage,
        prefixCacheQueries: scheduler.kv.queries,
        prefixCacheHits: scheduler.kv.hits,
        numPreemptions: scheduler.numPreemptions
      }))
    })
  })
