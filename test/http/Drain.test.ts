// SIGTERM with `--grace`: a real `chorus serve` child (bench adapter, 20 ms per step). Requests still running when
// the grace ends get an answer their client can see — an SSE error event and [DONE], a 503, an AIME result with an
// error — and the process exits 0 within grace + 1 s; a short request that finishes inside the grace is untouched.
import { spawn } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"
import { readSse } from "../support/server.ts"

const GRACE_S = 2

const post = (url: string, body: unknown) =>
  fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })

describe("drain honouring --grace", () => {
  it("ends running streams, blocking requests and AIME jobs at the grace with a visible error, then exits 0", async () => {
    const child = spawn(
      process.execPath,
      [path.join(repoRoot, "src/cli/main.ts"), "serve", "--adapter", "bench", "--bench-step-delay", "20", "--port", "0", "--grace", String(GRACE_S), "--max-batch", "4"],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    let out = ""
    child.stdout.on("data", (d) => (out += d))
    child.stderr.on("data", (d) => (out += d))
    const exited = new Promise<{ code: number | null; at: number }>((resolve) => child.on("exit", (code) => resolve({ code, at: performance.now() })))
    try {
      while (!/at (http:\/\/127\.0\.0\.1:\d+)\//.test(out) || !/API key/.test(out)) await new Promise((r) => setTimeout(r, 20))
      const url = /at (http:\/\/127\.0\.0\.1:\d+)\//.exec(out)![1]!

      const longStream = async () => {
        const r = await post(`${url}/v1/chat/completions`, { messages: [{ role: "user", content: "Go" }], max_tokens: 2000, ignore_eos: true, stream: true })
        expect(r.status).toBe(200)
        return readSse(r)
      }
      const pause = (ms: number) => new Promise((r) => setTimeout(r, ms))
      // 4 KV slots. A short stream (10 tokens, about 0.2 s) that finishes well inside the grace, then three long
      // streams (2,000 tokens at 20 ms a step: 40 s), a long blocking request, a blocking AIME job and a fourth long
      // stream: two of the last three wait in the queue for the whole grace.
      const short = post(`${url}/v1/completions`, { prompt: "x", max_tokens: 10, ignore_eos: true, stream: true }).then(readSse)
      await pause(100)
      const streams = [longStream(), longStream(), longStream()]
      await pause(100)
      const blocking = post(`${url}/v1/completions`, { prompt: "x", max_tokens: 2000, ignore_eos: true })
      await pause(50)
      const aime = post(`${url}/llama3_chat`, { prompt_input: "Go", max_gen_tokens: 2000, wait_for_result: true })
      await pause(50)
      const waiting = longStream()
      await pause(200)
      const sigterm = performance.now()
      child.kill("SIGTERM")

      for (const frames of await Promise.all(streams)) {
        const data = frames.map((f) => f.data)
        expect(data.at(-1)).toBe("[DONE]")
        const error = JSON.parse(data.at(-2)!) as { error: { code: string; type: string; message: string } }
        expect(error.error).toMatchObject({ code: "shutdown", type: "server_error" })
        expect(error.error.message).toMatch(/shutting down/)
        // Tokens flowed during the grace, and the end came at the grace (not before, not much after).
        expect(data.length).toBeGreaterThan(20)
        const endedAfter = frames.at(-1)!.at - sigterm
        expect(endedAfter).toBeGreaterThan(GRACE_S * 1000 - 100)
        expect(endedAfter).toBeLessThan(GRACE_S * 1000 + 700)
      }
      // The stream that waited in the queue ends the same way.
      const w = (await waiting).map((f) => f.data)
      expect(w.at(-1)).toBe("[DONE]")
      expect(JSON.parse(w.at(-2)!)).toMatchObject({ error: { code: "shutdown" } })
      const b = await blocking
      expect(b.status).toBe(503)
      expect(await b.json()).toMatchObject({ error: { code: "shutdown", type: "server_error" } })
      const a = (await (await aime).json()) as { success: boolean; finish_reason: string; error: string; num_generated_tokens: number }
      expect(a).toMatchObject({ success: true, finish_reason: "error" })
      expect(a.error).toMatch(/shutting down/)

      const s = (await short).map((f) => f.data)
      expect(s.at(-1)).toBe("[DONE]")
      const last = JSON.parse(s.at(-2)!) as { choices: Array<{ finish_reason: string }> }
      expect(last.choices[0]!.finish_reason).toBe("length")
      expect(s.some((d) => d.includes('"error"'))).toBe(false)

      const exit = await exited
      expect(exit.code).toBe(0)
      expect(exit.at - sigterm).toBeLessThan((GRACE_S + 1) * 1000)
      expect(out).toMatch(/SIGTERM: draining \(up to 2 s/)
      expect(out).toMatch(/stopped/)
    } finally {
      child.kill("SIGKILL")
    }
  }, 30_000)
})
