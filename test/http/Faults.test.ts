// Behaviour under faults: a shard worker dying mid-generation, a client going away, a full queue.
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import type { ShardState } from "../../src/core/shard/ShardLifecycle.ts"
import { readSse, startServer } from "../support/server.ts"

const post = (url: string, body: unknown, signal?: AbortSignal) =>
  fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), ...(signal ? { signal } : {}) })

const waitUntil = async (check: () => Promise<boolean>, ms: number) => {
  const start = performance.now()
  while (performance.now() - start < ms) {
    if (await check()) return performance.now() - start
    await new Promise((r) => setTimeout(r, 5))
  }
  throw new Error(`condition not met within ${ms} ms`)
}

describe("faults", () => {
  it("a shard worker killed mid-generation: its request gets an error event within 5 s, /ready reports the shard crashed, restarting, ready again, the next request succeeds", async () => {
    // A restart delay long enough for the polls below to see `crashed` on a busy machine.
    const server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, engine: { maxNumSeqs: 4, shardRestarts: { restartDelayMs: 300 } } })
    try {
      const ready = async () => (await fetch(`${server.url}/ready`)).json() as Promise<{ status: string; shards: Array<{ index: number; state: ShardState; restarts: number }> }>
      expect(await ready()).toEqual({ status: "ready", shards: [{ index: 0, state: "ready", restarts: 0 }] })
      const machine: Array<ShardState> = []
      const unwatch = server.engine.shards[0]!.watch((s) => machine.push(s.state))
      const r = await post(`${server.url}/v1/completions`, { prompt: "Tell me everything", max_tokens: 4000, ignore_eos: true, stream: true })
      const reader = r.body!.getReader()
      const decoder = new TextDecoder()
      let text = ""
      while ((text.match(/data: /g) ?? []).length < 5) text += decoder.decode((await reader.read()).value, { stream: true })
      const killedAt = performance.now()
      await Effect.runPromise(server.engine.shards[0]!.crash)
      // What /ready reports while the shard comes back, polled until it is ready again.
      const reported: Array<ShardState> = []
      const polling = (async () => {
        for (let i = 0; i < 2000; i++) {
          const state = (await ready()).shards[0]!.state
          if (reported[reported.length - 1] !== state) reported.push(state)
          if (state === "ready") return
          await new Promise((r) => setTimeout(r, 5))
        }
      })()
      let done = false
      while (!done) {
        const chunk = await reader.read()
        done = chunk.done
        if (chunk.value) text += decoder.decode(chunk.value, { stream: true })
      }
      const elapsed = performance.now() - killedAt
      expect(elapsed).toBeLessThan(5000)
      const error = text.split("\n").filter((l) => l.startsWith("data: {\"error\"")).map((l) => JSON.parse(l.slice(6)))[0]
      expect(error.error.message).toMatch(/shard 0 worker thread died/)
      expect(error.error.code).toBe("generation_error")
      await waitUntil(async () => (await Effect.runPromise(server.engine.stats)).restarts >= 1, 10_000)
      await polling
      unwatch()
      expect(machine).toEqual(["ready", "crashed", "restarting", "ready"])
      // Every state /ready showed is one the machine went through, in its order; `restarting` may be too short to see.
      expect(reported[0]).toBe("crashed")
      expect(reported[reported.length - 1]).toBe("ready")
      expect(reported.filter((s) => s !== "restarting")).toEqual(["crashed", "ready"])
      const after = await ready()
      expect(after.status).toBe("ready")
      expect(after.shards[0]).toMatchObject({ index: 0, state: "ready", restarts: 1, last_error: expect.stringMatching(/exit/) })
      // ignore_eos: sampling at the default temperature may draw the end token early (a CI run got 4 of 8).
      const next = await post(`${server.url}/v1/completions`, { prompt: "Again", max_tokens: 8, ignore_eos: true })
      expect(next.status).toBe(200)
      expect(((await next.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(8)
      expect(await (await fetch(`${server.url}/metrics`)).text()).toMatch(/chorus:request_failure_total\{model_name="[^"]+",error_type="generation_error"\} 1/)
    } finally {
      await server.close()
    }
  })

  it("a shard that keeps crashing stays down: /ready answers 503 with its state, new requests fail at once naming it", async () => {
    const server = await startServer({
      adapter: BenchAdapter,
      adapterOptions: { stepDelayMs: 5 },
      engine: { maxNumSeqs: 2, shardRestarts: { maxCrashes: 2, windowMs: 60_000, restartDelayMs: 10 } }
    })
    try {
      const shard = server.engine.shards[0]!
      await Effect.runPromise(shard.crash)
      expect(shard.status().state).toBe("crashed")
      await waitUntil(async () => shard.status().state === "ready", 5000)
      const served = await post(`${server.url}/v1/completions`, { prompt: "x", max_tokens: 3 })
      expect(served.status).toBe(200)
      await Effect.runPromise(shard.crash)
      expect(shard.status().state).toBe("failed")
      const ready = await fetch(`${server.url}/ready`)
      expect(ready.status).toBe(503)
      expect(await ready.json()).toEqual({
        status: "failed",
        shards: [{ index: 0, state: "failed", restarts: 1, last_error: expect.stringMatching(/exit/) }]
      })
      const started = performance.now()
      const refused = await post(`${server.url}/v1/completions`, { prompt: "x", max_tokens: 3 })
      expect(performance.now() - started).toBeLessThan(1000)
      expect(refused.status).toBe(500)
      expect(await refused.json()).toMatchObject({ error: { code: "generation_error", message: expect.stringMatching(/^shard 0 has failed and stays down/) } })
    } finally {
      await server.close()
    }
  })

  it("a client that disconnects frees its slot within one decode step", async () => {
    const server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 20 }, engine: { maxNumSeqs: 4 } })
    try {
      const abort = new AbortController()
      const r = await post(`${server.url}/v1/completions`, { prompt: "x", max_tokens: 8000, stream: true }, abort.signal)
      const reader = r.body!.getReader()
      await reader.read()
      await reader.read()
      expect((await Effect.runPromise(server.engine.stats)).numRunning).toBe(1)
      abort.abort()
      // One step is 20 ms here: the slot must be free within about one step (scheduling slack allowed).
      const freedIn = await waitUntil(async () => (await Effect.runPromise(server.engine.stats)).numRunning === 0, 1000)
      expect(freedIn).toBeLessThan(100)
    } finally {
      await server.close()
    }
  })

  it("a full queue answers 429 at once", async () => {
    const server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 20 }, engine: { maxNumSeqs: 1, maxQueue: 1 } })
    try {
      const long = { prompt: "x", max_tokens: 8000, stream: true }
      const abort = new AbortController()
      const running = await post(`${server.url}/v1/completions`, long, abort.signal)
      await running.body!.getReader().read()
      // The second request waits for the only slot; its response has not started, so do not await it.
      const waiting = post(`${server.url}/v1/completions`, long, abort.signal).catch(() => undefined)
      await waitUntil(async () => (await Effect.runPromise(server.engine.stats)).numWaiting === 1, 1000)
      const started = performance.now()
      const refused = await post(`${server.url}/v1/completions`, { prompt: "y", max_tokens: 5 })
      expect(performance.now() - started).toBeLessThan(200)
      expect(refused.status).toBe(429)
      expect(await refused.json()).toMatchObject({ error: { type: "rate_limit_error", code: "overloaded" } })
      abort.abort()
      await waiting
    } finally {
      await server.close()
    }
  })

  it("prompts still being tokenized count against the queue: a burst of large prompts gets 429s, not a pile-up", async () => {
    // Each prompt takes 3 s to process (a slow tokenizer, simulated so that no machine is fast enough to race it).
    const server = await startServer({ adapter: BenchAdapter, adapterOptions: { promptDelayMs: 3000 }, engine: { maxNumSeqs: 1, maxQueue: 2 } })
    try {
      const abort = new AbortController()
      const big = { prompt: "word ".repeat(1000), max_tokens: 1 }
      const tokenizing = [post(`${server.url}/v1/completions`, big, abort.signal), post(`${server.url}/v1/completions`, big, abort.signal)]
        .map((p) => p.catch(() => undefined))
      await new Promise((r) => setTimeout(r, 300))
      const started = performance.now()
      const refused = await post(`${server.url}/v1/completions`, { prompt: "y", max_tokens: 5 })
      expect(performance.now() - started).toBeLessThan(200)
      expect(refused.status).toBe(429)
      expect(await refused.json()).toMatchObject({ error: { code: "overloaded" } })
      abort.abort()
      await Promise.all(tokenizing)
      // Once the tokenizing requests are gone, the queue takes requests again.
      await waitUntil(async () => (await post(`${server.url}/v1/completions`, { prompt: "y", max_tokens: 2 })).status === 200, 5000)
    } finally {
      await server.close()
    }
  })

  it("a request past its deadline ends with a clear error: 504 before the first byte, an SSE error event after", async () => {
    const server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 10 }, engine: { maxNumSeqs: 2, timeoutMs: 300 } })
    try {
      const started = performance.now()
      const r = await post(`${server.url}/v1/completions`, { prompt: "x", max_tokens: 4000 })
      expect(r.status).toBe(504)
      expect(await r.json()).toMatchObject({ error: { code: "timeout", message: "the request exceeded its deadline of 300 ms" } })
      expect(performance.now() - started).toBeLessThan(2000)
      const streamed = await readSse(await post(`${server.url}/v1/completions`, { prompt: "x", max_tokens: 4000, stream: true }))
      const last = streamed.map((e) => e.data)
      expect(last[last.length - 1]).toBe("[DONE]")
      expect(JSON.parse(last[last.length - 2]!)).toMatchObject({ error: { code: "timeout" } })
      expect(last.length).toBeGreaterThan(3)
      expect(await (await fetch(`${server.url}/metrics`)).text()).toMatch(/chorus:request_success_total\{model_name="[^"]+",finished_reason="timeout"\} 2/)
    } finally {
      await server.close()
    }
  })
})
