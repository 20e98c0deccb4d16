// The access log and the one log format, read from the stdout of `chorus serve` as an operator would: one line per
// request (written when a stream ends), the request id echoed as x-request-id, JSON or text lines for every
// message, the level filter, and bad logging flags refused with one line.
import { spawn } from "node:child_process"
import * as net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"
import { type ServeProcess, serveFailing, startServeProcess, waitFor } from "../support/serveProcess.ts"

interface LogLine {
  readonly time: string
  readonly level: string
  readonly message: string
  readonly [field: string]: unknown
}

const jsonLines = (stdout: string): Array<LogLine> =>
  stdout.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as LogLine)

const post = (url: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal) =>
  fetch(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body), ...(signal === undefined ? {} : { signal }) })

describe("access log, JSON format", () => {
  let server: ServeProcess
  const requestLine = (id: string) => () => jsonLines(server.stdout()).find((l) => l.message === "request" && l.request_id === id)

  beforeAll(async () => {
    server = await startServeProcess(["--adapter", "bench", "--log-format", "json"])
  })
  afterAll(async () => {
    expect(await server.stop()).toBe(0)
    // Every line the process wrote, the draining and stopped lines included, is one JSON object.
    const lines = jsonLines(server.stdout())
    for (const line of lines) {
      expect(line.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
      expect(["debug", "info", "warn", "error"]).toContain(line.level)
    }
    expect(lines.map((l) => l.message)).toEqual(expect.arrayContaining([
      expect.stringMatching(/^chorus: serving chorus-bench at http:\/\/127\.0\.0\.1:\d+\//),
      expect.stringMatching(/SIGTERM: draining/),
      "chorus: stopped"
    ]))
  })

  it("writes one line per request with id, method, path, status, duration, tokens and client; honours a sane x-request-id", async () => {
    const res = await post(`${server.url}/v1/chat/completions`, { messages: [{ role: "user", content: "hi" }], max_tokens: 7 }, { "x-request-id": "trace-42.a" })
    expect(res.status).toBe(200)
    expect(res.headers.get("x-request-id")).toBe("trace-42.a")
    const body = (await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number } }
    const line = await waitFor(requestLine("trace-42.a"), "the access line")
    expect(line).toMatchObject({
      level: "info",
      method: "POST",
      path: "/v1/chat/completions",
      status: 200,
      prompt_tokens: body.usage.prompt_tokens,
      completion_tokens: 7,
      client: expect.stringMatching(/127\.0\.0\.1$/)
    })
    expect(line.duration_ms).toBeGreaterThan(0)
    expect(jsonLines(server.stdout()).filter((l) => l.request_id === "trace-42.a")).toHaveLength(1)
  })

  it("replaces an insane x-request-id, logs errors with their status and never the query string", async () => {
    const res = await fetch(`${server.url}/v1/models?key=do-not-log-me`, { headers: { "x-request-id": "has spaces \" and quotes" } })
    expect(res.status).toBe(200)
    const id = res.headers.get("x-request-id")!
    expect(id).toMatch(/^[0-9a-f-]{36}$/)
    const line = await waitFor(requestLine(id), "the access line")
    expect(line).toMatchObject({ method: "GET", path: "/v1/models", status: 200 })
    expect(line.prompt_tokens).toBeUndefined()

    const bad = await post(`${server.url}/v1/completions`, { prompt: "x", max_tokens: -1 })
    expect(bad.status).toBe(400)
    expect(await waitFor(requestLine(bad.headers.get("x-request-id")!), "the 400 line")).toMatchObject({ status: 400, path: "/v1/completions" })
    const missing = await fetch(`${server.url}/no/such/route`)
    expect(missing.status).toBe(404)
    expect(await waitFor(requestLine(missing.headers.get("x-request-id")!), "the 404 line")).toMatchObject({ status: 404, method: "GET" })
    expect(server.stdout()).not.toContain("do-not-log-me")
  })

  it("writes a stream's line when the stream ends, with the tokens it carried; a client that goes away gets 499", async () => {
    const res = await post(`${server.url}/v1/completions`, { prompt: "x", max_tokens: 40, stream: true, stream_options: { include_usage: true } }, { "x-request-id": "stream-1" })
    const text = await res.text()
    const usage = JSON.parse(text.split("\n\n").filter((f) => f.includes('"usage"')).at(-1)!.slice(6)) as { usage: { completion_tokens: number } }
    expect(usage.usage.completion_tokens).toBe(40)
    expect(await waitFor(requestLine("stream-1"), "the stream's line")).toMatchObject({ status: 200, completion_tokens: 40 })

    // A long stream the client leaves after its first chunk: the line comes when the server notices, with the
    // tokens generated until then (not 0 as at the response's start, not the 8000 asked for).
    const controller = new AbortController()
    const long = await post(`${server.url}/v1/completions`, { prompt: "x", max_tokens: 8000, stream: true }, { "x-request-id": "stream-abandoned" }, controller.signal)
    const reader = long.body!.getReader()
    await reader.read()
    controller.abort()
    const line = await waitFor(requestLine("stream-abandoned"), "the abandoned stream's line")
    expect(line.status).toBe(499)
    expect(line.completion_tokens).toBeGreaterThan(0)
    expect(line.completion_tokens).toBeLessThan(8000)
  })

  it("counts the tokens of an AIME request that waits for its result", async () => {
    const res = await post(`${server.url}/llama3_chat`, { prompt_input: "hello", max_gen_tokens: 9, wait_for_result: true }, { "x-request-id": "aime-1" })
    const body = (await res.json()) as { success: boolean; num_generated_tokens: number }
    expect(body.success).toBe(true)
    expect(await waitFor(requestLine("aime-1"), "the AIME line")).toMatchObject({ path: "/llama3_chat", status: 200, completion_tokens: body.num_generated_tokens })
  })
})

describe("log format and level", () => {
  it("text lines start with an ISO timestamp and a level, then the message and key=value fields", async () => {
    const server = await startServeProcess(["--adapter", "bench", "--log-format", "text"])
    try {
      const res = await fetch(`${server.url}/health`, { headers: { "x-request-id": "text-1" } })
      expect(res.status).toBe(200)
      const line = await waitFor(() => server.stdout().split("\n").find((l) => l.includes("request_id=text-1")), "the access line")
      expect(line).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO {2}request request_id=text-1 method=GET path=\/health status=200 duration_ms=[\d.]+ client=\S+$/)
    } finally {
      expect(await server.stop()).toBe(0)
    }
    for (const l of server.stdout().split("\n").filter((l) => l !== "")) expect(l).toMatch(/^\d{4}-\d\d-\d\dT\S+Z (DEBUG|INFO |WARN |ERROR) /)
  })

  it("--log-level warn drops the info lines (start-up and access log)", async () => {
    const port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, "127.0.0.1", () => {
        const p = (probe.address() as net.AddressInfo).port
        probe.close(() => resolve(p))
      })
    })
    const child = spawn(process.execPath, [`${repoRoot}/src/cli/main.ts`, "serve", "--adapter", "bench", "--port", String(port), "--log-level", "warn"], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    child.stdout.on("data", (d) => (out += d))
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve))
    try {
      const started = Date.now()
      for (;;) {
        const ok = await fetch(`http://127.0.0.1:${port}/ready`).then((r) => r.status === 200, () => false)
        if (ok) break
        expect(Date.now() - started).toBeLessThan(30_000)
        await new Promise((r) => setTimeout(r, 50))
      }
      expect((await post(`http://127.0.0.1:${port}/v1/completions`, { prompt: "x", max_tokens: 3 })).status).toBe(200)
    } finally {
      child.kill("SIGTERM")
    }
    expect(await exited).toBe(0)
    expect(out).toBe("")
  }, 60_000)

  it("refuses an unknown format or level with one line and exit 2", () => {
    const format = serveFailing(["--adapter", "bench", "--log-format", "xml"])
    expect(format.status).toBe(2)
    expect(format.stderr).toBe("chorus: --log-format must be text or json, got 'xml'\n")
    const level = serveFailing(["--adapter", "bench", "--log-level", "verbose"])
    expect(level.status).toBe(2)
    expect(level.stderr).toBe("chorus: --log-level must be one of debug, info, warn, error, got 'verbose'\n")
  }, 60_000)
})
