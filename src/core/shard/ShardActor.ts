/**
 * A shard actor: a supervised fiber draining a bounded mailbox, and one piscina pool of exactly one worker thread
 * that owns the shard's ORT session and KV cache. Callers `step` by posting a message and awaiting its reply; the
 * worker runs one step at a time in mailbox order, and the next is posted to it while it runs one (with
 * micro-batches or decode-ahead steps in flight, the engine's steps queue here and run back to back; each answer
 * says when the worker was busy with it). The shard's lifecycle machine (`ShardLifecycle.ts`) decides
 * what may run: messages are delivered only while it is `ready`; a worker thread that dies (crash, out of memory)
 * fails its message with a GenerationError and tells the machine, which brings up a fresh thread with the same load
 * after a backoff, or gives up after too many crashes.
 *
 * The pool is closed with `close()` (never `destroy()`): terminating a worker while ORT is inside `run` aborts the
 * whole process (stack-notes §3).
 */
import { Deferred, Effect, FiberSet, Queue, Ref, Scope, Semaphore } from "effect"
import { Piscina } from "piscina"
import { fromPromise } from "xstate"
import { GenerationError } from "../Errors.ts"
import {
  type RestartPolicy,
  type ShardLifecycle,
  shardLifecycleMachine,
  type ShardState,
  type ShardStatus,
  startShardLifecycle
} from "./ShardLifecycle.ts"
import type { ShardLoad, ShardLoadResult, StepPlan, StepResult } from "./StepProtocol.ts"

/** A step's result and when the worker thread ran it (`performance.now()` of the engine's thread, milliseconds). */
export interface ShardAnswer {
  readonly result: StepResult
  readonly startedAt: number
  readonly endedAt: number
}

export interface ShardActor {
  readonly index: number
  readonly load: ShardLoad
  readonly step: (plan: StepPlan) => Effect.Effect<ShardAnswer, GenerationError>
  readonly release: (seqIds: ReadonlyArray<number>) => Effect.Effect<void, GenerationError>
  /** The lifecycle machine's current status (what `/ready` reports). */
  readonly status: () => ShardStatus
  /** Calls `listener` with the current status and on every change of the lifecycle machine; returns the unsubscribe. */
  readonly watch: (listener: (status: ShardStatus) => void) => () => void
  /** Waits until the machine is `ready` or `failed` (a crashed worker is being brought back meanwhile). */
  readonly settled: Effect.Effect<ShardState>
  /** The worker's thread ids, for fault-injection tests. */
  readonly threadIds: Effect.Effect<ReadonlyArray<number>>
  /** Fault injection: the worker thread dies between two steps (its module's `crash` export). */
  readonly crash: Effect.Effect<void>
  readonly loaded: Effect.Effect<ShardLoadResult>
}

interface Envelope {
  readonly name: "step" | "release" | "crash"
  readonly task: unknown
  readonly reply: Deferred.Deferred<unknown, GenerationError>
}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

const failure = (index: number, what: string) => (cause: unknown) =>
  new GenerationError({ message: `shard ${index} ${what} failed: ${messageOf(cause)}` })

/** Why a message is not delivered, by the machine's state. */
const refusal = (status: ShardStatus) => {
  const why = status.lastError ?? "unknown"
  switch (status.state) {
    case "loading":
      return `shard ${status.index} is still loading`
    case "crashed":
      return `shard ${status.index} worker thread died (${why})`
    case "restarting":
      return `shard ${status.index} is restarting after its worker thread died (${why})`
    default:
      return `shard ${status.index} has failed and stays down (${why})`
  }
}

/** Tasks posted to the worker at once: the one it runs and the next, waiting in its port. */
const kTasksPosted = 2

const openPool = (workerUrl: URL, index: number) =>
  new Piscina({
    filename: workerUrl.href,
    minThreads: 1,
    maxThreads: 1,
    // An idle worker must never be reaped: it holds the model.
    idleTimeout: Number.POSITIVE_INFINITY,
    // The worker's tasks are synchronous, so it still runs them one at a time, in the order posted.
    concurrentTasksPerWorker: kTasksPosted,
    workerData: { shard: index }
  })

