// Backpressure against a real in-process server (bench adapter, no model time): a raw socket client sends a
// streaming request and never reads. Once the kernel's socket buffers are full (about 4 MB on Linux loopback,
// beyond Node's reach), the server holds at most its byte bound or waits at most its stall bound, then closes the
// connection: the sequence is aborted (its slot freed), the counter moves, and a stream that reads is unaffected.
import { Effect } from "effect"
import * as net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
import type { SlowReaderLimits } from "../../src/http/SlowReader.ts"
import { readSse, startServer, type TestServer } from "../support/server.ts"

const TOKENS = 30_000
/** One completion chunk is about 210 bytes: the whole stream is about 6.3 MB. */
const FULL_STREAM_BYTES = TOKENS * 200

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Sends a streaming request on a raw socket and never reads; `drain` later reads what is left until the close. */
const stuckClient = (url: string) => {
  const u = new URL(url)
  const body = JSON.stringify({ prompt: "x", max_tokens: TOKENS, ignore_eos: true, stream: true })
  const socket = net.connect(Number(u.port), u.hostname)
  socket.write(`POST /v1/completions HTTP/1.1\r\nhost: ${u.host}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`)
  socket.pause()
  return {
    drain: () =>
      new Promise<{ bytes: number; text: string }>((resolve) => {
        let bytes = 0
        let tail = ""
        socket.on("data", (d: Buffer) => {
          bytes += d.length
          tail = (tail + d.toString("latin1")).slice(-200)
        })
        socket.on("close", () => resolve({ bytes, text: tail }))
        socket.resume()
      }),
    destroy: () => socket.destroy()
  }
}

const metric = async (url: string, line: RegExp): Promise<number> => {
  const m = line.exec(await (await fetch(`${url}/metrics`)).text())
  return m === null ? Number.NaN : Number(m[1])
}
const SLOW_ABORTS = /^chorus:stream_aborted_slow_reader_total (\d+)$/m
const ABORTED = /^chorus:request_success_total\{finished_reason="abort"\} (\d+)$/m

const waitFor = async (what: () => Promise<boolean>, withinMs: number) => {
  const started = performance.now()
  while (!(await what())) {
    if (performance.now() - started > withinMs) return false
    await sleep(50)
  }
  return true
}

const suite = (name: string, limits: SlowReaderLimits, expectAbortWithinMs: number) =>
  describe(name, () => {
    let server: TestServer
    beforeAll(async () => {
      server = await startServer({ adapter: BenchAdapter, adapterOptions: { contextLength: TOKENS + 100 }, slowReader: limits })
    })
    afterAll(async () => {
      await server?.close()
    })

    it("aborts the stuck stream and frees its slot; a stream that reads finishes normally", async () => {
      expect(await metric(server.url, SLOW_ABORTS)).toBe(0)
      const stuck = stuckClient(server.url)
      try {
        const reader = fetch(`${server.url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: "y", max_tokens: 3000, ignore_eos: true, stream: true })
        }).then(readSse)
        const started = performance.now()
        expect(await waitFor(async () => (await metric(server.url, SLOW_ABORTS)) === 1, expectAbortWithinMs)).toBe(true)
        const abortedAfter = performance.now() - started
        // The engine dropped the sequence before generating all of it.
        expect(await waitFor(async () => (await metric(server.url, ABORTED)) === 1, 2000)).toBe(true)
        const frames = (await reader).map((f) => f.data)
        expect(frames.at(-1)).toBe("[DONE]")
        expect(JSON.parse(frames.at(-2)!).choices[0].finish_reason).toBe("length")
        expect(frames.length).toBe(3000 + 2) // a chunk per token, the finish chunk, [DONE]
        const stats = await Effect.runPromise(server.engine.stats)
        expect(stats.numRunning + stats.numWaiting).toBe(0)
        expect(stats.generatedTokens).toBeLessThan(TOKENS + 3000)
        // What the client can still read is what the kernel held plus the server's bound: far from the whole stream,
        // and no [DONE] (the connection was cut, not ended).
        const rest = await stuck.drain()
        expect(rest.bytes).toBeGreaterThan(0)
        expect(rest.bytes).toBeLessThan(FULL_STREAM_BYTES * 0.8)
        expect(rest.text).not.toMatch(/\[DONE\]/)
        expect(await metric(server.url, SLOW_ABORTS)).toBe(1)
        console.log(`${name}: aborted after ${Math.round(abortedAfter)} ms; the stuck client could still read ${rest.bytes} bytes of about ${FULL_STREAM_BYTES}`)
      } finally {
        stuck.destroy()
      }
    }, 40_000)
  })

suite("slow reader: byte bound (256 KiB beyond the kernel's buffers)", { maxBufferedBytes: 256 * 1024, maxStallMs: 600_000 }, 20_000)
suite("slow reader: stall bound (1 s without the client reading)", { maxBufferedBytes: 1024 ** 3, maxStallMs: 1000 }, 20_000)
