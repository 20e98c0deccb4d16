/**
 * The engine: an Effect service that takes chat or completion requests and returns a Stream of events, batching
 * concurrent requests into the same decode steps. One loop fiber owns the scheduler and calls the shards; requests
 * only enqueue and wake it. A request that arrives while others decode joins at the next iteration.
 *
 * @since 0.1.0
 */
import { Cause, Context, Effect, Fiber, Layer, Queue, Stream } from "effect"
import * as os from "node:os"
import type { LoadedModel, ModelAdapter } from "./ModelAdapter.ts"
import { type EngineObserver, type FinishedReason, silentObserver } from "./EngineObserver.ts"
import {
  type CheckpointError,
  type ContextLengthError,
  type ConversionError,
  DeadlineExceeded,
  GenerationError,
  type ModelConfigError,
  Overloaded,
  type ValidationError
} from "./Errors.ts"
import { type Job, type JobView, startJob } from "./JobMachine.ts"
import type { GenerateRequest, GenerationEvent } from "./Request.ts"
import { type DecodeWork, type PrefillWork, Scheduler, type Sequence } from "./Scheduler.ts"
import { makeSequenceOutput, type SequenceOutput } from "./SequenceOutput.ts"
import { makeShardActor, type ShardActor } from "./shard/ShardActor.ts"
import type { RestartPolicy } from "./shard/ShardLifecycle.ts"
import { type Device, shardDevice, type StepPlan, type StepResult } from "./shard/StepProtocol.ts"
import { validateRequest } from "./Validation.ts"

/** @category models */
export interface EngineOptions {
  /** KV slots per shard: the most sequences decoding together. Default 16. */
  readonly maxNumSeqs?: number
  /** Prompt tokens per loop iteration (long prompts are chunked). Default 512. */
  readonly maxNumBatchedTokens?: number
  /** Tokens per sequence; default and maximum: the model's context length. */
  readonly contextLength?: number
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
  readonly observer?: EngineObserver
}

/** @category models */
export interface EngineStats {
  readonly numRunning: number
  readonly numWaiting: number
  readonly numSteps: number
  /** Decode steps that carried more than one sequence. */
  readonly numBatchedSteps: number
  readonly promptTokens: number
  readonly generatedTokens: number
  readonly maxNumSeqs: number
  /** Shard restarts after a worker failure (the sum over the shards' lifecycle machines). */
  readonly restarts: number
}

export type EngineError = ValidationError | ContextLengthError | GenerationError | Overloaded | DeadlineExceeded

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
  /**
   * 1-based position of a request whose job machine is `queued` (from its `Queued` event), 0 once the machine left
   * `queued`, -1 when unknown.
   */
  readonly queuePosition: (requestId: number) => number
  /** The lifecycle machine of a live request (from its `Queued` event); undefined once it ended. */
  readonly job: (requestId: number) => JobView | undefined
  readonly stats: Effect.Effect<EngineStats>
  readonly shards: ReadonlyArray<ShardActor>
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

interface Sink {
  readonly queue: Queue.Queue<GenerationEvent, EngineError | Cause.Done>
  readonly output: SequenceOutput
  readonly job: Job
  readonly arrivedAt: number
  admittedAt: number
  firstTokenAt: number
  lastTokenAt: number
}

