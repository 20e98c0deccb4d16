/**
 * The lifecycle of one job as an xstate machine: queued -> prefilling -> decoding -> done | failed | cancelled |
 * expired. Only lifecycle events go through the machine; per-token progress lives on the scheduler's sequence
 * record (one machine event per token would cost more than the token).
 */
import { assign, setup } from "xstate"

export type JobEvent =
  | { readonly type: "ADMIT" }
  | { readonly type: "FIRST_TOKEN" }
  | { readonly type: "FINISH" }
  | { readonly type: "FAIL"; readonly error: string }
  | { readonly type: "CANCEL" }
  | { readonly type: "EXPIRE" }

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
        FINISH: "done",
        FAIL: { target: "failed", actions: "recordError" },
        CANCEL: "cancelled",
        EXPIRE: "expired"
      }
    },
    decoding: {
      on: { FINISH: "done", FAIL: { target: "failed", actions: "recordError" }, CANCEL: "cancelled", EXPIRE: "expired" }
    },
    done: { type: "final" },
    failed: { type: "final" },
    cancelled: { type: "final" },
    expired: { type: "final" }
  }
})

export type JobState = "queued" | "prefilling" | "decoding" | "done" | "failed" | "cancelled" | "expired"
