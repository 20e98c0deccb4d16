/**
 * The engine: an Effect service that takes chat or completion requests and returns a Stream of events, batching
 * concurrent requests into the same decode steps. One loop fiber owns the scheduler and calls the shards; requests
 * only enqueue and wake it. A request that arrives while others decode joins at the next iteration.
 *
 * @since 0.1.0
 */
import { Cause, Context, Effect, Layer, Queue, Stream } from "effect"
import * as os from "node:os"
import { createActor } from "xstate"
import type { LoadedModel, ModelAdapter } from "../adapters/ModelAdapter.ts"
import type { CheckpointError, ContextLengthError, ConversionError, GenerationError, ModelConfigError, ValidationError } from "./Errors.ts"
import { jobMachine } from "./JobMachine.ts"
import type { GenerateRequest, GenerationEvent } from "./Request.ts"
import { type DecodeWork, type PrefillWork, Scheduler, type Sequence } from "./Scheduler.ts"
import { type SequenceOutput, makeSequenceOutput } from "./SequenceOutput.ts"
import { makeShardActor, type ShardActor } from "./shard/ShardActor.ts"
import type { StepPlan, StepResult } from "./shard/StepProtocol.ts"
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
}

export type EngineError = ValidationError | ContextLengthError | GenerationError

/**
 * @category services
 */
export class Engine extends Context.Service<Engine, {
  readonly model: { readonly id: string; readonly contextLength: number; readonly vocabSize: number }
  readonly codec: LoadedModel["codec"]
  readonly generate: (request: GenerateRequest) => Stream.Stream<GenerationEvent, EngineError>
  readonly stats: Effect.Effect<EngineStats>
  readonly shards: ReadonlyArray<ShardActor>
}>()("chorus/core/Engine") {
  /** The engine over an already loaded model. */
  static readonly layerFor = (model: LoadedModel, options: EngineOptions = {}): Layer.Layer<Engine, GenerationError> =>
    Layer.effect(Engine, makeEngine(model, options))

  /** Loads a model through an adapter, then runs the engine over it. */
  static readonly layer = <Options>(
    adapter: ModelAdapter<Options>,
    adapterOptions: Options,
    options: EngineOptions = {}
  ): Layer.Layer<Engine, GenerationError | CheckpointError | ModelConfigError | ConversionError> =>
    Layer.unwrap(Effect.map(adapter.load(adapterOptions), (model) => Engine.layerFor(model, options)))
}

interface Sink {
  readonly queue: Queue.Queue<GenerationEvent, GenerationError | Cause.Done>
  readonly output: SequenceOutput
  readonly actor: ReturnType<typeof createActor<typeof jobMachine>>
}

