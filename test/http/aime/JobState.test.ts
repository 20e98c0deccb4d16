// AIME's reported job state comes from the engine's job machine: the states a poller sees follow the machine's, a
// cancel after the end is refused by the machine and changes nothing. Real engine (bench adapter), real HTTP.
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../../src/adapters/bench/BenchAdapter.ts"
import type { JobState as MachineState } from "../../../src/core/JobMachine.ts"
import { type EngineView, makeJobTable } from "../../../src/http/aime/Jobs.ts"
import { startServer, type TestServer } from "../../support/server.ts"

const EP = "llama3_chat"
type Json = Record<string, any>

const call = async (url: string, body?: unknown): Promise<{ status: number; body: Json }> => {
  const r = await fetch(url, {
    method: body === undefined ? "GET" : "POST",
    ...(body === undefined ? {} : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
  })
  return { status: r.status, body: (await r.json()) as Json }
}

/** What AIME must report for each machine state (before the result is handed out). */
const aimeName: Record<MachineState, string> = {
  queued: "queued",
  prefilling: "processing",
  decoding: "processing",
  done: "done",
  failed: "done",
  cancelled: "canceled",
  expired: "lapsed"
}

const dedupe = <A>(xs: ReadonlyArray<A>) => xs.filter((x, i) => i === 0 || xs[i - 1] !== x)

describe("AIME job state from the job machine", () => {
  let server: TestServer
  beforeAll(async () => {
    // One slot, so a second job waits in the queue while the first one runs.
    server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 5 }, engine: { maxNumSeqs: 1 } })
  })
  afterAll(async () => {
    await server?.close()
  })

  it("every poll reports the machine's state at that moment; a cancel after done is refused by the machine", async () => {
    const engine = server.engine
    const view: EngineView = { queuePosition: engine.queuePosition, maxBatch: 1 }
    const out = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const table = yield* makeJobTable({ epVersion: 3, resultLifetimeMs: 60_000, workerName: "w", workerVersion: "v" })
          const info = { owner: undefined, maxTokens: 40, modelName: "m", maxSeqLen: 100 }
          const submit = (maxTokens: number) => engine.submit({ input: { type: "text", text: "Tell me" }, maxTokens, ignoreEos: true })
          const first = yield* table.start(yield* submit(40), info)
          const job = yield* table.start(yield* submit(5), info)
          // From here on the first job holds the only slot, and the second is first in the queue.
          while (first.machine!.state() === "queued") yield* Effect.sleep("1 millis")
          const machineStates: Array<MachineState> = []
          job.machine!.watch((s) => machineStates.push(s))
          const pairs: Array<{ machine: MachineState; polled: string; position: number | undefined }> = []
          for (let i = 0; i < 5000; i++) {
            const machine = job.machine!.state()
            const answer = (yield* table.poll(job.id, view))!
            pairs.push({ machine, polled: answer.state, position: "progress" in answer ? answer.progress.queue_position : undefined })
            if (answer.state === "done") break
            yield* Effect.sleep("2 millis")
          }
          const cancelled = yield* table.cancel(job.id)
          return { pairs, machineStates, cancelled, after: job.machine!.state(), poll: yield* table.poll(job.id, view) }
        })
      )
    )
    expect(out.machineStates).toEqual(["queued", "prefilling", "decoding", "done"])
    for (const { machine, polled, position } of out.pairs) {
      // The machine may move on between reading it and polling, never backwards.
      const order = ["queued", "processing", "done"]
      expect(order.indexOf(polled)).toBeGreaterThanOrEqual(order.indexOf(aimeName[machine]))
      expect(order.indexOf(polled) - order.indexOf(aimeName[machine])).toBeLessThanOrEqual(1)
      if (polled === "queued") expect(position).toBe(1)
      if (polled === "processing") expect(position).toBe(0)
    }
    expect(dedupe(out.pairs.map((p) => p.polled))).toEqual(["queued", "processing", "done"])
    expect(out.cancelled).toBe("done")
    expect(out.after).toBe("done")
    expect(out.poll).toEqual({ state: "done", result: undefined })
  })

  it("over HTTP: a waiting job polls queued (position 1), then processing, then done; cancel after done is a no-op", async () => {
    const long = await call(`${server.url}/${EP}`, { prompt_input: "Go on", max_gen_tokens: 60, wait_for_result: false })
    const short = await call(`${server.url}/${EP}`, { prompt_input: "Short", max_gen_tokens: 4, wait_for_result: false })
    expect([long.status, short.status]).toEqual([200, 200])
    const jobId: string = short.body.job_id
    const seen: Array<string> = []
    let result: Json | undefined
    for (let i = 0; i < 3000 && result === undefined; i++) {
      const p = await call(`${server.url}/${EP}/progress?job_id=${encodeURIComponent(jobId)}`)
      expect(p.status).toBe(200)
      seen.push(p.body.job_state)
      if (p.body.job_state === "queued") expect(p.body.progress.queue_position).toBe(1)
      if (p.body.job_state === "done") result = p.body.job_result
      else await new Promise((r) => setTimeout(r, 3))
    }
    expect(dedupe(seen)).toEqual(["queued", "processing", "done"])
    expect(result?.num_generated_tokens).toBe(4)
    const cancel = await call(`${server.url}/${EP}/cancel`, { job_id: jobId })
    expect(cancel).toEqual({ status: 200, body: { success: true, job_id: jobId, ep_version: 3, job_state: "done" } })
    const again = await call(`${server.url}/${EP}/progress?job_id=${encodeURIComponent(jobId)}`)
    expect(again.body).toEqual({ success: true, job_id: jobId, ep_version: 3, job_state: "done" })
  })
})
