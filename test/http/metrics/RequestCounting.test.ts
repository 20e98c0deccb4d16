// Every request that ends is counted once: clients that leave mid-stream or while queued show as
// finished_reason="abort", and every HTTP status (400s from body decoding, 404s, 499s) in chorus:http_requests_total.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../../src/adapters/bench/index.ts"
import { parseExposition, select } from "../../support/PromSelector.ts"
import { startServer, type TestServer } from "../../support/server.ts"

const SLOTS = 50

let server: TestServer
beforeAll(async () => {
  // 2 ms of simulated model time per step: streams stay open long enough to be aborted mid-way
  server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 2 }, engine: { maxNumSeqs: SLOTS } })
})
afterAll(() => server.close())

const scrape = async () => parseExposition(await (await fetch(`${server.url}/metrics`)).text())

const value = async (selector: string): Promise<number> => {
  const found = select(await scrape(), selector)
  return found.reduce((sum, s) => sum + s.value, 0)
}

const model = () => `model_name="${server.engine.model.id}"`

const waitFor = async (what: string, check: () => Promise<boolean>, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const body = (stream: boolean) =>
  JSON.stringify({ prompt: "Count with me", max_tokens: 4000, ignore_eos: true, stream })

/** A streamed request that resolves once `tokens` SSE chunks have arrived; aborting it closes the connection. */
const openStream = async (tokens: number) => {
  const controller = new AbortController()
  const r = await fetch(`${server.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: body(true), signal: controller.signal })
  expect(r.status).toBe(200)
  const reader = r.body!.getReader()
  const decoder = new TextDecoder()
  let text = ""
  while ((text.match(/\n\n/g) ?? []).length < tokens) {
    const { value, done } = await reader.read()
    if (done) throw new Error("the stream ended before it was aborted")
    text += decoder.decode(value, { stream: true })
  }
  return () => {
    controller.abort()
    reader.cancel().catch(() => {})
  }
}

describe("request counting", () => {
  it(`${SLOTS} streams aborted mid-way and 20 requests aborted while queued raise the abort count by exactly 70`, async () => {
    const abortedBefore = await value(`chorus:request_success_total{${model()},finished_reason="abort"}`)
    const othersBefore = await value(`chorus:request_success_total{${model()},finished_reason!="abort"}`)
    const http499Before = await value(`chorus:http_requests_total{route="/v1/completions",status="499"}`)
    const e2eBefore = { count: await value(`chorus:e2e_request_latency_seconds_count{${model()}}`), sum: await value(`chorus:e2e_request_latency_seconds_sum{${model()}}`) }

    // every slot decoding: 50 streams that have each received tokens
    const running = await Promise.all(Array.from({ length: SLOTS }, () => openStream(3)))
    expect(await value(`chorus:num_requests_running{${model()}}`)).toBe(SLOTS)

    // 20 more wait in the queue: 10 streamed (their response has started: Queued), 10 plain (no response yet)
    const queued = Array.from({ length: 20 }, (_, i) => {
      const controller = new AbortController()
      const done = fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: body(i < 10),
        signal: controller.signal
      }).then((r) => r.body?.cancel(), () => undefined)
      return { controller, done }
    })
    await waitFor("20 waiting requests", async () => (await value(`chorus:num_requests_waiting{${model()}}`)) === 20)

    for (const q of queued) q.controller.abort()
    await Promise.all(queued.map((q) => q.done))
    await waitFor("the queue to empty", async () => (await value(`chorus:num_requests_waiting{${model()}}`)) === 0)
    expect(await value(`chorus:num_requests_running{${model()}}`)).toBe(SLOTS)

    for (const abort of running) abort()
    await waitFor("the slots to free", async () => (await value(`chorus:num_requests_running{${model()}}`)) === 0)

    // the counts settle at once: give a late double count the chance to show
    await new Promise((r) => setTimeout(r, 200))
    expect((await value(`chorus:request_success_total{${model()},finished_reason="abort"}`)) - abortedBefore).toBe(70)
    expect(await value(`chorus:request_success_total{${model()},finished_reason!="abort"}`)).toBe(othersBefore)
    // the 10 plain requests ended before any response: 499, as the server names a client that went away
    expect((await value(`chorus:http_requests_total{route="/v1/completions",status="499"}`)) - http499Before).toBe(10)
    // the aborted ones were observed with their real latency, not as zeros: the 50 streams were open for at least
    // the time the 20 queued requests took to arrive and leave
    expect((await value(`chorus:e2e_request_latency_seconds_count{${model()}}`)) - e2eBefore.count).toBe(70)
    expect((await value(`chorus:e2e_request_latency_seconds_sum{${model()}}`)) - e2eBefore.sum).toBeGreaterThan(SLOTS * 0.02)
  }, 120_000)

  it("bad bodies, unknown routes and good requests each show once in the HTTP status counter", async () => {
    const count = (route: string, status: number) => value(`chorus:http_requests_total{method=~"GET|POST",route="${route}",status="${status}"}`)
    const before = {
      bad: await count("/v1/chat/completions", 400),
      notFound: await count("unmatched", 404),
      ok: await count("/v1/models", 200)
    }
    for (const payload of ["{not json", "", JSON.stringify({ messages: "hi" }), JSON.stringify({ model: 1, messages: [] })]) {
      const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: payload })
      expect(r.status).toBe(400)
      await r.text()
    }
    expect((await fetch(`${server.url}/no/such/route`)).status).toBe(404)
    expect((await fetch(`${server.url}/v1/models`)).status).toBe(200)
    expect((await count("/v1/chat/completions", 400)) - before.bad).toBe(4)
    expect((await count("unmatched", 404)) - before.notFound).toBe(1)
    expect((await count("/v1/models", 200)) - before.ok).toBe(1)
    // the route label never carries a client's path
    const routes = new Set(select(await scrape(), "chorus:http_requests_total").map((s) => s.labels.route))
    expect([...routes].filter((r) => r.includes("no/such"))).toEqual([])
  })
})
