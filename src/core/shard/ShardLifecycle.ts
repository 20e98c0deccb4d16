/**
 * A shard worker's lifecycle as an xstate machine: loading -> ready -> (crashed -> restarting -> ready | failed).
 * The machine is the supervisor: it decides whether the worker may take steps (only while `ready`), waits a backoff
 * in `crashed`, brings the worker back in `restarting`, and gives up (`failed`, final) after too many crashes within a
 * window. What a route reports as a shard's state is the machine's.
 *
 * Nothing here knows what a worker is: `load` is the one worker-specific part (an actor the owner provides, with
 * `{ restart }` as input), and `LOST` says the worker went away. A thread in this process is one such worker; a remote
 * worker could run the same machine with `load` as connecting and `LOST` as a dropped connection.
 */
import { assign, createActor, fromPromise, setup } from "xstate"

export type ShardState = "loading" | "ready" | "crashed" | "restarting" | "failed"

/** When a crashed worker is brought back, and when the machine gives up. */
export interface RestartPolicy {
  /** Crashes within `windowMs` after which the shard stays `failed`. Default 3. */
  readonly maxCrashes?: number
  /** Default 60 s. */
  readonly windowMs?: number
  /** Time in `crashed` before the first restart; doubled for each further recent crash (at most 10 s). Default 100 ms. */
  readonly restartDelayMs?: number
}

/** A shard's lifecycle as reported (`/ready`). */
export interface ShardStatus {
  readonly index: number
  readonly state: ShardState
  /** Times the worker was brought back after a crash. */
  readonly restarts: number
  /** Why the worker last went away (or failed to load). */
  readonly lastError?: string
}

export type LifecycleEvent = { readonly type: "LOST"; readonly error: string }

interface Context {
  readonly index: number
  readonly maxCrashes: number
  readonly windowMs: number
  readonly restartDelayMs: number
  readonly now: () => number
  /** Times of the crashes within the window, oldest first. */
  readonly crashes: ReadonlyArray<number>
  readonly restarts: number
  readonly lastError: string | undefined
}

const MAX_DELAY_MS = 10_000

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error))

/** The recent crashes with one more at the current time. */
const withCrash = (context: Context) => {
  const t = context.now()
  return [...context.crashes.filter((at) => at > t - context.windowMs), t]
}

export const shardLifecycleMachine = setup({
  types: {
    context: {} as Context,
    input: {} as { readonly index: number; readonly policy?: RestartPolicy; readonly now?: () => number },
    events: {} as LifecycleEvent
  },
  actors: {
    // Provided by the owner (`machine.provide`); this one only says it was not.
    load: fromPromise<void, { readonly restart: boolean }>(() => Promise.reject(new Error("no load actor provided")))
  },
  guards: {
    crashedTooOften: ({ context }) => withCrash(context).length >= context.maxCrashes
  },
  actions: {
    recordLost: assign(({ context, event }) => ({
      crashes: withCrash(context),
      lastError: event.type === "LOST" ? event.error : context.lastError
    })),
    countRestart: assign({ restarts: ({ context }) => context.restarts + 1 })
  },
  delays: {
    backoff: ({ context }) => Math.min(MAX_DELAY_MS, context.restartDelayMs * 2 ** Math.max(0, context.crashes.length - 1))
  }
}).createMachine({
  id: "shard",
  initial: "loading",
  context: ({ input }) => ({
    index: input.index,
    maxCrashes: input.policy?.maxCrashes ?? 3,
    windowMs: input.policy?.windowMs ?? 60_000,
    restartDelayMs: input.policy?.restartDelayMs ?? 100,
    now: input.now ?? Date.now,
    crashes: [],
    restarts: 0,
    lastError: undefined
  }),
  states: {
    loading: {
      invoke: {
        src: "load",
        input: { restart: false },
        onDone: "ready",
        // A first load that fails is a configuration problem, not a crash to retry.
        onError: { target: "failed", actions: assign({ lastError: ({ event }) => messageOf(event.error) }) }
      }
    },
    ready: {
      on: {
        LOST: [
          { guard: "crashedTooOften", target: "failed", actions: "recordLost" },
          { target: "crashed", actions: "recordLost" }
        ]
      }
    },
    crashed: {
      after: { backoff: "restarting" }
    },
    restarting: {
      invoke: {
        src: "load",
        input: { restart: true },
        onDone: { target: "ready", actions: "countRestart" },
        // A fresh worker that cannot load counts as one more crash.
        onError: [
          { guard: "crashedTooOften", target: "failed", actions: assign(({ context, event }) => ({ crashes: withCrash(context), lastError: messageOf(event.error) })) },
          { target: "crashed", actions: assign(({ context, event }) => ({ crashes: withCrash(context), lastError: messageOf(event.error) })) }
        ]
      }
    },
    failed: { type: "final" }
  }
})

/** The owner's handle on a running lifecycle machine. */
export interface ShardLifecycle {
  readonly state: () => ShardState
  readonly status: () => ShardStatus
  /** The worker went away (thread exit, dropped connection); ignored unless `ready`. */
  readonly lost: (error: string) => void
  /** Calls `listener` with the current status and then on every change; returns the unsubscribe. */
  readonly watch: (listener: (status: ShardStatus) => void) => () => void
  readonly stop: () => void
}

export const startShardLifecycle = (
  machine: typeof shardLifecycleMachine,
  input: { readonly index: number; readonly policy?: RestartPolicy; readonly now?: () => number }
): ShardLifecycle => {
  const actor = createActor(machine, { input })
  const statusOf = (snapshot: ReturnType<typeof actor.getSnapshot>): ShardStatus => ({
    index: snapshot.context.index,
    state: snapshot.value as ShardState,
    restarts: snapshot.context.restarts,
    ...(snapshot.context.lastError === undefined ? {} : { lastError: snapshot.context.lastError })
  })
  actor.start()
  return {
    state: () => actor.getSnapshot().value as ShardState,
    status: () => statusOf(actor.getSnapshot()),
    lost: (error) => {
      // Only a ready worker can be lost: the tasks that were posted to a thread behind the one it died in report the
      // same death, which the machine is already handling.
      const snapshot = actor.getSnapshot()
      if (snapshot.status === "active" && snapshot.value === "ready") actor.send({ type: "LOST", error })
    },
    watch: (listener) => {
      listener(statusOf(actor.getSnapshot()))
      const subscription = actor.subscribe((snapshot) => listener(statusOf(snapshot)))
      return () => subscription.unsubscribe()
    },
    stop: () => actor.stop()
  }
}
