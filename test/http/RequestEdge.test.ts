// The request edge on a real in-process server with API keys: authentication from the headers before any body byte,
// strict Bearer parsing, the body limit held while a body streams in (500 MB bodies, memory measured), the JSON
// nesting limit, CONNECT, and the shared chat-input helpers.
import * as net from "node:net"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
import { makeKeyMatcher } from "../../src/http/ApiKeys.ts"
import { describeValue, flattenMessages } from "../../src/http/ChatInput.ts"
import { MAX_BODY_BYTES, MAX_JSON_DEPTH, nestsDeeperThan } from "../../src/http/JsonBody.ts"
import { rawRequest, requestHead } from "../support/rawHttp.ts"
import { startServer, type TestServer } from "../support/server.ts"

let server: TestServer
let port: number
beforeAll(async () => {
  server = await startServer({ adapter: BenchAdapter, adapterOptions: {}, apiKeys: ["k1", "k2"], engine: { maxNumSeqs: 4, contextLength: 4096 } })
  port = Number(new URL(server.url).port)
})
afterAll(() => server.close())

const KEY = "Authorization: Bearer k1"
const JSON_TYPE = "Content-Type: application/json"
const chatBody = JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 3 })

const post = (path: string, body: string, headers: Record<string, string> = {}) =>
  fetch(`${server.url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body })

describe("authentication comes from the headers, before the body", () => {
  it("a request without a key gets 401 while its body is still arriving", async () => {
    for (const path of ["/v1/chat/completions", "/v1/completions"]) {
      // A chunked body that never ends: only an answer that does not wait for the body can arrive.
      const r = await rawRequest(port, requestHead("POST", path, [JSON_TYPE, "Transfer-Encoding: chunked"]), {
        pieces: ["1\r\n{\r\n"],
        timeoutMs: 5_000
      })
      expect(r.status, path).toBe(401)
      expect(JSON.parse(r.body).error.code).toBe("invalid_api_key")
    }
    const models = await fetch(`${server.url}/v1/models`)
    expect(models.status).toBe(401)
  })

  it("an Authorization header without 'Bearer ' is refused, naming the form expected", async () => {
    for (const header of ["k1", "Basic azE6", "Bearer", "Bearer k1 k2", "Token k1"]) {
      const r = await post("/v1/chat/completions", chatBody, { authorization: header })
      expect(r.status, header).toBe(401)
      expect(((await r.json()) as { error: { message: string } }).error.message, header).toMatch(/'Bearer <API key>'/)
    }
  })

  it("a wrong key is 401; the right one, with any case of the scheme, is served", async () => {
    const wrong = await post("/v1/chat/completions", chatBody, { authorization: "Bearer k3" })
    expect(wrong.status).toBe(401)
    expect(((await wrong.json()) as { error: { message: string } }).error.message).toMatch(/not valid/)
    for (const header of ["Bearer k1", "bearer k2", "BEARER k1"]) {
      const r = await post("/v1/chat/completions", chatBody, { authorization: header })
      expect(r.status, header).toBe(200)
    }
  })

  it("the official client: a wrong key is an AuthenticationError, the right one completes", async () => {
    const bad = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "nope", maxRetries: 0 })
    await expect(bad.chat.completions.create({ model: "x", messages: [{ role: "user", content: "Hi" }] })).rejects.toBeInstanceOf(OpenAI.AuthenticationError)
    const good = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "k2", maxRetries: 0 })
    const r = await good.chat.completions.create({ model: server.engine.model.id, messages: [{ role: "user", content: "Hi" }], max_tokens: 2 })
    expect(r.usage?.completion_tokens).toBe(2)
  })

  it("keys match exactly, whatever their lengths, and every configured key counts", () => {
    const isKey = makeKeyMatcher(["alpha", "b", "a-much-longer-key-than-the-others-0123456789"])
    expect(isKey("alpha")).toBe(true)
    expect(isKey("b")).toBe(true)
    expect(isKey("a-much-longer-key-than-the-others-0123456789")).toBe(true)
    for (const wrong of ["", "alph", "alphaa", "Alpha", "a-much-longer-key-than-the-others-012345678", "c"]) expect(isKey(wrong), wrong).toBe(false)
    expect(makeKeyMatcher([])("anything")).toBe(false)
  })
})

/**
 * Streams up to `total` bytes of a request body over a raw socket, with backpressure, until the server answers or
 * closes; the body is generated (one reused 1 MiB buffer), never held.
 */
const streamBody = (path: string, total: number, options: { readonly chunked: boolean; readonly headers: ReadonlyArray<string> }) =>
  new Promise<{ status: number | undefined; sentBytes: number }>((resolve) => {
    const piece = Buffer.alloc(1 << 20, 0x20)
    const framed = options.chunked ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from("\r\n")]) : piece
    const socket = net.connect(port, "127.0.0.1")
    let data = ""
    let sent = 0
    let done = false
    const finish = () => {
      if (done) return
      done = true
      socket.destroy()
      const status = /^HTTP\/1\.1 (\d{3})/.exec(data)
      resolve({ status: status === null ? undefined : Number(status[1]), sentBytes: sent })
    }
    socket.on("data", (chunk) => {
      data += chunk.toString("latin1")
      if (data.includes("\r\n\r\n")) finish()
    })
    socket.on("error", finish)
    socket.on("close", finish)
    const pump = () => {
      while (!done && sent < total) {
        sent += piece.length
        if (!socket.write(framed)) return void socket.once("drain", pump)
      }
    }
    const framing = options.chunked ? "Transfer-Encoding: chunked" : `Content-Length: ${total}`
    socket.on("connect", () => {
      socket.write(requestHead("POST", path, [...options.headers, framing]))
      pump()
    })
    setTimeout(finish, 60_000)
  })

describe("the body limit holds while the body streams in", () => {
  it("500 MB bodies, chunked and declared, each get 413 at once; memory stays flat; the server serves on", async () => {
    const total = 500 * 1024 * 1024
    const rss0 = process.memoryUsage().rss
    const cases = [
      { path: "/v1/chat/completions", chunked: true, headers: [KEY, JSON_TYPE], status: 413 },
      { path: "/v1/completions", chunked: true, headers: [KEY, JSON_TYPE], status: 413 },
      { path: "/llama3_chat", chunked: true, headers: [JSON_TYPE], status: 413 },
      { path: "/llama3_chat/progress", chunked: true, headers: [JSON_TYPE], status: 413 },
      { path: "/v1/chat/completions", chunked: false, headers: [KEY, JSON_TYPE], status: 413 },
      // Without a key the OpenAI routes answer before reading anything.
      { path: "/v1/chat/completions", chunked: true, headers: [JSON_TYPE], status: 401 }
    ]
    let peak = rss0
    for (const c of cases) {
      const r = await streamBody(c.path, total, c)
      peak = Math.max(peak, process.memoryUsage().rss)
      expect(r.status, `${c.path} chunked=${c.chunked}`).toBe(c.status)
      // "At once": the client was stopped within a few MiB of the limit, not after sending everything.
      expect(r.sentBytes, c.path).toBeLessThan(MAX_BODY_BYTES + 64 * 1024 * 1024)
    }
    expect(peak - rss0).toBeLessThan(100 * 1024 * 1024)
    expect((await fetch(`${server.url}/health`)).status).toBe(200)
    expect((await post("/v1/chat/completions", chatBody, { authorization: "Bearer k1" })).status).toBe(200)
  })
})

describe("the JSON nesting limit", () => {
  const deep = (levels: number) => "[".repeat(levels) + "]".repeat(levels)

  it("finds the depth in one pass, ignoring brackets inside strings", () => {
    expect(nestsDeeperThan(deep(64), 64)).toBe(false)
    expect(nestsDeeperThan(deep(65), 64)).toBe(true)
    expect(nestsDeeperThan(JSON.stringify({ a: "[".repeat(500), b: "\\\"[[[[" }), 2)).toBe(false)
    expect(nestsDeeperThan(`{"a":"\\\\"${"[".repeat(5)}`, 3)).toBe(true)
  })

  it("a body nested 5,000 levels deep is a 400 naming the limit on every JSON route", async () => {
    const body = JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 3, stop: JSON.parse(deep(MAX_JSON_DEPTH - 4)) })
    const barelyDeep = await post("/v1/chat/completions", body, { authorization: "Bearer k1" })
    // Within the limit the nesting check stays silent: Schema names the field instead.
    expect(barelyDeep.status).toBe(400)
    expect(((await barelyDeep.json()) as { error: { param: string } }).error.param).toMatch(/^stop/)
    for (const path of ["/v1/chat/completions", "/v1/completions"]) {
      const r = await post(path, `{"messages":${deep(5000)}}`, { authorization: "Bearer k1" })
      expect(r.status, path).toBe(400)
      const error = ((await r.json()) as { error: { message: string; param: string } }).error
      expect(error.message).toMatch(/deeper than 64 levels/)
      expect(error.param).toBe("body")
    }
    for (const path of ["/llama3_chat", "/llama3_chat/progress", "/llama3_chat/cancel"]) {
      const r = await post(path, `{"key":"k1","job_id":${deep(5000)}}`)
      expect(r.status, path).toBe(400)
      expect(((await r.json()) as { success: boolean; error: Array<string> }).error.join(" ")).toMatch(/deeper than 64 levels/)
    }
  })

  it("AIME's chat_context string gets the same limit, in the body and in the query", async () => {
    const inBody = await post("/llama3_chat", JSON.stringify({ key: "k1", chat_context: deep(5000) }))
    expect(inBody.status).toBe(400)
    expect(((await inBody.json()) as { error: Array<string> }).error).toEqual(["chat_context: the JSON nests arrays or objects deeper than 64 levels, the limit"])
    const inQuery = await fetch(`${server.url}/llama3_chat?key=k1&chat_context=${encodeURIComponent(deep(1000))}`)
    expect(inQuery.status).toBe(400)
    expect(((await inQuery.json()) as { error: Array<string> }).error.join(" ")).toMatch(/chat_context.*deeper than 64 levels/)
  })
})

describe("odd methods", () => {
  it("CONNECT gets 405 with an OpenAI-shaped error instead of a dropped connection", async () => {
    const r = await rawRequest(port, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    expect(r.status).toBe(405)
    expect(JSON.parse(r.body).error.message).toMatch(/CONNECT.*not a proxy/)
  })

  it("TRACE, PROPFIND and an unknown method token are 4xx", async () => {
    for (const method of ["TRACE", "PROPFIND", "FOO"]) {
      const r = await rawRequest(port, requestHead(method, "/v1/models", [KEY, "Connection: close"]))
      expect(r.status, method).toBeGreaterThanOrEqual(400)
      expect(r.status, method).toBeLessThan(500)
    }
  })
})

describe("chat input shared by both APIs", () => {
  it("flattens text parts and maps developer to system", () => {
    expect(flattenMessages([
      { role: "developer", content: "Be brief." },
      { role: "user", content: [{ text: "Hel" }, { text: "lo" }] },
      { role: "assistant", content: "Hi" }
    ])).toEqual([{ role: "system", content: "Be brief." }, { role: "user", content: "Hello" }, { role: "assistant", content: "Hi" }])
  })

  it("describes values in one short line, and never throws", () => {
    expect(describeValue(undefined)).toBe("nothing")
    expect(describeValue("hot")).toBe("\"hot\"")
    expect(describeValue("x".repeat(100))).toHaveLength(60)
    let nested: unknown = 1
    for (let i = 0; i < 200_000; i++) nested = [nested]
    expect(describeValue(nested)).toBe("an array")
    const cyclic: Record<string, unknown> = {}
    cyclic["self"] = cyclic
    expect(describeValue(cyclic)).toBe("an object")
  })
})
