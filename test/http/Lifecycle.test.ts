// The server's lifecycle: readiness while the model loads, API keys, and SIGTERM draining.
import { Deferred, Effect, ManagedRuntime } from "effect"
import { HttpServer } from "effect/http"
import { spawn } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { BenchAdapter, type BenchOptions } from "../../src/adapters/bench/BenchAdapter.ts"
import type { ModelAdapter } from "../../src/core/ModelAdapter.ts"
import { serverLayer } from "../../src/http/Server.ts"
import { repoRoot } from "../support/fixtures.ts"
import { startServer } from "../support/server.ts"

describe("server lifecycle", () => {
  it("answers /health at once and /ready with 503 until the model is loaded; generation routes say so too", async () => {
    const gate = Effect.runSync(Deferred.make<void>())
    const slowAdapter: ModelAdapter<BenchOptions> = { name: "slow", load: (o) => Deferred.await(gate).pipe(Effect.andThen(BenchAdapter.load(o))) }
    const runtime = ManagedRuntime.make(serverLayer({ adapter: slowAdapter, adapterOptions: {}, port: 0, host: "127.0.0.1" }))
    try {
      const url = await runtime.runPromise(HttpServer.HttpServer.use((s) => Effect.succeed(HttpServer.formatAddress(s.address))))
      expect((await fetch(`${url}/health`)).status).toBe(200)
      const notYet = await fetch(`${url}/ready`)
      expect(notYet.status).toBe(503)
      expect(await notYet.json()).toEqual({ status: "loading" })
      const early = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "x" }) })
      expect(early.status).toBe(503)
      expect(await early.json()).toMatchObject({ error: { code: "not_ready" } })
      Effect.runSync(Deferred.succeed(gate, undefined))
      const started = Date.now()
      while ((await fetch(`${url}/ready`)).status !== 200) {
        expect(Date.now() - started).toBeLessThan(10_000)
        await new Promise((r) => setTimeout(r, 20))
      }
    } finally {
      await runtime.dispose()
    }
  })

  it("with API keys: OpenAI routes need the Bearer key, health, readiness and metrics stay open", async () => {
    const server = await startServer({ adapter: BenchAdapter, adapterOptions: {}, apiKeys: ["k-one", "k-two"] })
    try {
      expect((await fetch(`${server.url}/health`)).status).toBe(200)
      expect((await fetch(`${server.url}/ready`)).status).toBe(200)
      expect((await fetch(`${server.url}/metrics`)).status).toBe(200)
      expect((await fetch(`${server.url}/v1/models`)).status).toBe(401)
      expect((await fetch(`${server.url}/v1/models`, { headers: { authorization: "Bearer nope" } })).status).toBe(401)
      expect((await fetch(`${server.url}/v1/models`, { headers: { authorization: "Bearer k-two" } })).status).toBe(200)
    } finally {
      await server.close()
    }
  })

  it("SIGTERM: stops taking requests, lets the running one finish, exits 0", async () => {
    const child = spawn(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "serve", "--adapter", "bench", "--port", "0", "--grace", "20"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    child.stdout.on("data", (d) => (out += d))
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve))
    // Both start-up lines: where it serves, then whether the API is open (they may arrive in separate chunks).
    while (!/at (http:\/\/127\.0\.0\.1:\d+)\//.test(out) || !/API key/.test(out)) await new Promise((r) => setTimeout(r, 20))
    expect(out).toMatch(/no API keys configured: the API is open/)
    const url = /at (http:\/\/127\.0\.0\.1:\d+)\//.exec(out)![1]!
    // A long request is running when SIGTERM arrives.
    const running = fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "x", max_tokens: 3000 })
    })
    await new Promise((r) => setTimeout(r, 100))
    child.kill("SIGTERM")
    await new Promise((r) => setTimeout(r, 100))
    const refused = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "y" }) })
    expect(refused.status).toBe(503)
    expect(await refused.json()).toMatchObject({ error: { code: "draining" } })
    const finished = (await (await running).json()) as { usage: { completion_tokens: number } }
    expect(finished.usage.completion_tokens).toBe(3000)
    expect(await exited).toBe(0)
    expect(out).toMatch(/SIGTERM: draining/)
    expect(out).toMatch(/stopped/)
  })
})