const makeEngine = (model: LoadedModel, options: EngineOptions) =>
  Effect.gen(function*() {
    const contextLength = Math.min(options.contextLength ?? model.contextLength, model.contextLength)
    const maxNumSeqs = options.maxNumSeqs ?? 16
    const threads = options.threadsPerShard ?? Math.max(1, Math.floor(os.availableParallelism() / model.shards.length))
    const shards: Array<ShardActor> = []
    for (const [i, spec] of model.shards.entries()) {
      shards.push(yield* makeShardActor(i, model.workerUrl, { ...spec, maxSeqs: maxNumSeqs, maxLen: contextLength, threads }))
    }
    const last = shards[shards.length - 1]!
    const scheduler = new Scheduler({ maxNumSeqs, maxNumBatchedTokens: options.maxNumBatchedTokens ?? 512 })
    const sinks = new Map<number, Sink>()
    const wake = yield* Queue.unbounded<void>()
    const stats = { numSteps: 0, numBatchedSteps: 0, promptTokens: 0, generatedTokens: 0 }
    const sized: LoadedModel = { ...model, contextLength }

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
      scheduler.finish(sequence)
      sinks.delete(sequence.id)
    }

    /** Feeds a sampled token to its sequence: text out, stop checks, finish. */
    const accept = (sequence: Sequence, tokenId: number) => {
      const sink = sinks.get(sequence.id)
      if (sink === undefined) return
      sequence.outputTokenIds.push(tokenId)
      stats.generatedTokens++
      const step = sink.output.push(tokenId, sequence.numComputedTokens + 1)
      Queue.offerUnsafe(sink.queue, { _tag: "Token", tokenId, text: step.text })
      if (step.finish !== undefined) {
        sink.actor.send({ type: "FINISH" })
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
        const sink = sinks.get(w.sequence.id)
        if (sink === undefined) return
        if (result.logits !== undefined) sink.output.addPromptLogits(result.logits)
        if (!w.isLastChunk) return
        Queue.offerUnsafe(sink.queue, {
          _tag: "Started",
          promptTokens: w.sequence.request.promptTokenIds.length,
          ...(sink.output.promptLogits === undefined ? {} : { promptLogits: sink.output.promptLogits })
        })
        sink.actor.send({ type: "FIRST_TOKEN" })
        accept(w.sequence, result.tokens![0]!)
      })

    const runDecode = (w: DecodeWork) =>
      Effect.gen(function*() {
        const result = yield* runPlan(decodePlan(w))
        scheduler.completeDecode(w)
        if (w.sequences.length > 1) stats.numBatchedSteps++
        for (let i = 0; i < w.sequences.length; i++) accept(w.sequences[i]!, result.tokens![i]!)
      })

    /** A shard failed: every running sequence ends with the error, the shards come back, the queue goes on. */
    const recover = (error: GenerationError) =>
      Effect.gen(function*() {
        for (const s of scheduler.running()) {
          const sink = sinks.get(s.id)
          if (sink !== undefined) {
            sink.actor.send({ type: "FAIL", error: error.message })
            Queue.failCauseUnsafe(sink.queue, Cause.fail(error))
          }
          end(s)
        }
        yield* Effect.logWarning(`${error.message}; restarting shards`)
        for (const shard of shards) yield* shard.restart.pipe(Effect.catch((e) => Effect.logError(e.message)))
      })

    const iteration = Effect.gen(function*() {
      if (!scheduler.hasWork) {
        yield* Queue.take(wake)
        return
      }
      const dropped = scheduler.dropAborted()
      for (const s of dropped) sinks.delete(s.id)
      if (dropped.length > 0) yield* last.release(dropped.map((s) => s.row).filter((r) => r >= 0))
      for (const s of scheduler.admit()) sinks.get(s.id)?.actor.send({ type: "ADMIT" })
      for (const w of scheduler.schedulePrefill()) yield* runPrefill(w)
      const decode = scheduler.scheduleDecode()
      if (decode !== undefined) yield* runDecode(decode)
      // Let request fibers run between steps (new arrivals, consumers).
      yield* Effect.yieldNow
    }).pipe(Effect.catchTag("GenerationError", recover))

    yield* Effect.forkScoped(Effect.forever(iteration))

    const generate = (request: GenerateRequest): Stream.Stream<GenerationEvent, EngineError> =>
      Stream.unwrap(
        Effect.map(validateRequest(request, sized), (validated) =>
          Stream.callback<GenerationEvent, GenerationError>((queue) =>
            Effect.gen(function*() {
              const sequence = scheduler.add(validated)
              const actor = createActor(jobMachine, { input: { jobId: String(sequence.id) } }).start()
              sinks.set(sequence.id, {
                queue,
                actor,
                output: makeSequenceOutput({
                  codec: model.codec,
                  request: validated,
                  stopTokenIds: model.stopTokenIds,
                  contextLength
                })
              })
              Queue.offerUnsafe(wake, undefined)
              // A consumer that goes away (client disconnect, interrupt) aborts the sequence before the next step.
              yield* Effect.addFinalizer(() =>
                Effect.sync(() => {
                  if (sequence.status !== "finished") {
                    actor.send({ type: "CANCEL" })
                    scheduler.abort(sequence)
                    Queue.offerUnsafe(wake, undefined)
                  }
                })
              )
            })
          )
        )
      )

    return Engine.of({
      model: { id: model.id, contextLength, vocabSize: model.vocabSize },
      codec: model.codec,
      generate,
      shards,
      stats: Effect.sync(() => ({ numRunning: scheduler.numRunning, numWaiting: scheduler.numWaiting, ...stats }))
    })
  })
