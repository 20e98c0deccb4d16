/**
 * The engine's loop: one fiber that owns the scheduler and drives the shards. Each iteration asks the scheduler for a
 * step, packs it into a plan, runs it through every shard in order, and hands the sampled tokens back to the
 * scheduler. While a step is on the shards the loop streams the previous step's text (vLLM's async scheduling), so
 * detokenizing and stop strings never delay the GPU. Requests only enqueue and wake it.
 *
 * Pipeline shards keep `pipelineDepth` steps in flight (micro-batches, vLLM's virtual engines): each step is a
 * forked fiber that walks the shards in order, so while shard k+1 runs one micro-batch shard k runs the next. The
 * scheduler gives each step sequences that are in no other step; when a step comes back its sequences' next step is
 * handed out while the others are still on the shards. Each shard's mailbox runs the steps in hand-off order.
 *
 * A model of one shard decodes ahead (`decodeAhead`): while a step is on the shard, the step after it is already in
 * the shard's mailbox, its tokens to be taken from the step before (`Scheduler.scheduleAhead`), so the shard goes
 * from one decode step to the next without waiting for the engine (on an H200 the round trip was a tenth of a
 * one-stream step).
 */
import { Cause, Effect, Exit, Fiber, Queue } from "effect"
import type { EngineObserver, FinishedReason } from "./EngineObserver.ts"
import { type ContextLengthError, DeadlineExceeded, type GenerationError, type Overloaded, type ValidationError } from "./Errors.ts"
import type { Job } from "./JobMachine.ts"
import type { GenerationEvent, TokenLogprobs } from "./Request.ts"
import { type SampledToken, Scheduler, type SchedulerConfig, type SchedulerOutput, type Sequence, tokenAt } from "./Scheduler.ts"
import type { SequenceOutput } from "./SequenceOutput.ts"
import type { ShardActor } from "./shard/ShardActor.ts"
import { FEEDBACK_TOKEN, type StepPlan, type StepResult } from "./shard/StepProtocol.ts"

export type EngineError = ValidationError | ContextLengthError | GenerationError | Overloaded | DeadlineExceeded

/** Where a request's events go, and its timings. */
export interface Sink {
  readonly queue: Queue.Queue<GenerationEvent, EngineError | Cause.Done>
  readonly output: SequenceOutput
  readonly job: Job
  readonly arrivedAt: number
  admittedAt: number
  firstTokenAt: number
  lastTokenAt: number
}

export interface LoopStats {
  numSteps: number
  /** The most steps that were on the shards at once (1 without micro-batches). */
  maxStepsInFlight: number
  numBatchedSteps: number
  promptTokens: number
  generatedTokens: number
}

export interface EngineLoop {
  readonly scheduler: Scheduler
  readonly sinks: Map<number, Sink>
  readonly stats: LoopStats
  /** Wakes the loop (a request arrived or left). */
  readonly wake: () => void
  /** The loop itself, to fork into the engine's scope. */
  readonly run: Effect.Effect<never>
}

const seconds = (ms: number) => ms / 1000

/** A sampled token and, when its sequence asked, its logprobs (from the shard's `StepResult.logprobs`). */
type Sampled = SampledToken & { readonly logprobs?: TokenLogprobs }

/** Unpacks a step's `StepResult.logprobs` by sequence id: sample entries come in plan order, as `tokens` do. */
const logprobsBySequence = (out: SchedulerOutput, packed: NonNullable<StepResult["logprobs"]>): Map<number, TokenLogprobs> => {
  const bySeq = new Map<number, TokenLogprobs>()
  let k = 0
  let at = 0
  for (const e of out.entries) {
    if (!e.samples) continue
    const n = packed.counts[k++] ?? 0
    if (n === 0) continue
    const top: Array<{ tokenId: number; logprob: number }> = []
    for (let j = 1; j < n; j++) top.push({ tokenId: packed.ids[at + j]!, logprob: packed.values[at + j]! })
    bySeq.set(e.sequence.id, { logprob: packed.values[at]!, top })
    at += n
  }
  return bySeq
}

