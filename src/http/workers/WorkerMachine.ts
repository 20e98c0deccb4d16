/**
 * The lifecycle of one remote worker as an xstate machine: connecting -> online (waiting for jobs) -> busy
 * (running jobs) -> offline (stopped calling for `--worker-timeout`). What the endpoint details and the
 * `chorus:workers` gauge report is read from it, and only an `online`/`busy` worker is given jobs.
 *
 * @since 0.2.0
 */
import { createActor, setup } from "xstate"

export type WorkerEvent =
  | { readonly type: "POLL" } // asked for jobs: it is alive and has free slots
  | { readonly type: "ASSIGNED" } // was given at least one job
  | { readonly type: "IDLE" } // its last running job ended
  | { readonly type: "TIMEOUT" } // silent for longer than the worker timeout

export const workerMachine = setup({ types: { events: {} as WorkerEvent } }).createMachine({
  id: "worker",
  initial: "connecting",
  states: {
    connecting: { on: { POLL: "online", ASSIGNED: "busy", TIMEOUT: "offline" } },
    online: { on: { ASSIGNED: "busy", TIMEOUT: "offline" } },
    busy: { on: { IDLE: "online", TIMEOUT: "offline" } },
    offline: { on: { POLL: "online" } }
  }
})

export type WorkerState = "connecting" | "online" | "busy" | "offline"
export const WORKER_STATES: ReadonlyArray<WorkerState> = ["connecting", "online", "busy", "offline"]

/** AIME's names (`waiting` / `processing` / `offline`) for the endpoint details. */
export const wireWorkerState = (s: WorkerState): string => (s === "busy" ? "processing" : s === "offline" ? "offline" : "waiting")

export interface WorkerActor {
  readonly state: () => WorkerState
  /** Sends `event` if the machine takes it now; false otherwise (state unchanged). */
  readonly send: (event: WorkerEvent) => boolean
}

export const startWorkerActor = (): WorkerActor => {
  const actor = createActor(workerMachine).start()
  return {
    state: () => actor.getSnapshot().value as WorkerState,
    send: (event) => {
      const snapshot = actor.getSnapshot()
      if (!snapshot.can(event)) return false
      actor.send(event)
      return true
    }
  }
}
