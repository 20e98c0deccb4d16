// The job machine on its own (what it takes and refuses), and as the engine drives it for real requests on the
// bench adapter: the states a request's machine goes through, the queue position it decides, a cancel it refuses.
import { Effect, Fiber, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
import { type JobState, startJob, type JobView } from "../../src/core/JobMachine.ts"
import type { GenerationEvent } from "../../src/core/Request.ts"
import { startServer, type TestServer } from "../support/server.ts"

const recorded = (job: JobView) => {
  const states: Array<JobState> = []
  job.watch((s) => states.push(s))
  return states
}

describe("job machine", () => {
  it("goes queued -> prefilling -> decoding -> done and refuses every event after the end", () => {
    const job = startJob("a")
    const states = recorded(job)
    expect(job.send({ type: "ADMIT" })).toBe(true)
    expect(job.send({ type: "FIRST_TOKEN" })).toBe(true)
    expect(job.cancellable()).toBe(true)
    expect(job.send({ type: "FINISH" })).toBe(true)
    expect(job.ended()).toBe(true)
    expect(job.cancellable()).toBe(false)
    for (const event of [{ type: "CANCEL" }, { type: "FAIL", error: "late" }, { type: "EXPIRE" }, { type: "FINISH" }] as const) {
      expect(job.send(event)).toBe(false)
    }
    expect(states).toEqual(["queued", "prefilling", "decoding", "done"])
    expect(job.error()).toBeUndefined()
  })

  it("refuses events out of order and keeps its state", () => {
    const job = startJob("b")
    expect(job.send({ type: "FIRST_TOKEN" })).toBe(false)
    expect(job.send({ type: "FINISH" })).toBe(false)
    expect(job.state()).toBe("queued")
    expect(job.send({ type: "ADMIT" })).toBe(true)
    expect(job.send({ type: "ADMIT" })).toBe(false)
    expect(job.state()).toBe("prefilling")
  })

  it("each end is final: failed keeps its message, cancelled and expired take nothing more", () => {
    const failed = startJob("c")
    failed.send({ type: "ADMIT" })
    expect(failed.send({ type: "FAIL", error: "shard 0 worker thread died" })).toBe(true)
    expect(failed.send({ type: "FAIL", error: "again" })).toBe(false)
    expect([failed.state(), failed.error()]).toEqual(["failed", "shard 0 worker thread died"])
    const cancelled = startJob("d")
    expect(cancelled.send({ type: "CANCEL" })).toBe(true)
    expect(cancelled.send({ type: "ADMIT" })).toBe(false)
    expect(cancelled.state()).toBe("cancelled")
    const expired = startJob("e")
    expired.send({ type: "ADMIT" })
    expect(expired.send({ type: "EXPIRE" })).toBe(true)
    expect(expired.send({ type: "CANCEL" })).toBe(false)
    expect(expired.state()).toBe("expired")
    // A watcher that comes after the end still hears the final state.
    expect(recorded(expired)).toEqual(["expired"])
  })
})

describe("job machines driven by the engine", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 5 }, engine: { maxNumSeqs: 1 } })
  })
  afterAll(async () => {
    await server?.close()
  })

  /** Submits a request and returns its machine (from the first event) and the fiber draining the rest. */
  const submit = (maxTokens: number) =>
    Effect.gen(function*() {
      const engine = server.engine
      const events = yield* engine.submit({ input: { type: "text", text: "Tell me" }, maxTokens, ignoreEos: true })
      const seen: Array<GenerationEvent["_tag"]> = []
      let job: JobView | undefined
      let states: Array<JobState> = []
      const fiber = yield* Effect.forkChild(
        Stream.runForEach(events, (e) =>
          Effect.sync(() => {
            seen.push(e._tag)
            if (e._tag === "Queued") {
              job = e.job
              states = recorded(e.job)
            }
          })
        )
      )
      while (job === undefined) yield* Effect.sleep("1 millis")
      return { job, states: () => states, seen, fiber }
    })

  it("every request's machine runs queued -> prefilling -> decoding -> done; a waiting one's queue position is the machine's", async () => {
    const out = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const first = yield* submit(40)
          const second = yield* submit(3)
          // One slot: the second waits while the first decodes, and the engine says so from its machine.
          while (first.job.state() !== "decoding") yield* Effect.sleep("1 millis")
          const secondState = second.job.state()
          const position = server.engine.queuePosition(Number(second.job.jobId))
          const live = server.engine.job(Number(second.job.jobId))
          yield* Fiber.join(first.fiber)
          yield* Fiber.join(second.fiber)
          return {
            first: first.states(),
            second: second.states(),
            secondState,
            position,
            same: live === second.job,
            after: server.engine.job(Number(second.job.jobId)),
            afterPosition: server.engine.queuePosition(Number(second.job.jobId)),
            seen: second.seen
          }
        })
      )
    )
    expect(out.first).toEqual(["queued", "prefilling", "decoding", "done"])
    expect(out.second).toEqual(["queued", "prefilling", "decoding", "done"])
    expect(out.secondState).toBe("queued")
    expect(out.position).toBe(1)
    expect(out.same).toBe(true)
    // An ended job is no longer the engine's.
    expect(out.after).toBeUndefined()
    expect(out.afterPosition).toBe(-1)
    expect(out.seen).toEqual(["Queued", "Started", "Token", "Token", "Token", "Finished"])
  })

  it("a consumer that goes away cancels a running job; one that goes away after the end cancels nothing", async () => {
    const out = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const running = yield* submit(4000)
          while (running.job.state() !== "decoding") yield* Effect.sleep("1 millis")
          yield* Fiber.interrupt(running.fiber)
          const ended = yield* submit(2)
          yield* Fiber.join(ended.fiber)
          // The stream is over; interrupting its (finished) consumer must leave the machine in done.
          yield* Fiber.interrupt(ended.fiber)
          return { running: running.states(), ended: ended.states(), cancellable: ended.job.cancellable() }
        })
      )
    )
    expect(out.running).toEqual(["queued", "prefilling", "decoding", "cancelled"])
    expect(out.ended).toEqual(["queued", "prefilling", "decoding", "done"])
    expect(out.cancellable).toBe(false)
  })
})