export const makeEngineLoop = (options: {
  readonly shards: ReadonlyArray<ShardActor>
  readonly scheduler: SchedulerConfig
  readonly observer: EngineObserver
  /** Hand out each decode step's successor while it runs (one shard, one step at a time only); default true. */
  readonly decodeAhead?: boolean
}) =>
  Effect.gen(function*() {
    const { shards, observer } = options
    const last = shards[shards.length - 1]!
    const scheduler = new Scheduler(options.scheduler)
    const depth = Math.max(1, options.scheduler.pipelineDepth ?? 1)
    const ahead = options.decodeAhead !== false && shards.length === 1 && depth === 1
    const sinks = new Map<number, Sink>()
    const wakeQueue = yield* Queue.unbounded<void>()
    const stats: LoopStats = { numSteps: 0, maxStepsInFlight: 0, numBatchedSteps: 0, promptTokens: 0, generatedTokens: 0 }
    /** Sequences that left since the last step: their samplers are released in the last shard. */
    let leftSeqIds: Array<number> = []

    /** Reports a sequence that left the engine; phases it never reached stay undefined. */
    const report = (sequence: Sequence, sink: Sink, reason: FinishedReason, now: number) =>
      observer.finished({
        reason,
        e2eSeconds: seconds(now - sink.arrivedAt),
        prefillSeconds: sink.firstTokenAt === 0 ? undefined : seconds(sink.firstTokenAt - sink.admittedAt),
        decodeSeconds: sink.firstTokenAt === 0 ? undefined : seconds(now - sink.firstTokenAt),
        promptTokens: sequence.promptTokenIds.length,
        generationTokens: sequence.outputTokenIds.length,
        maxTokens: sequence.request.maxTokens
      })

    /** A sequence leaves: the scheduler frees it before the next step; its sink is gone. */
    const end = (sequence: Sequence) => {
      scheduler.drop(sequence)
      sinks.delete(sequence.id)
    }

    /** Ends a sequence with an error on its stream (the text so far has already been streamed). */
    const fail = (sequence: Sequence, error: EngineError, reason: "error" | "timeout") => {
      const sink = sinks.get(sequence.id)
      // The machine takes a failure only before the job ended: a job ends once.
      if (sink !== undefined && sink.job.send(reason === "timeout" ? { type: "EXPIRE" } : { type: "FAIL", error: error.message })) {
        observer.failed(error.errorType)
        report(sequence, sink, reason, performance.now())
        Queue.failCauseUnsafe(sink.queue, Cause.fail(error))
      }
      end(sequence)
    }

    /** Text out, stop strings, the finish event. Runs while the next step is already on the shards. */
    const emit = ({ sequence, tokenId, stop, logprobs }: Sampled) => {
      const sink = sinks.get(sequence.id)
      if (sink === undefined) return
      const now = performance.now()
      if (sink.firstTokenAt === 0) {
        sink.firstTokenAt = now
        observer.firstToken(seconds(sink.admittedAt - sink.arrivedAt), seconds(now - sink.arrivedAt))
      } else observer.token(seconds(now - sink.lastTokenAt))
      sink.lastTokenAt = now
      const step = sink.output.push(tokenId, stop)
      // An end-of-turn token is not text, and OpenAI reports no logprob for it.
      const lp = logprobs === undefined || stop === "eos" ? {} : { logprobs }
      Queue.offerUnsafe(sink.queue, { _tag: "Token", tokenId, text: step.text, ...lp })
      if (step.finish !== undefined) {
        // Refused only when the consumer cancelled between the step and this text: count it as the abort it was.
        report(sequence, sink, sink.job.send({ type: "FINISH" }) ? step.finish.finishReason : "abort", now)
        Queue.offerUnsafe(sink.queue, {
          _tag: "Finished",
          finishReason: step.finish.finishReason,
          stopReason: step.finish.stopReason,
          text: step.finish.trailingText,
          usage: { promptTokens: sequence.promptTokenIds.length, completionTokens: sequence.outputTokenIds.length }
        })
        Queue.endUnsafe(sink.queue)
        end(sequence)
      }
    }

    /** Tokens sampled by the last step, streamed while the next one runs. */
    let pending: Array<Sampled> = []
    const flushPending = () => {
      const batch = pending
      pending = []
      for (const t of batch) emit(t)
    }

    const planOf = (out: SchedulerOutput): StepPlan => {
      const n = out.entries.length
      const seqIds = new Int32Array(n)
      const rows = new Int32Array(n)
      const numTokens = new Int32Array(n)
      const pastLens = new Int32Array(n)
      const tokenIds = new Int32Array(out.numTokens)
      const returnLogits = new Uint8Array(n)
      let blocksPerEntry = 1
      for (const e of out.entries) blocksPerEntry = Math.max(blocksPerEntry, e.blockIds.length)
      const blockTables = new Int32Array(n * blocksPerEntry)
      const sampleEntries: Array<number> = []
      const newSequences: Array<StepPlan["newSequences"][number]> = []
      let at = 0
      out.entries.forEach((e, i) => {
        const s = e.sequence
        seqIds[i] = s.id
        rows[i] = s.row
        numTokens[i] = e.numTokens
        pastLens[i] = e.start
        returnLogits[i] = e.returnLogits
        if (e.feedback === true) tokenIds[at++] = FEEDBACK_TOKEN
        else for (let t = 0; t < e.numTokens; t++) tokenIds[at++] = tokenAt(s, e.start + t)
        const ids = e.blockIds
        for (let b = 0; b < blocksPerEntry; b++) blockTables[i * blocksPerEntry + b] = ids[Math.min(b, ids.length - 1)] ?? 0
        if (e.samples) sampleEntries.push(i)
        if (e.isNew) {
          const logprobs = s.request.logprobs
          newSequences.push({ seqId: s.id, params: s.request.sampling, promptTokenIds: s.promptTokenIds, ...(logprobs === undefined ? {} : { logprobs }) })
        }
      })
      return {
        seqIds,
        rows,
        numTokens,
        pastLens,
        tokenIds,
        blockTables,
        blocksPerEntry,
        sampleEntries: Int32Array.from(sampleEntries),
        newSequences,
        returnLogits
      }
    }

    /** Runs one plan through every shard in order; hidden states flow from shard to shard. */
    const runPlan = (plan: StepPlan, step: number) =>
      Effect.gen(function*() {
        let result: StepResult | undefined
        let runMs = 0
        let firstStartedAt = 0
        for (const shard of shards) {
          const answer = yield* shard.step(result?.hidden === undefined ? plan : { ...plan, hidden: result.hidden })
          result = answer.result
          runMs += result.runMs
          if (firstStartedAt === 0) firstStartedAt = answer.startedAt
          observer.shardBusy?.({ shard: shard.index, step, numSeqs: plan.seqIds.length, startedAt: answer.startedAt, endedAt: answer.endedAt })
        }
        return { result: result!, runMs, startedAt: firstStartedAt, answeredAt: performance.now() }
      })
    /** When the latest step's answer came back; 0 after an idle wait (idle time is not loop overhead). */
    let lastAnswerAt = 0
    /** When the latest step was handed out. */
    let lastHandedAt = 0
    let handOffs = 0

    /** The steps on the shards, oldest first (at most `depth`, or two with decode ahead). */
    interface InFlight {
      readonly out: SchedulerOutput
      readonly fiber: Fiber.Fiber<{ result: StepResult; runMs: number; startedAt: number; answeredAt: number }, GenerationError>
      readonly handedAt: number
      readonly betweenMs: number
      /** Handed out ahead, behind the step before it: its time on the shards starts when the shard takes it. */
      readonly ahead: boolean
    }
    let inFlight: Array<InFlight> = []

    /** Prompt logits asked for by entries of a step, routed to their sequences' outputs. */
    const routeLogits = (out: SchedulerOutput, logits: Float32Array) => {
      const vocab = last.load.vocabSize
      let at = 0
      for (const e of out.entries) {
        if (e.returnLogits === 0) continue
        const size = (e.returnLogits === 2 ? e.numTokens : 1) * vocab
        sinks.get(e.sequence.id)?.output.addPromptLogits(logits.subarray(at, at + size))
        at += size
      }
    }

    /** What a finished step did: chunks in the cache, tokens recorded, first tokens announced. */
    const complete = (out: SchedulerOutput, result: StepResult) => {
      stats.numSteps++
      if (result.logits !== undefined) routeLogits(out, result.logits)
      let decoding = 0
      for (const e of out.entries) if (e.numTokens === 1 && e.sequence.outputTokenIds.length > 0) decoding++
      if (decoding > 0) {
        observer.decodeStep(decoding)
        if (decoding > 1) stats.numBatchedSteps++
      }
      observer.engineStep(out.numTokens)
      const logprobs = result.logprobs === undefined ? undefined : logprobsBySequence(out, result.logprobs)
      const firstTokens = new Set<number>()
      for (const e of out.entries) if (e.samples && e.sequence.outputTokenIds.length === 0) firstTokens.add(e.sequence.id)
      for (const t of scheduler.update(out, result.tokens ?? new Int32Array(0))) {
        stats.generatedTokens++
        if (t.stop !== undefined) leftSeqIds.push(t.sequence.id)
        const sink = sinks.get(t.sequence.id)
        if (firstTokens.has(t.sequence.id)) {
          // Prompt tokens count whole at the first token, cached or computed (vLLM's prompt_tokens_total).
          stats.promptTokens += t.sequence.promptTokenIds.length
          observer.promptTokens(t.sequence.promptTokenIds.length)
        }
        if (sink !== undefined && firstTokens.has(t.sequence.id)) {
          Queue.offerUnsafe(sink.queue, {
            _tag: "Started",
            promptTokens: t.sequence.promptTokenIds.length,
            ...(sink.output.promptLogits === undefined ? {} : { promptLogits: sink.output.promptLogits, promptTokenIds: t.sequence.promptTokenIds })
          })
          sink.job.send({ type: "FIRST_TOKEN" })
        }
        // Logprobs (when the sequence asked) travel with the token to its Token event.
        const lp = logprobs?.get(t.sequence.id)
        pending.push(lp === undefined ? t : { ...t, logprobs: lp })
      }
    }

    /**
     * A step failed: every running sequence ends with the error. A shard whose worker died is brought back by its
     * lifecycle machine; the loop waits until every shard is ready again (or has failed for good), then goes on with
     * an empty prefix cache (the new workers hold no blocks).
     */
    const recover = (error: GenerationError) =>
      Effect.gen(function*() {
        flushPending()
        for (const s of scheduler.runningSequences()) fail(s, error, "error")
        scheduler.clearCache()
        yield* Effect.logWarning(`${error.message}; ${shards.map((s) => `shard ${s.index} ${s.status().state}`).join(", ")}`)
        for (const shard of shards) yield* shard.settled
      })

    const expire = () => {
      for (const s of scheduler.expired(performance.now())) {
        const timeoutMs = s.request.timeoutMs
        fail(s, new DeadlineExceeded({ timeoutMs, message: `the request exceeded its deadline of ${timeoutMs} ms` }), "timeout")
      }
    }

    /** Removes the sequences that left; those that left without a report (client gone) count as aborts. */
    const collect = Effect.gen(function*() {
      const at = performance.now()
      for (const s of scheduler.collectDropped()) {
        leftSeqIds.push(s.id)
        const sink = sinks.get(s.id)
        if (sink !== undefined) report(s, sink, "abort", at)
        sinks.delete(s.id)
      }
      if (leftSeqIds.length > 0) {
        const ids = leftSeqIds
        leftSeqIds = []
        // Behind a step in flight the release would wait for it: it is queued in the last shard's mailbox without
        // waiting (no later step names these sequences; a shard that fails fails its steps, which recover). Started
        // at once, so it is in the mailbox before any step handed out after it (a row layout's release frees rows).
        if (inFlight.length === 0) yield* last.release(ids)
        else yield* Effect.forkChild(Effect.ignore(last.release(ids)), { startImmediately: true })
      }
    })

    /** Puts a scheduled step on the shards (a fiber that walks them in order). */
    const launch = (out: SchedulerOutput, isAhead: boolean) =>
      Effect.gen(function*() {
        const handedAt = performance.now()
        // Idle before it, or handed out behind another step with no answer in between: no loop overhead.
        const betweenMs = lastAnswerAt === 0 || lastAnswerAt < lastHandedAt ? 0 : handedAt - lastAnswerAt
        lastHandedAt = handedAt
        // Started at once: the step is in shard 0's mailbox before the next is handed out (hand-off order per shard).
        const fiber = yield* Effect.forkChild(runPlan(planOf(out), handOffs++), { startImmediately: true })
        inFlight.push({ out, fiber, handedAt, betweenMs, ahead: isAhead })
        stats.maxStepsInFlight = Math.max(stats.maxStepsInFlight, inFlight.length)
      })

    /** Hands out the scheduler's next step, if it has one; true when it did. */
    const handOut = Effect.gen(function*() {
      const out = scheduler.schedule()
      const now = performance.now()
      for (const s of out.admitted) {
        const sink = sinks.get(s.id)
        if (sink === undefined || sink.admittedAt !== 0) continue
        sink.admittedAt = now
        observer.admitted(seconds(now - sink.arrivedAt))
        sink.job.send({ type: "ADMIT" })
      }
      for (const _ of out.preempted) observer.preempted()
      if (out.entries.length === 0) return false
      yield* launch(out, false)
      return true
    })

    /** Decode ahead: the step after the one on the shard, when the scheduler has one (`scheduleAhead`); true when handed. */
    const handOutAhead = Effect.gen(function*() {
      if (!ahead || inFlight.length !== 1) return false
      const out = scheduler.scheduleAhead(inFlight[0]!.out)
      if (out === undefined) return false
      yield* launch(out, true)
      return true
    })

    /** A step failed: wait for the others on the shards to end (their results are dropped), then recover. */
    const abandon = (error: GenerationError) =>
      Effect.gen(function*() {
        const others = inFlight
        inFlight = []
        for (const f of others) yield* Fiber.await(f.fiber)
        scheduler.abandonInFlight()
        yield* recover(error)
      })

    const iteration = Effect.gen(function*() {
      if (!scheduler.hasWork && pending.length === 0 && inFlight.length === 0) {
        lastAnswerAt = 0
        yield* Queue.take(wakeQueue)
        return
      }
      // A shard being brought back after a crash: new work waits for it instead of failing on its refusal.
      for (const shard of shards) if (shard.status().state !== "ready") yield* shard.settled
      expire()
      yield* collect
      const handed = inFlight.length < depth ? yield* handOut : false
      yield* handOutAhead
      flushPending()
      if (inFlight.length === 0) {
        lastAnswerAt = 0
        yield* Effect.yieldNow
        return
      }
      // Room for another micro-batch: try to fill it before waiting.
      if (handed && inFlight.length < depth) {
        yield* Effect.yieldNow
        return
      }
      const oldest = inFlight[0]!
      if (inFlight.length < depth) {
        // A request that arrives meanwhile can start its own micro-batch at once.
        const woke = yield* Effect.raceFirst(Fiber.await(oldest.fiber).pipe(Effect.as(false)), Queue.take(wakeQueue).pipe(Effect.as(true)))
        if (woke) return
      }
      const exit = yield* Fiber.await(oldest.fiber)
      inFlight.shift()
      if (Exit.isFailure(exit)) {
        const error = Cause.findErrorOption(exit.cause)
        if (error._tag === "None") return yield* Effect.failCause(exit.cause)
        return yield* abandon(error.value)
      }
      const { result, runMs, startedAt, answeredAt } = exit.value
      observer.stepTiming?.({
        shardsSeconds: seconds(answeredAt - (oldest.ahead ? startedAt : oldest.handedAt)),
        runSeconds: seconds(runMs),
        betweenSeconds: seconds(oldest.betweenMs)
      })
      lastAnswerAt = Math.max(lastAnswerAt, answeredAt)
      complete(oldest.out, result)
      // Let request fibers run between steps (new arrivals, consumers).
      yield* Effect.yieldNow
    }).pipe(Effect.catchTag("GenerationError", abandon))

    return {
      scheduler,
      sinks,
      stats,
      wake: () => Queue.offerUnsafe(wakeQueue, undefined),
      run: Effect.forever(iteration)
    } satisfies EngineLoop
  })

