/**
 * The lifecycle of one job as an xstate machine: queued -> prefilling -> decoding -> done | failed | cancelled |
 * expired. The engine sends every lifecycle event through the machine and obeys its answer (a cancel after the end
 * is refused, a final state is entered once); what routes report as a job's state is read from it. Per-token
 * progress lives on the scheduler's sequence record (one machine event per token would cost more than the token).
 */
import { assign, createActor, setup } from "xstate"

export type JobEvent =
  | { readonly type: "ADMIT" }
  | { readonly type: "FIRST_TOKEN" }
  | { readonly type: "FINISH" }
  | { readonly type: "FAIL"; readonly error: string }
  | { readonly type: "CANCEL" }
  | { readonly type: "EXPIRE" }
  /** Back to the queue: a remote worker running the job went offline (the job is handed to the next worker). */
  | { readonly type: "REQUEUE" }

export const jobMachine = setup({
  types: {
    context: {} as { readonly jobId: string; readonly error: string | undefined },
    input: {} as { readonly jobId: string },
    events: {} as JobEvent
  },
  actions: {
    recordError: assign({ error: ({ event }) => (event.type === "FAIL" ? event.error : undefined) })
  }
}).createMachine({
  id: "job",
  initial: "queued",
  context: ({ input }) => ({ jobId: input.jobId, error: undefined }),
  states: {
    queued: {
      on: { ADMIT: "prefilling", FAIL: { target: "failed", actions: "recordError" }, CANCEL: "cancelled", EXPIRE: "expired" }
    },
    prefilling: {
      on: {
        FIRST_TOKEN: "decoding",
        REQUEUE: "queued",
        FINISH: "done",
        FAIL: { target: "failed", actions: "recordError" },
        CANCEL: "cancelled",
        EXPIRE: "expired"
      }
    },
    decoding: {
      on: { REQUEUE: "queued", FINISH: "done", FAIL: { target: "failed", actions: "recordError" }, CANCEL: "cancelled", EXPIRE: "expired" }
    },
    done: { type: "final" },
    failed: { type: "final" },
    cancelled: { type: "final" },
    expired: { type: "final" }
  }
})

export type JobState = "queued" | "prefilling" | "decoding" | "done" | "failed" | "cancelled" | "expired"

/** What a job's consumers (protocol routes) may see of its machine: they read and watch, only the engine sends. */
export interface JobView {
  readonly jobId: string
  /** The machine's current state. */
  readonly state: () => JobState
  /** Whether the machine has reached one of its final states. */
  readonly ended: () => boolean
  /** Whether the machine would take a CANCEL now (false once the job ended). */
  readonly cancellable: () => boolean
  /** The failure message once the job `failed`. */
  readonly error: () => string | undefined
  /** Calls `listener` with the current state and then every state the machine enters; returns the unsubscribe. */
  readonly watch: (listener: (state: JobState) => void) => () => void
}

/** The engine's handle on a running job machine. */
export interface Job extends JobView {
  /** Sends `event` if the machine takes it in its current state; false when it refuses (the state is unchanged). */
  readonly send: (event: JobEvent) => boolean
}

export const startJob = (jobId: string): Job => {
  const actor = createActor(jobMachine, { input: { jobId } }).start()
  const state = () => actor.getSnapshot().value as JobState
  return {
    jobId,
    state,
    ended: () => actor.getSnapshot().status === "done",
    cancellable: () => actor.getSnapshot().can({ type: "CANCEL" }),
    error: () => actor.getSnapshot().context.error,
    watch: (listener) => {
      listener(state())
      // A final state stops the actor, so later subscribers would hear nothing: they got it above.
      const subscription = actor.subscribe((snapshot) => listener(snapshot.value as JobState))
      return () => subscription.unsubscribe()
    },
    send: (event) => {
      const snapshot = actor.getSnapshot()
      // xstate ignores an event with no transition; asking first lets the caller act on the refusal.
      if (snapshot.status !== "active" || !snapshot.can(event)) return false
      actor.send(event)
      return true
    }
  }
}
