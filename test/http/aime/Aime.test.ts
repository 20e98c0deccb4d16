// The AIME-compatible routes against a real in-process server on the bench adapter (real tokenizer, engine and
// streaming; no model math): the calls AIME's JS/Python clients and benchmark make, their answers and errors.
import { Effect, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../../src/adapters/bench/BenchAdapter.ts"
import { startJob } from "../../../src/core/JobMachine.ts"
import type { GenerationEvent } from "../../../src/core/Request.ts"
import { makeJobTable } from "../../../src/http/aime/Jobs.ts"
import { startServer, type TestServer } from "../../support/server.ts"

const EP = "llama3_chat"
const NO_CREDENTIALS = "API Key missing and client session authentication key not registered in API Server"

type Json = Record<string, any>

const call = async (url: string, init?: { body?: unknown; method?: string }): Promise<{ status: number; body: Json }> => {
  const r = await fetch(url, {
    method: init?.method ?? (init?.body === undefined ? "GET" : "POST"),
    ...(init?.body === undefined ? {} : { headers: { "content-type": "application/json" }, body: JSON.stringify(init.body) })
  })
  return { status: r.status, body: (await r.json()) as Json }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const chat = JSON.stringify([{ role: "system", content: "You are terse." }, { role: "user", content: "Tell a story" }])

describe("AIME API (server with API keys)", () => {
  let server: TestServer
  let base: string
  beforeAll(async () => {
    server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 2 }, apiKeys: ["k1", "k2"] })
    base = server.url
  })
  afterAll(async () => {
    await server?.close()
  })

  const poll = (jobId: string, key = "k1") => call(`${base}/${EP}/progress?key=${key}&job_id=${encodeURIComponent(jobId)}`)

  it("wait_for_result: false returns a job id at once; polls show the text growing, then the result once", async () => {
    const submitted = await call(`${base}/${EP}`, {
      body: { key: "k1", client_session_auth_key: null, chat_context: chat, prompt_input: "Once upon a time", max_gen_tokens: 300, wait_for_result: false }
    })
    expect(submitted.status).toBe(200)
    expect(Object.keys(submitted.body).sort()).toEqual(["ep_version", "job_id", "success"])
    expect(submitted.body.success).toBe(true)
    expect(submitted.body.ep_version).toBe(3)
    const jobId: string = submitted.body.job_id
    expect(jobId).toMatch(/^JID[A-Za-z0-9_-]{22}$/)

    const texts: Array<string> = []
    let result: Json | undefined
    for (let i = 0; i < 2000 && result === undefined; i++) {
      const p = await poll(jobId)
      expect(p.status).toBe(200)
      expect(p.body.success).toBe(true)
      if (p.body.job_state === "done") {
        expect(p.body.progress).toBeUndefined()
        result = p.body.job_result
      } else {
        expect(["queued", "processing"]).toContain(p.body.job_state)
        const progress = p.body.progress
        expect(progress.num_workers_online).toBe(1)
        if (p.body.job_state === "processing") {
          expect(progress.queue_position).toBe(0)
          expect(progress.progress).toBe(progress.progress_data.num_generated_tokens)
          // Admitted jobs count as processing before their prompt is through (no tokens, no context yet).
          if (progress.progress > 0) expect(progress.progress_data.current_context_length).toBeGreaterThan(progress.progress)
          texts.push(progress.progress_data.text)
        } else {
          expect(progress.progress_data).toEqual({})
          expect(progress.queue_position).toBeGreaterThanOrEqual(1)
        }
        await sleep(15)
      }
    }
    expect(result).toBeDefined()
    const distinct = [...new Set(texts.filter((t) => t !== ""))]
    expect(distinct.length).toBeGreaterThanOrEqual(3)
    // Cumulative, not deltas: each text extends the previous one.
    for (let i = 1; i < distinct.length; i++) expect(distinct[i]!.startsWith(distinct[i - 1]!)).toBe(true)
    expect(result!.text.startsWith(distinct[distinct.length - 1]!)).toBe(true)
    expect(result!.success).toBe(true)
    expect(result!.job_id).toBe(jobId)
    expect(result!.num_generated_tokens).toBeGreaterThan(0)
    expect(result!.num_generated_tokens).toBeLessThanOrEqual(300)
    expect(result!.current_context_length).toBe(result!.prompt_length + result!.num_generated_tokens)
    expect(result!.model_name).toBe("chorus-bench")

    const later = await poll(jobId)
    expect(later.status).toBe(200)
    expect(later.body).toEqual({ success: true, job_id: jobId, ep_version: 3, job_state: "done" })
  })

  it("wait_for_result: true (the default) blocks and returns the final result object", async () => {
    const r = await call(`${base}/${EP}`, { body: { key: "k2", prompt_input: "Hi", max_gen_tokens: 40, temperature: 0 } })
    expect(r.status).toBe(200)
    const b = r.body
    for (const field of ["success", "job_id", "ep_version", "text", "num_generated_tokens", "model_name", "max_seq_len", "current_context_length", "prompt_length", "start_time", "start_time_compute", "result_received_time", "total_duration", "compute_duration"]) {
      expect(b, field).toHaveProperty(field)
    }
    expect(b.error).toBeUndefined()
    expect(b.num_generated_tokens).toBeGreaterThan(0)
    expect(b.num_generated_tokens).toBeLessThanOrEqual(40)
    expect(b.max_seq_len).toBe(8192)
    expect(b.text.length).toBeGreaterThan(0)
    expect(b.start_time).toBeGreaterThan(Date.now() / 1000 - 60)
    expect(b.start_time_compute).toBeGreaterThanOrEqual(b.start_time)
    expect(b.result_received_time).toBeGreaterThanOrEqual(b.start_time_compute)
    expect(b.total_duration).toBeGreaterThanOrEqual(b.compute_duration)
    // A blocking request has taken the result: a poll sees the job done without it.
    const p = await poll(b.job_id, "k2")
    expect(p.body).toEqual({ success: true, job_id: b.job_id, ep_version: 3, job_state: "done" })
  })

  it("GET submission with query parameters (numbers and booleans coerced)", async () => {
    const r = await call(`${base}/${EP}?key=k1&prompt_input=Hello&max_gen_tokens=5&temperature=0&top_k=1&top_p=1&wait_for_result=true`)
    expect(r.status).toBe(200)
    expect(r.body.success).toBe(true)
    expect(r.body.num_generated_tokens).toBeLessThanOrEqual(5)
  })

  it("login issues a session key that works for submit and progress; another key's poll gets 402", async () => {
    const login = await call(`${base}/${EP}/login?key=k1&user=aime&version=test`, { method: "POST" })
    expect(login.status).toBe(200)
    expect(login.body.success).toBe(true)
    expect(login.body.ep_version).toBe(3)
    expect(login.body.key).toBe("k1")
    const session: string = login.body.client_session_auth_key
    expect(session).toMatch(/^[0-9a-f-]{36}$/)

    const submitted = await call(`${base}/${EP}`, { body: { client_session_auth_key: session, prompt_input: "Hi", max_gen_tokens: 200, wait_for_result: false } })
    expect(submitted.status).toBe(200)
    const jobId: string = submitted.body.job_id
    const bySession = await call(`${base}/${EP}/progress`, { body: { client_session_auth_key: session, job_id: jobId } })
    expect(bySession.status).toBe(200)
    // The session maps to k1: polling with k1 works too (what model_api.js does).
    expect((await poll(jobId, "k1")).status).toBe(200)
    const other = await poll(jobId, "k2")
    expect(other.status).toBe(402)
    expect(other.body).toEqual({ success: false, error: [`Client has no active request with this job id ${jobId}`], ep_version: 3 })

    const bad = await call(`${base}/${EP}/login?key=nope`)
    expect(bad.status).toBe(200)
    expect(bad.body).toEqual({ success: false, error: "Key not valid" })
    await call(`${base}/${EP}/cancel?key=k1&job_id=${encodeURIComponent(jobId)}`, { method: "POST" })
  })

  it("a bad key or no credentials: 401 with the reference's messages", async () => {
    const bad = await call(`${base}/${EP}`, { body: { key: "nope", prompt_input: "Hi" } })
    expect(bad.status).toBe(401)
    expect(bad.body).toEqual({ success: false, error: ["Key not valid"], ep_version: 3 })
    const none = await call(`${base}/${EP}`, { body: { prompt_input: "Hi", client_session_auth_key: "not-registered" } })
    expect(none.status).toBe(401)
    expect(none.body).toEqual({ success: false, error: [NO_CREDENTIALS], ep_version: 3 })
  })

  it("invalid parameters: 400 with one message per problem", async () => {
    const temperature = await call(`${base}/${EP}`, { body: { key: "k1", prompt_input: "Hi", temperature: 1.5 } })
    expect(temperature.status).toBe(400)
    expect(temperature.body).toEqual({ success: false, error: ["temperature: Expected a value between 0 and 1, got 1.5"], ep_version: 3 })

    const two = await call(`${base}/${EP}`, { body: { key: "k1", prompt_input: "Hi", top_k: 0, max_gen_tokens: "many" } })
    expect(two.status).toBe(400)
    expect(two.body.error).toEqual(["top_k: Expected a value between 1 and 1000, got 0", "max_gen_tokens: Expected number, got \"many\""])

    const unknown = await call(`${base}/${EP}`, { body: { key: "k1", prompt_input: "Hi", seed: 1, stream: true } })
    expect(unknown.status).toBe(400)
    expect(unknown.body).toEqual({ success: false, error: ["Invalid input parameter(s): seed, stream"], ep_version: 3 })

    const notJson = await call(`${base}/${EP}`, { body: { key: "k1", chat_context: "[{role: user}" } })
    expect(notJson.status).toBe(400)
    expect(notJson.body.error).toHaveLength(1)
    expect(notJson.body.error[0]).toMatch(/^chat_context: expected a JSON array of \{role, content\} messages, got invalid JSON/)

    const badRole = await call(`${base}/${EP}`, { body: { key: "k1", chat_context: JSON.stringify([{ role: "robot", content: "x" }]) } })
    expect(badRole.status).toBe(400)
    expect(badRole.body.error[0]).toMatch(/^chat_context\[0\]\.role: /)

    const both = await call(`${base}/${EP}`, { body: { key: "k1", chat_context: chat, text_context: "Once" } })
    expect(both.status).toBe(400)
    expect(both.body.error).toEqual(["text_context: cannot be combined with a non-empty chat_context"])

    const nothing = await call(`${base}/${EP}`, { body: { key: "k1" } })
    expect(nothing.status).toBe(400)
    expect(nothing.body.error[0]).toMatch(/^chat_context: no input given/)
  })

  it("progress without job_id or with an unknown one: 402", async () => {
    const missing = await call(`${base}/${EP}/progress?key=k1`)
    expect(missing.status).toBe(402)
    expect(missing.body).toEqual({ success: false, error: ["No job_id given"], ep_version: 3 })
    const unknown = await poll("nope#1")
    expect(unknown.status).toBe(402)
    expect(unknown.body.error).toEqual(["Client has no active request with this job id nope#1"])
  })

  it("cancel stops the generation: job_state canceled, no more tokens", async () => {
    const submitted = await call(`${base}/${EP}`, { body: { key: "k1", prompt_input: "Go on forever", max_gen_tokens: 16384, wait_for_result: false } })
    expect(submitted.status).toBe(200)
    const jobId: string = submitted.body.job_id
    let p = await poll(jobId)
    while (p.body.job_state !== "processing" || p.body.progress.progress < 5) {
      await sleep(10)
      p = await poll(jobId)
    }
    // Another key may not cancel it.
    const foreign = await call(`${base}/${EP}/cancel?key=k2&job_id=${encodeURIComponent(jobId)}`, { method: "POST" })
    expect(foreign.status).toBe(402)
    const canceled = await call(`${base}/${EP}/cancel`, { body: { key: "k1", job_id: jobId } })
    expect(canceled.status).toBe(200)
    expect(canceled.body).toEqual({ success: true, job_id: jobId, ep_version: 3, job_state: "canceled" })
    const first = await poll(jobId)
    expect(first.status).toBe(200)
    expect(first.body.job_state).toBe("canceled")
    await sleep(100)
    const second = await poll(jobId)
    expect(second.body.job_state).toBe("canceled")
    expect(second.body.progress.progress).toBe(first.body.progress.progress)
    expect(second.body.progress.progress).toBeLessThan(1000)
    // The engine dropped the sequence.
    await sleep(50)
    const stats = await Effect.runPromise(server.engine.stats)
    expect(stats.numRunning + stats.numWaiting).toBe(0)
  })

  it("endpoint details, the /api/<ep> alias, endpoint list and validate_key", async () => {
    const details = await call(`${base}/api/endpoints/${EP}`)
    expect(details.status).toBe(200)
    const d = details.body
    expect(d.name).toBe(EP)
    expect(d.title).toBe("Llama 3 Chat")
    expect(d.category).toBe("chat")
    expect(d.version).toBe(3)
    expect(d.http_methods).toEqual(["GET", "POST"])
    expect(d.num_active_workers).toBe(1)
    expect(d.num_workers).toBe(1)
    expect(d.max_queue_length).toBe(1024)
    expect(d.workers).toHaveLength(1)
    expect(d.workers[0].name).toBe("chorus")
    expect(d.workers[0].max_batch_size).toBe(16)
    expect(d.workers[0].model.label).toBe("chorus-bench")
    expect(["waiting", "processing"]).toContain(d.workers[0].state)
    expect(Object.keys(d.parameter_description.input)).toEqual(expect.arrayContaining(["chat_context", "prompt_input", "top_k", "top_p", "temperature", "max_gen_tokens", "key", "client_session_auth_key", "wait_for_result"]))
    expect(d.parameter_description.input.temperature).toEqual({ type: "float", minimum: 0, maximum: 1, default: 0.8 })
    expect(Object.keys(d.parameter_description.progress.OUTPUTS).sort()).toEqual(["current_context_length", "num_generated_tokens", "text"])
    const alias = await call(`${base}/api/${EP}`, { method: "POST" })
    expect(alias.status).toBe(200)
    expect({ ...alias.body, free_queue_slots: 0, workers: [] }).toEqual({ ...d, free_queue_slots: 0, workers: [] })

    expect((await call(`${base}/api/endpoints`)).body).toEqual({ endpoints: [EP] })
    expect((await call(`${base}/api/endpoints?key=k2`)).body).toEqual({ endpoints: [EP] })
    const badList = await call(`${base}/api/endpoints?key=nope`)
    expect(badList.status).toBe(401)
    expect(badList.body).toEqual({ error: "Key not valid" })

    // model_api.js posts the literal body `false` and puts the key in the query.
    const valid = await fetch(`${base}/api/validate_key?key=k1&version=JavaScript%20AIME%20API%20Client%20Interface%200.8.5`, { method: "POST", body: "false" })
    expect(valid.status).toBe(200)
    expect(await valid.json()).toEqual({ success: true, error: null })
    const invalid = await call(`${base}/api/validate_key?key=nope`)
    expect(invalid.status).toBe(200)
    expect(invalid.body).toEqual({ success: false, error: "Key not valid" })
  })
})