export const makeShardActor = (
  index: number,
  workerUrl: URL,
  load: ShardLoad,
  policy: RestartPolicy = {}
): Effect.Effect<ShardActor, GenerationError, Scope.Scope> =>
  Effect.gen(function*() {
    const pool = yield* Ref.make(openPool(workerUrl, index))
    yield* Effect.addFinalizer(() => Ref.get(pool).pipe(Effect.flatMap((p) => Effect.promise(() => p.close()))))
    const loaded = yield* Ref.make<ShardLoadResult | undefined>(undefined)

    /** The machine's `load`: the first load, or a fresh thread in place of a dead one (its KV cache starts empty). */
    const bringUp = (restart: boolean) =>
      Effect.gen(function*() {
        if (restart) {
          // piscina has already replaced the dead thread with an unloaded one; start over with a fresh pool.
          const old = yield* Ref.get(pool)
          yield* Effect.promise(() => old.close({ force: true }).catch(() => undefined))
          yield* Ref.set(pool, openPool(workerUrl, index))
        }
        const p = yield* Ref.get(pool)
        const result = yield* Effect.tryPromise({ try: () => p.run(load, { name: "load" }) as Promise<ShardLoadResult>, catch: failure(index, "load") })
        yield* Ref.set(loaded, result)
      })

    // Loads run as fibers of this actor's scope, so closing the engine stops a restart under way.
    const runPromise = yield* FiberSet.makeRuntimePromise<never, void, GenerationError>()
    const lifecycle: ShardLifecycle = startShardLifecycle(
      shardLifecycleMachine.provide({ actors: { load: fromPromise(({ input }) => runPromise(bringUp(input.restart))) } }),
      { index, policy }
    )
    yield* Effect.addFinalizer(() => Effect.sync(() => lifecycle.stop()))

    const settled = Effect.callback<ShardState>((resume) => {
      let unsubscribe: (() => void) | undefined
      let done = false
      unsubscribe = lifecycle.watch((status) => {
        if (done || (status.state !== "ready" && status.state !== "failed")) return
        done = true
        unsubscribe?.()
        resume(Effect.succeed(status.state))
      })
      if (done) unsubscribe()
      return Effect.sync(() => unsubscribe?.())
    })

    if ((yield* settled) === "failed") {
      return yield* Effect.fail(new GenerationError({ message: lifecycle.status().lastError ?? `shard ${index} load failed` }))
    }

    /** A task that failed because the thread itself exited (not an error thrown inside the worker). */
    const threadExited = (cause: unknown) => /exit|terminat/i.test(messageOf(cause))

    // The mailbox: one fiber, scoped to the actor, posts messages to the worker in order. The worker runs them one at
    // a time; the next may be posted while it runs one (two tasks a worker in piscina), so that a decode-ahead step
    // starts when the step before it ends instead of after a round trip through this thread.
    const mailbox = yield* Queue.bounded<Envelope>(64)
    const posted = yield* Semaphore.make(kTasksPosted)
    const answers = yield* FiberSet.make()
    let lastEndedAt = 0
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.gen(function*() {
          const { name, task, reply } = yield* Queue.take(mailbox)
          yield* posted.take(1)
          const status = lifecycle.status()
          if (status.state !== "ready") {
            yield* posted.release(1)
            yield* Deferred.fail(reply, new GenerationError({ message: refusal(status) }))
            return
          }
          const p = yield* Ref.get(pool)
          const postedAt = performance.now()
          const running = p.run(task, { name })
          yield* FiberSet.run(
            answers,
            Effect.tryPromise({
              try: () => running,
              catch: (cause) => {
                if (!threadExited(cause)) return failure(index, name)(cause)
                // The task the thread died in, or one posted behind it: either way the shard's worker is gone.
                lifecycle.lost(messageOf(cause))
                return new GenerationError({ message: refusal(lifecycle.status()) })
              }
            }).pipe(
              Effect.map((result) => {
                // Busy with this task from when it was posted or, behind another, when that one's answer came.
                const startedAt = Math.max(postedAt, lastEndedAt)
                lastEndedAt = performance.now()
                return name === "step" ? { result, startedAt, endedAt: lastEndedAt } : result
              }),
              Effect.exit,
              Effect.flatMap((exit) => Deferred.done(reply, exit)),
              Effect.ensuring(posted.release(1))
            )
          )
        })
      )
    )

    const ask = <A>(name: Envelope["name"], task: unknown) =>
      Effect.gen(function*() {
        const reply = yield* Deferred.make<unknown, GenerationError>()
        yield* Queue.offer(mailbox, { name, task, reply })
        return (yield* Deferred.await(reply)) as A
      })

    return {
      index,
      load,
      step: (plan) => ask<ShardAnswer>("step", plan),
      release: (seqIds) => ask<void>("release", seqIds),
      status: lifecycle.status,
      watch: lifecycle.watch,
      settled,
      threadIds: Ref.get(pool).pipe(Effect.map((p) => p.threads.map((t) => t.threadId))),
      crash: Effect.ignore(ask<void>("crash", undefined)),
      // Set before the machine first enters `ready`, which the constructor waited for.
      loaded: Ref.get(loaded).pipe(Effect.map((r) => r!))
    } satisfies ShardActor
  })
