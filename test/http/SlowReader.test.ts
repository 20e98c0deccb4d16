// Backpressure against a real in-process server (bench adapter, no model time): a raw socket client sends a
// streaming request and never reads. Once the kernel's socket buffers are full (about 4 MB on Linux loopback,
// beyond Node's reach), the server waits at most its stall bound, then closes the connection: the sequence is
// aborted (its slot freed) and the counter moves, while a client that reads slowly and one that keeps up go on.
import * as net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
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
    destroy: () => socket.destroy(),
    socket
  }
}

const metric = async (url: string, line: RegExp): Promise<number> => {
  const m = line.exec(await (await fetch(`${url}/metrics`)).text())
  return m === null ? Number.NaN : Number(m[1])
}
const SLOW_ABORTS = /^chorus:stream_aborted_slow_reader_total (\d+)$/m
const ABORTED = /^chorus:request_success_total\{[^}]*finished_reason="abort"[^}]*\} (\d+)$/m

const waitFor = async (what: () => Promise<boolean>, withinMs: number) => {
  const started = performance.now()
  while (!(await what())) {
    if (performance.now() - started > withinMs) return false
    await sleep(50)
  }
  return true
}

describe("slow reader (stall bound 1 s)", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer({ adapter: BenchAdapter, adapterOptions: { contextLength: TOKENS + 100 }, slowReader: { maxStallMs: 1000 } })
  })
  afterAll(async () => {
    await server?.close()
  })

  it("cuts a client that stopped reading and frees its slot; slow and normal readers go on", async () => {
    expect(await metric(server.url, SLOW_ABORTS)).toBe(0)
    const stuck = stuckClient(server.url)
    const slow = stuckClient(server.url)
    // The slow client reads a little every 200 ms: far slower than the stream is made, but never stopped.
    let slowBytes = 0
    let slowClosed = false
    slow.socket.on("data", (d: Buffer) => (slowBytes += d.length))
    slow.socket.on("close", () => (slowClosed = true))
    const sipping = setInterval(() => {
      slow.socket.resume()
      setTimeout(() => slow.socket.pause(), 2)
    }, 200)
    try {
      const reader = fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "y", max_tokens: 3000, ignore_eos: true, stream: true })
      }).then(readSse)
      const started = performance.now()
      expect(await waitFor(async () => (await metric(server.url, SLOW_ABORTS)) === 1, 20_000)).toBe(true)
      const abortedAfter = performance.now() - started
      // The engine dropped the stuck sequence before generating all of it.
      expect(await waitFor(async () => (await metric(server.url, ABORTED)) === 1, 2000)).toBe(true)
      const frames = (await reader).map((f) => f.data)
      expect(frames.at(-1)).toBe("[DONE]")
      expect(JSON.parse(frames.at(-2)!).choices[0].finish_reason).toBe("length")
      expect(frames.length).toBe(3000 + 2) // a chunk per token, the finish chunk, [DONE]
      // Two stall bounds later the slow reader is still served and still receiving.
      const before = slowBytes
      await sleep(2000)
      expect(await metric(server.url, SLOW_ABORTS)).toBe(1)
      expect(slowClosed).toBe(false)
      expect(slowBytes).toBeGreaterThan(before)
      // What the stuck client can still read is what the kernel held plus about a second of tokens: far from the
      // whole stream, and no [DONE] (the connection was cut, not ended).
      const rest = await stuck.drain()
      expect(rest.bytes).toBeGreaterThan(0)
      expect(rest.bytes).toBeLessThan(FULL_STREAM_BYTES * 0.8)
      expect(rest.text).not.toMatch(/\[DONE\]/)
      console.log(`slow reader: cut after ${Math.round(abortedAfter)} ms; the stuck client could still read ${rest.bytes} bytes of about ${FULL_STREAM_BYTES}`)
    } finally {
      clearInterval(sipping)
      stuck.destroy()
      slow.destroy()
    }
  }, 40_000)
})