describe("AIME API (open server, short deadline, tiny queue)", () => {
  let server: TestServer
  let base: string
  beforeAll(async () => {
    server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 5 }, engine: { timeoutMs: 600, maxNumSeqs: 1, maxQueue: 1 } })
    base = server.url
  })
  afterAll(async () => {
    await server?.close()
  })

  it("no keys configured: any or no key is accepted", async () => {
    expect((await call(`${base}/api/validate_key`)).body).toEqual({ success: true, error: null })
    expect((await call(`${base}/api/validate_key?key=anything`)).body).toEqual({ success: true, error: null })
    const login = await call(`${base}/${EP}/login`)
    expect(login.body.success).toBe(true)
    expect(login.body.key).toBe(null)
  })

  it("a job past the engine deadline lapses: poller 400 lapsed, blocking 400; a full queue answers 400", async () => {
    const progressOf = (id: string) => call(`${base}/${EP}/progress?job_id=${encodeURIComponent(id)}`)
    const running = await call(`${base}/${EP}`, { body: { prompt_input: "Go on", max_gen_tokens: 16384, wait_for_result: false } })
    expect(running.status).toBe(200)
    const runningId: string = running.body.job_id
    while ((await progressOf(runningId)).body.job_state !== "processing") await sleep(5)
    // One slot: the next job waits behind the first, and the queue (length 1) is then full.
    const waiting = await call(`${base}/${EP}`, { body: { prompt_input: "Go on", max_gen_tokens: 16384, wait_for_result: false } })
    expect(waiting.status).toBe(200)
    const waitingId: string = waiting.body.job_id
    const queued = await progressOf(waitingId)
    expect(queued.body.job_state).toBe("queued")
    expect(queued.body.progress.queue_position).toBe(1)
    expect(queued.body.progress.progress).toBe(0)
    expect(queued.body.progress.progress_data).toEqual({})
    const full = await call(`${base}/${EP}`, { body: { prompt_input: "Hi", wait_for_result: false } })
    expect(full.status).toBe(400)
    expect(full.body).toEqual({ success: false, error: "Job queue reached max length 1!", ep_version: 3 })

    for (const id of [runningId, waitingId]) {
      let p = await progressOf(id)
      while (p.status === 200) {
        expect(["queued", "processing"]).toContain(p.body.job_state)
        await sleep(20)
        p = await progressOf(id)
      }
      expect(p.status).toBe(400)
      expect(p.body.success).toBe(false)
      expect(p.body.ep_version).toBe(3)
      expect(p.body.error).toBe(`Job ${id} on ${EP} lapsed!`)
      expect(p.body.job_state).toBe("lapsed")
      expect(p.body.progress.job_id).toBe(id)
    }

    const started = performance.now()
    const blocking = await call(`${base}/${EP}`, { body: { prompt_input: "Go on", max_gen_tokens: 16384 } })
    expect(performance.now() - started).toBeLessThan(5000)
    expect(blocking.status).toBe(400)
    expect(Object.keys(blocking.body).sort()).toEqual(["ep_version", "error", "success"])
    expect(blocking.body.success).toBe(false)
    expect(blocking.body.error).toMatch(new RegExp(`^Job JID[A-Za-z0-9_-]{22} on ${EP} lapsed!$`))
  })
})

