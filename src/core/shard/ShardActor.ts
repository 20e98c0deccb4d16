/**
 * A shard actor: a supervised fiber draining a bounded mailbox, and one piscina pool of exactly one worker thread
 * that owns the shard's ORT session and KV cache. Callers `step` by posting a message and awaiting its reply, so
 * the worker sees one step at a time in mailbox order. A worker that dies (crash, out of memory) fails the step
 * with a GenerationError; `restart` brings up a fresh thread with the same load so the engine can serve again.
 *
 * The pool is closed with `close()` (never `destroy()`): terminating a worker while ORT is inside `run` aborts the
 * whole process (stack-notes §3).
 */
import { Deferred, Effect, Queue, Ref, Scope } from "effect"
import { Piscina } from "piscina"
import { GenerationError } from "../Errors.ts"
import type { ShardLoad, ShardLoadResult, StepPlan, StepResult } from "./StepProtocol.ts"

export interface ShardActor {
  readonly index: number
  readonly load: ShardLoad
  readonly step: (plan: StepPlan) => Effect.Effect<StepResult, GenerationError>
  readonly release: (rows: ReadonlyArray<number>) => Effect.Effect<void, GenerationError>
  /** Replaces the worker thread with a fresh one and reloads the shard (its KV cache starts empty). */
  readonly restart: Effect.Effect<ShardLoadResult, GenerationError>
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

const failure = (index: number, what: string) => (cause: unknown) =>
  new GenerationError({
    message: `shard ${index} ${what} failed: ${cause instanceof Error ? cause.message : String(cause)}`
  })

const openPool = (workerUrl: URL, index: number) =>
  new Piscina({
    filename: workerUrl.href,
    minThreads: 1,
    maxThreads: 1,
    // An idle worker must never be reaped: it holds the model.
    idleTimeout: Number.POSITIVE_INFINITY,
    concurrentTasksPerWorker: 1,
    workerData: { shard: index }
  })

export const makeShardActor = (
  index: number,
  workerUrl: URL,
  load: ShardLoad
): Effect.Effect<ShardActor, GenerationError, Scope.Scope> =>
  Effect.gen(function*() {
    const loadOn = (pool: Piscina) =>
      Effect.tryPromise({ try: () => pool.run(load, { name: "load" }) as Promise<ShardLoadResult>, catch: failure(index, "load") })

    const pool = yield* Ref.make(openPool(workerUrl, index))
    yield* Effect.addFinalizer(() => Ref.get(pool).pipe(Effect.flatMap((p) => Effect.promise(() => p.close()))))
    const loaded = yield* Ref.make(yield* loadOn(yield* Ref.get(pool)))

    // Set when the worker thread died: piscina replaces it with a fresh, unloaded thread, which must not be used
    // as if it still held the model and the KV cache.
    let died: string | undefined
    const dead = (cause: unknown) => {
      const text = cause instanceof Error ? cause.message : String(cause)
      if (/exit|terminat/i.test(text)) died = text
    }

    // The mailbox: one fiber, scoped to the actor, delivers messages to the worker one at a time.
    const mailbox = yield* Queue.bounded<Envelope>(64)
    yield* Effect.forkScoped(
      Effect.forever(
        Effect.gen(function*() {
          const { name, task, reply } = yield* Queue.take(mailbox)
          if (died !== undefined) {
            yield* Deferred.fail(reply, new GenerationError({ message: `shard ${index} worker thread died (${died})` }))
            return
          }
          const p = yield* Ref.get(pool)
          const exit = yield* Effect.exit(
            Effect.tryPromise({ try: () => p.run(task, { name }), catch: (cause) => (dead(cause), failure(index, name)(cause)) })
          )
          yield* Deferred.done(reply, exit)
        })
      )
    )

    const ask = <A>(name: Envelope["name"], task: unknown) =>
      Effect.gen(function*() {
        const reply = yield* Deferred.make<unknown, GenerationError>()
        yield* Queue.offer(mailbox, { name, task, reply })
        return (yield* Deferred.await(reply)) as A
      })

    const restart = Effect.gen(function*() {
      const old = yield* Ref.get(pool)
      yield* Effect.promise(() => old.close({ force: true }).catch(() => undefined))
      const fresh = openPool(workerUrl, index)
      yield* Ref.set(pool, fresh)
      const result = yield* loadOn(fresh)
      died = undefined
      yield* Ref.set(loaded, result)
      return result
    })

    return {
      index,
      load,
      step: (plan) => ask<StepResult>("step", plan),
      release: (rows) => ask<void>("release", rows),
      restart,
      threadIds: Ref.get(pool).pipe(Effect.map((p) => p.threads.map((t) => t.threadId))),
      crash: Effect.ignore(ask<void>("crash", undefined)),
      loaded: Ref.get(loaded)
    } satisfies ShardActor
  })