const makeEngine = (model: LoadedModel, options: EngineOptions) =>
  Effect.gen(function*() {
    const contextLength = Math.min(options.contextLength ?? model.contextLength, model.contextLength)
    const maxNumSeqs = options.maxNumSeqs ?? 16
    const maxQueue = options.maxQueue ?? 1024
    const observer = options.observer ?? silentObserver
    const threads = options.threadsPerShard ?? Math.max(1, Math.floor(os.availableParallelism() / model.shards.length))
    const shards: Array<ShardActor> = []
    const device = options.device ?? { kind: "cpu" }
    const native = device.kind === "cuda" || options.nativeRuntime === true
    if (model.shards.some((s) => s.dtype === "bfloat16") && device.kind !== "cuda") {
      return yield* Effect.fail(new GenerationError({ message: "bfloat16 runs on the device runtime only (--device cuda); use float32 or float16 on the CPU" }))
    }
    if (native && model.deviceWorkerUrl === undefined) {
      return yield* Effect.fail(new GenerationError({ message: `the ${model.id} adapter has no device runtime; use --device cpu` }))
    }
    for (const [i, spec] of model.shards.entries()) {
      const workerUrl = native ? model.deviceWorkerUrl! : model.workerUrl
      const load = { ...spec, maxSeqs: maxNumSeqs, maxLen: contextLength, threads, device: shardDevice(device, i) }
      shards.push(yield* makeShardActor(i, workerUrl, load, options.shardRestarts))
    }
    const last = shards[shards.length - 1]!
    const scheduler = new Scheduler({ maxNumSeqs, maxNumBatchedTokens: options.maxNumBatchedTokens ?? 512 })
    const sinks = new Map<number, Sink>()
    const wake = yield* Queue.unbounded<void>()
    const stats = { numSteps: 0, numBatchedSteps: 0, promptTokens: 0, generatedTokens: 0 }
    const sized: LoadedModel = { ...model, contextLength }
    const stopTokenIds = new Set(model.stopTokenIds)
    const seconds = (ms: number) => ms / 1000

    /** Reports a sequence that left the engine; phases it never reached stay undefined. */
    const report = (sequence: Sequence, sink: Sink, reason: FinishedReason, now: number) =>
      observer.finished({
        reason,
        e2eSeconds: seconds(now - sink.arrivedAt),
        prefillSeconds: sink.firstTokenAt === 0 ? undefined : seconds(sink.firstTokenAt - sink.admittedAt),
        decodeSeconds: sink.firstTokenAt === 0 ? undefined : seconds(now - sink.firstTokenAt),
        promptTokens: sequence.request.promptTokenIds.length,
        generationTokens: sequence.outputTokenIds.length,
        maxTokens: sequence.request.maxTokens
      })

    /** Runs one plan through every shard in order; hidden states flow from shard to shard. */
    const runPlan = (plan: StepPlan) =>
      Effect.gen(function*() {
        let result: StepResult | undefined
        for (const shard of shards) {
          result = yield* shard.step(result?.hidden === undefined ? plan : { ...plan, hidden: result.hidden })
        }
        stats.numSteps++
        return result!
      })

    const end = (sequence: Sequence) => {
      if (sequence.status === "waiting") scheduler.removeWaiting(sequence)
      else scheduler.finish(sequence)
      sinks.delete(sequence.id)
    }

    /** Ends a sequence with an error on its stream (the text so far has already been streamed). */
    const fail = (sequence: Sequence, error: EngineError, reason: "error" | "timeout") => {
      const sink = sinks.get(sequence.id)
      // The machine takes a failure only before the job ended: a job ends once.
      if (sink !== undefined && sink.job.send(reason === "timeout" ? { type: "EXPIRE" } : { type: "FAIL", error: error.message })) {
        const now = performance.now()
        observer.failed(error.errorType)
        report(sequence, sink, reason, now)
        Queue.failCauseUnsafe(sink.queue, Cause.fail(error))
      }
      end(sequence)
    }

    /**
     * Phase A of a sampled token, right after its step: record the id and apply the stops that need no text
     * (end-of-turn token, max tokens, context), so the next step can be scheduled without it. False when the token
     * is to be dropped (the sequence ended meanwhile: a stop string, an abort, a deadline).
     */
    const record = (sequence: Sequence, tokenId: number): boolean => {
      if (sequence.status === "finished" || !sinks.has(sequence.id)) return false
      sequence.outputTokenIds.push(tokenId)
      stats.generatedTokens++
      const r = sequence.request
      const eos = !r.ignoreEos && stopTokenIds.has(tokenId)
      if (eos || sequence.outputTokenIds.length >= r.maxTokens || sequence.numComputedTokens + 1 >= contextLength) {
        scheduler.finish(sequence)
      }
      return true
    }

    /** Phase B: text out, stop strings, the finish event. Runs while the next step is already on the shards. */
    const emit = (sequence: Sequence, tokenId: number, totalTokens: number) => {
      const sink = sinks.get(sequence.id)
      if (sink === undefined) return
      const now = performance.now()
      if (sink.firstTokenAt === 0) {
        sink.firstTokenAt = now
        observer.firstToken(seconds(sink.admittedAt - sink.arrivedAt), seconds(now - sink.arrivedAt))
      } else observer.token(seconds(now - sink.lastTokenAt))
      sink.lastTokenAt = now
      const step = sink.output.push(tokenId, totalTokens)
      Queue.offerUnsafe(sink.queue, { _tag: "Token", tokenId, text: step.text })
      if (step.finish !== undefined) {
        // Refused only when the consumer cancelled between the last step and this text: count it as the abort it was.
        report(sequence, sink, sink.job.send({ type: "FINISH" }) ? step.finish.finishReason : "abort", now)
        Queue.offerUnsafe(sink.queue, {
          _tag: "Finished",
          finishReason: step.finish.finishReason,
          stopReason: step.finish.stopReason,
          text: step.finish.trailingText,
          usage: { promptTokens: sequence.request.promptTokenIds.length, completionTokens: sequence.outputTokenIds.length }
        })
        Queue.endUnsafe(sink.queue)
        end(sequence)
      }
    }

    /** Tokens recorded but not yet emitted: [sequence, token id, total tokens after it]. */
    let pending: Array<readonly [Sequence, number, number]> = []
    const flushPending = () => {
      const batch = pending
      pending = []
      for (const [sequence, tokenId, total] of batch) emit(sequence, tokenId, total)
    }

    const prefillPlan = (w: PrefillWork): StepPlan => {
      const r = w.sequence.request
      return {
        kind: "prefill",
        firstRow: w.sequence.row,
        numRows: 1,
        seqLen: w.numScheduledTokens,
        tokenIds: r.promptTokenIds.subarray(w.start, w.start + w.numScheduledTokens),
        pastLens: Int32Array.of(w.start),
        sampleRows: w.isLastChunk ? Int32Array.of(0) : new Int32Array(0),
        newSequences: w.isFirstChunk ? [{ row: w.sequence.row, params: r.sampling, promptTokenIds: r.promptTokenIds }] : [],
        returnLogits: r.promptLogits === "all" ? "all" : r.promptLogits === "last" && w.isLastChunk ? "last" : "none"
      }
    }

    const decodePlan = (w: DecodeWork): StepPlan => ({
      kind: "decode",
      firstRow: 0,
      numRows: w.numRows,
      seqLen: 1,
      tokenIds: w.tokenIds,
      pastLens: w.pastLens,
      sampleRows: w.sampleRows,
      newSequences: [],
      returnLogits: "none"
    })

    const runPrefill = (w: PrefillWork) =>
      Effect.gen(function*() {
        const result = yield* runPlan(prefillPlan(w))
        scheduler.completePrefill(w)
        stats.promptTokens += w.numScheduledTokens
        observer.promptTokens(w.numScheduledTokens)
        const sink = sinks.get(w.sequence.id)
        if (sink === undefined) return
        if (result.logits !== undefined) sink.output.addPromptLogits(result.logits)
        if (!w.isLastChunk) return
        Queue.offerUnsafe(sink.queue, {
          _tag: "Started",
          promptTokens: w.sequence.request.promptTokenIds.length,
          ...(sink.output.promptLogits === undefined ? {} : { promptLogits: sink.output.promptLogits })
        })
        sink.job.send({ type: "FIRST_TOKEN" })
        const tokenId = result.tokens![0]!
        if (record(w.sequence, tokenId)) emit(w.sequence, tokenId, w.sequence.numComputedTokens + 1)
      })

    /** The decode step on the shards while the loop emits the previous step's text (vLLM's async scheduling). */
    let inflight: { readonly work: DecodeWork; readonly fiber: Fiber.Fiber<StepResult, GenerationError> } | undefined

    const completeInflight = Effect.gen(function*() {
      if (inflight === undefined) return
      const { work, fiber } = inflight
      inflight = undefined
      const result = yield* Fiber.join(fiber)
      scheduler.completeDecode(work)
      observer.decodeStep(work.sequences.length)
      if (work.sequences.length > 1) stats.numBatchedSteps++
      for (let i = 0; i < work.sequences.length; i++) {
        const s = work.sequences[i]!
        if (record(s, result.tokens![i]!)) pending.push([s, result.tokens![i]!, s.numComputedTokens + 1])
      }
    })

    /**
     * A step failed: every running sequence ends with the error. A shard whose worker died is brought back by its
     * lifecycle machine; the loop waits until every shard is ready again (or has failed for good), then goes on.
     */
    const recover = (error: GenerationError) =>
      Effect.gen(function*() {
        inflight = undefined
        flushPending()
        for (const s of scheduler.running()) fail(s, error, "error")
        yield* Effect.logWarning(`${error.message}; ${shards.map((s) => `shard ${s.index} ${s.status().state}`).join(", ")}`)
        for (const shard of shards) yield* shard.settled
      })

    /** A shard that stays down: the engine cannot serve, and says why. */
    const downShard = () => {
      const down = shards.find((s) => s.status().state === "failed")
      return down === undefined
        ? undefined
        : new GenerationError({ message: `shard ${down.index} has failed and stays down (${down.status().lastError ?? "unknown"})` })
    }

    const expire = () => {
      const now = performance.now()
      for (const s of scheduler.expired(now)) {
        const timeoutMs = s.request.timeoutMs
        fail(s, new DeadlineExceeded({ timeoutMs, message: `the request exceeded its deadline of ${timeoutMs} ms` }), "timeout")
      }
    }

    const iteration = Effect.gen(function*() {
      if (!scheduler.hasWork && inflight === undefined && pending.length === 0) {
        yield* Queue.take(wake)
        return
      }
      yield* completeInflight
      // A shard being brought back after a crash: new work waits for it instead of failing on its refusal.
      for (const shard of shards) if (shard.status().state !== "ready") yield* shard.settled
      const dropped = scheduler.dropAborted()
      if (dropped.length > 0) {
        const at = performance.now()
        for (const s of dropped) {
          const sink = sinks.get(s.id)
          if (sink !== undefined) report(s, sink, "abort", at)
          sinks.delete(s.id)
        }
        yield* last.release(dropped.map((s) => s.row).filter((r) => r >= 0))
      }
      expire()
      const now = performance.now()
      for (const s of scheduler.admit()) {
        const sink = sinks.get(s.id)
        if (sink === undefined) continue
        sink.admittedAt = now
        observer.admitted(seconds(now - sink.arrivedAt))
        sink.job.send({ type: "ADMIT" })
      }
      let stepTokens = 0
      for (const w of scheduler.schedulePrefill()) {
        stepTokens += w.numScheduledTokens
        yield* runPrefill(w)
      }
      const decode = scheduler.scheduleDecode()
      if (decode !== undefined) {
        stepTokens += decode.sequences.length
        inflight = { work: decode, fiber: yield* Effect.forkChild(runPlan(decodePlan(decode))) }
      }
      if (stepTokens > 0) observer.engineStep(stepTokens)
      flushPending()
      // Let request fibers run between steps (new arrivals, consumers).
      yield* Effect.yieldNow
    }).pipe(Effect.catchTag("GenerationError", recover))

    yield* Effect.forkScoped(Effect.forever(iteration))

    const defaultTimeout = options.timeoutMs ?? Number.POSITIVE_INFINITY
    const promptOptions = { allowSpecialTokens: options.allowSpecialTokens ?? false }

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
                output: makeSequenceOutput({ codec: model.codec, request: validated, stopTokenIds: model.stopTokenIds, contextLength })
              })
              observer.queued()
              Queue.offerUnsafe(queue, { _tag: "Queued", requestId: sequence.id, job })
              Queue.offerUnsafe(wake, undefined)
              // A consumer that goes away (client disconnect, interrupt) aborts the sequence before the next step.
              yield* Effect.addFinalizer(() =>
                Effect.sync(() => {
                  // The machine refuses a cancel once the job ended (finished, failed, expired): nothing to stop then.
                  if (job.send({ type: "CANCEL" })) {
                    // A sequence past its last step still has its text to flush; the loop drops it after that.
                    if (sequence.status !== "finished") scheduler.abort(sequence)
                    Queue.offerUnsafe(wake, undefined)
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
      queuePosition,
      job: (requestId) => sinks.get(requestId)?.job,
      shards,
      stats: Effect.sync(() => ({
        numRunning: scheduler.numRunning,
        numWaiting: scheduler.numWaiting,
        maxNumSeqs,
        ...stats,
        restarts: shards.reduce((n, s) => n + s.status().restarts, 0)
      }))
    })
  })