describe("AIME job table", () => {
  it("forgets an ended job after the result lifetime", async () => {
    // The engine drives a job's machine as it runs; here the job has already ended when the table reads it.
    const machine = startJob("1")
    for (const type of ["ADMIT", "FIRST_TOKEN", "FINISH"] as const) machine.send({ type })
    const events: ReadonlyArray<GenerationEvent> = [
      { _tag: "Queued", requestId: 1, job: machine },
      { _tag: "Started", promptTokens: 3 },
      { _tag: "Token", tokenId: 1, text: "a" },
      { _tag: "Finished", finishReason: "stop", stopReason: "eos", text: "b", usage: { promptTokens: 3, completionTokens: 1 } }
    ]
    const seen = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function*() {
          const table = yield* makeJobTable({ epVersion: 3, resultLifetimeMs: 50, workerName: "w", workerVersion: "v" })
          const job = yield* table.start(Stream.fromIterable(events), { owner: undefined, maxTokens: 5, modelName: "m", maxSeqLen: 10 })
          const outcome = yield* table.await(job.id)
          const right = yield* table.poll(job.id, undefined)
          yield* Effect.sleep("300 millis")
          return { outcome, right, after: yield* table.poll(job.id, undefined), size: yield* table.size }
        })
      )
    )
    expect(seen.outcome._tag).toBe("Result")
    if (seen.outcome._tag === "Result") {
      expect(seen.outcome.result.text).toBe("ab")
      expect(seen.outcome.result.current_context_length).toBe(4)
    }
    expect(seen.right).toEqual({ state: "done", result: undefined })
    expect(seen.after).toBeUndefined()
    expect(seen.size).toBe(0)
  })
})
