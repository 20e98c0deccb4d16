/**
 * A job of the shared queue as the stream the local engine would give for it (Queued, Started, Token...,
 * Finished, or its error), read from the job's events in Redis by the replica that holds the client. The job's
 * lifecycle machine here follows the events (handed out, re-queued, first token, end); a consumer that goes away
 * cancels the job in Redis, and its worker hears so at its next call.
 *
 * @since 0.3.0
 */
import { Cause, Effect, Queue, Stream } from "effect"
import type { EngineError } from "../../core/Engine.ts"
import { DeadlineExceeded, GenerationError } from "../../core/Errors.ts"
import type { EngineObserver } from "../../core/EngineObserver.ts"
import { type Job, startJob } from "../../core/JobMachine.ts"
import type { GenerationEvent } from "../../core/Request.ts"
import type { JobEvent, JobEventFanout } from "./JobEvents.ts"
import type { QueueError } from "./RedisConnection.ts"

/** A job whose client is connected to this replica. */
export interface FollowedJob {
  readonly id: string
  readonly machine: Job
  readonly arrivedAt: number
  admittedAt: number
  firstTokenAt: number
  lastTokenAt: number
}

/** What following a job needs from the queue. */
export interface FollowContext {
  readonly prefix: string
  readonly fanout: JobEventFanout
  readonly observer: EngineObserver
  /** This replica's followed jobs by request id (for `queuePosition`, `job`, stats). */
  readonly local: Map<number, FollowedJob>
  readonly nextRequestId: () => number
  readonly stats: { promptTokens: number; generatedTokens: number }
  readonly cancel: (id: string) => Effect.Effect<string, QueueError>
}

/** The job's events as the local engine's: Queued, Started, Token..., Finished (or its error). */
export const followJob = (ctx: FollowContext, id: string, timeoutMs: number): Stream.Stream<GenerationEvent, EngineError> =>
  Stream.callback<GenerationEvent, EngineError>((q) =>
    Effect.gen(function*() {
      const requestId = ctx.nextRequestId()
      const job: FollowedJob = { id, machine: startJob(String(requestId)), arrivedAt: performance.now(), admittedAt: 0, firstTokenAt: 0, lastTokenAt: 0 }
      ctx.local.set(requestId, job)
      let ended = false
      let started = false
      let promptTokens = 0
      let generated = 0
      const end = (error?: EngineError) => {
        ended = true
        ctx.local.delete(requestId)
        if (error === undefined) Queue.endUnsafe(q)
        else Queue.failCauseUnsafe(q, Cause.fail(error))
      }
      const report = (reason: "stop" | "length" | "error" | "timeout" | "abort", prompt: number, tokens: number) => {
        const t = performance.now()
        ctx.observer.finished({
          reason,
          e2eSeconds: (t - job.arrivedAt) / 1000,
          prefillSeconds: job.firstTokenAt === 0 || job.admittedAt === 0 ? undefined : (job.firstTokenAt - job.admittedAt) / 1000,
          decodeSeconds: job.firstTokenAt === 0 ? undefined : (t - job.firstTokenAt) / 1000,
          promptTokens: prompt,
          generationTokens: tokens,
          maxTokens: 0
        })
      }
      const onEvent = (e: JobEvent): boolean => {
        if (ended) return false
        switch (e.t) {
          case "a":
            job.machine.send({ type: "ADMIT" })
            if (job.admittedAt === 0) {
              job.admittedAt = performance.now()
              ctx.observer.admitted((job.admittedAt - job.arrivedAt) / 1000)
            }
            return true
          case "q":
            job.machine.send({ type: "REQUEUE" })
            return true
          case "s":
            if (!started) {
              started = true
              promptTokens = e.pt
              ctx.observer.promptTokens(e.pt)
              ctx.stats.promptTokens += e.pt
              Queue.offerUnsafe(q, { _tag: "Started", promptTokens: e.pt })
            }
            return true
          case "k": {
            job.machine.send({ type: "FIRST_TOKEN" })
            e.i.forEach((tokenId, n) => {
              const t = performance.now()
              if (job.firstTokenAt === 0) {
                job.firstTokenAt = t
                ctx.observer.firstToken((job.admittedAt - job.arrivedAt) / 1000, (t - job.arrivedAt) / 1000)
              } else ctx.observer.token((t - job.lastTokenAt) / 1000)
              job.lastTokenAt = t
              generated++
              ctx.stats.generatedTokens++
              Queue.offerUnsafe(q, { _tag: "Token", tokenId, text: e.x[n] ?? "" })
            })
            return true
          }
          case "f":
            if (!started) Queue.offerUnsafe(q, { _tag: "Started", promptTokens: e.pt })
            job.machine.send({ type: "FINISH" })
            Queue.offerUnsafe(q, { _tag: "Finished", finishReason: e.fr, stopReason: e.sr, text: e.x, usage: { promptTokens: e.pt, completionTokens: e.ct } })
            report(e.fr, e.pt, e.ct)
            end()
            return false
          case "x":
            if (e.k === "deadline") {
              job.machine.send({ type: "EXPIRE" })
              ctx.observer.failed("timeout")
              report("timeout", promptTokens, generated)
              end(new DeadlineExceeded({ timeoutMs, message: e.waiting === 1 ? "the request timed out waiting for a worker" : "the request timed out on its worker" }))
            } else {
              job.machine.send({ type: "FAIL", error: e.m ?? "the worker failed" })
              ctx.observer.failed("generation_error")
              report("error", promptTokens, generated)
              end(new GenerationError({ message: e.m ?? "the worker failed" }))
            }
            return false
          case "c":
            job.machine.send({ type: "CANCEL" })
            report("abort", promptTokens, generated)
            end(new GenerationError({ message: "the job was canceled" }))
            return false
        }
      }
      Queue.offerUnsafe(q, { _tag: "Queued", requestId, job: job.machine })
      yield* ctx.fanout.watch(`${ctx.prefix}ev:${id}`, onEvent).pipe(Effect.mapError((e) => new GenerationError({ message: e.message })))
      yield* Effect.addFinalizer(() =>
        ended
          ? Effect.void
          : Effect.gen(function*() {
            // The consumer went away: the job is canceled in Redis; a worker running it hears so at its next call.
            ended = true
            ctx.local.delete(requestId)
            job.machine.send({ type: "CANCEL" })
            report("abort", promptTokens, generated)
            yield* ctx.cancel(id).pipe(Effect.ignore)
          })
      )
    })
  )
