// CORS as a browser enforces it: headless Chromium opens a page served from a second origin (another localhost
// port), loads AIME's official JS client (test/support/aime-js/model_api.js) there, and lets it validate its key,
// log in and run a job with progress polling against Chorus's AIME endpoint; the same page streams an OpenAI chat
// completion with fetch. With Chorus allowing the page's origin this works; without CORS, or from an origin not on
// the list, the browser blocks it.
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import { chromium, type Browser, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
import { repoRoot } from "../support/fixtures.ts"
import { startServer } from "../support/server.ts"
import { type ServeProcess, serveFailing, startServeProcess } from "../support/serveProcess.ts"

const API_KEY = "k-browser"
const modelApiJs = fs.readFileSync(path.join(repoRoot, "test/support/aime-js/model_api.js"), "utf8")

/**
 * The second origin's page. model_api.js only uses relative URLs (it expects to be served by the API server), so
 * the page's <base> points them at Chorus; the page's own origin stays this server's. `module` is defined because
 * the client ends with a CommonJS export.
 */
const pageHtml = (chorus: string, self: string) => `<!doctype html>
<html><head><meta charset="utf-8"><base href="${chorus}/">
<script>window.module = { exports: {} }</script>
<script src="${self}/model_api.js"></script>
</head><body>second origin</body></html>`

let browser: Browser
let pages: http.Server
let allowedOrigin: string
let otherOrigin: string

const listen = (server: http.Server) =>
  new Promise<string>((resolve) => server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)))

beforeAll(async () => {
  // One page server on two ports: two origins, one of which Chorus will allow.
  const handler: http.RequestListener = (req, res) => {
    const url = new URL(req.url ?? "/", `http://${req.headers.host}`)
    if (url.pathname === "/model_api.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(modelApiJs)
    } else {
      res.writeHead(200, { "content-type": "text/html" }).end(pageHtml(url.searchParams.get("chorus") ?? "", `http://${req.headers.host}`))
    }
  }
  pages = http.createServer(handler)
  const second = http.createServer(handler)
  allowedOrigin = await listen(pages)
  otherOrigin = await listen(second)
  pages.on("close", () => second.close())
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"]
  })
}, 60_000)

afterAll(async () => {
  await browser?.close()
  pages?.close()
})

const openPage = async (origin: string, chorus: string): Promise<Page> => {
  const page = await browser.newPage()
  await page.goto(`${origin}/?chorus=${encodeURIComponent(chorus)}`)
  return page
}

interface AimeOutcome {
  readonly ok: boolean
  readonly error?: string
  readonly result?: { readonly text: string; readonly num_generated_tokens: number; readonly success?: boolean }
  readonly progressCalls?: number
}

// Runs in the page (a string: this project's TypeScript has no DOM types). The client's own call sequence:
// initAPIKey, doAPILogin, then doAPIRequest with a progress callback (so it polls /progress). Errors surface through
// its error callbacks, or as a rejected promise where the client has none.
const runAimeClient = (key: string) => `new Promise((resolve) => {
  const fail = (e) => resolve({ ok: false, error: String(e && e.message || e) })
  const model = new ModelAPI("llama3_chat", "aime", ${JSON.stringify(key)}, 50)
  let progressCalls = 0
  model.initAPIKey(() => model.doAPILogin(() => {
    model.doAPIRequest(
      { chat_context: [{ role: "system", content: "You are terse." }], prompt_input: "Hello from another origin", max_gen_tokens: 6, temperature: 0 },
      (result) => resolve({ ok: true, result, progressCalls }),
      () => { progressCalls++ }
    ).catch(fail)
  }, fail), fail)
  setTimeout(() => fail("no answer within 20 s"), 20000)
})`

interface StreamOutcome {
  readonly ok: boolean
  readonly status?: number
  readonly text?: string
  readonly requestId?: string | null
  readonly error?: string
}

const fetchStream = (body: unknown) => `fetch(new URL("v1/chat/completions", document.baseURI), {
  method: "POST",
  headers: { "content-type": "application/json", authorization: "Bearer ${API_KEY}" },
  body: ${JSON.stringify(JSON.stringify(body))}
}).then(async (res) => {
  const reader = res.body.getReader(), decoder = new TextDecoder()
  let text = ""
  for (;;) { const { value, done } = await reader.read(); if (done) break; text += decoder.decode(value, { stream: true }) }
  return { ok: true, status: res.status, text, requestId: res.headers.get("x-request-id") }
}, (e) => ({ ok: false, error: String(e) }))`

describe("CORS with --cors-origin", () => {
  let chorus: ServeProcess

  beforeAll(async () => {
    chorus = await startServeProcess(["--adapter", "bench", "--api-key", API_KEY, "--cors-origin", allowedOrigin, "--cors-origin", "https://app.example.com"])
  }, 60_000)
  afterAll(async () => {
    expect(await chorus.stop()).toBe(0)
  })

  it("AIME's JS client on an allowed origin validates its key, logs in, runs a job and polls it to the result", async () => {
    const page = await openPage(allowedOrigin, chorus.url)
    try {
      const outcome = (await page.evaluate(runAimeClient(API_KEY))) as AimeOutcome
      expect(outcome.error).toBeUndefined()
      expect(outcome.ok).toBe(true)
      expect(outcome.result!.num_generated_tokens).toBe(6)
      expect(typeof outcome.result!.text).toBe("string")
      // The client reports progress once by itself, then once per poll that found the job still running.
      expect(outcome.progressCalls).toBeGreaterThanOrEqual(1)
    } finally {
      await page.close()
    }
  }, 60_000)

  it("a streamed OpenAI chat completion from the allowed origin arrives whole, with x-request-id readable; errors are readable too", async () => {
    const page = await openPage(allowedOrigin, chorus.url)
    try {
      const ok = (await page.evaluate(fetchStream({ messages: [{ role: "user", content: "hi" }], max_tokens: 5, stream: true }))) as StreamOutcome
      expect(ok.error).toBeUndefined()
      expect(ok.status).toBe(200)
      expect(ok.text!.match(/^data: \{/gm)!.length).toBeGreaterThanOrEqual(5)
      expect(ok.text).toContain("data: [DONE]")
      expect(ok.requestId).toMatch(/^[0-9a-f-]{36}$/)
      // An error response carries the CORS headers as well: the page can read the status and the message.
      const bad = (await page.evaluate(fetchStream({ messages: [{ role: "user", content: "hi" }], max_tokens: -3, stream: true }))) as StreamOutcome
      expect(bad.ok).toBe(true)
      expect(bad.status).toBe(400)
      expect(bad.text).toMatch(/max_tokens/)
    } finally {
      await page.close()
    }
  }, 60_000)

  it("a page on an origin not on the list is blocked by the browser, and its requests get no CORS headers", async () => {
    const page = await openPage(otherOrigin, chorus.url)
    try {
      const aime = (await page.evaluate(runAimeClient(API_KEY))) as AimeOutcome
      expect(aime.ok).toBe(false)
      expect(aime.error).toMatch(/Failed to fetch/)
      const stream = (await page.evaluate(fetchStream({ messages: [{ role: "user", content: "hi" }], max_tokens: 5, stream: true }))) as StreamOutcome
      expect(stream.ok).toBe(false)
      expect(stream.error).toMatch(/Failed to fetch/)
    } finally {
      await page.close()
    }
    const preflight = { method: "OPTIONS", headers: { "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type" } }
    const denied = await fetch(`${chorus.url}/v1/chat/completions`, { ...preflight, headers: { ...preflight.headers, origin: otherOrigin } })
    expect([...denied.headers.keys()].filter((h) => h.startsWith("access-control-"))).toEqual([])
    const allowed = await fetch(`${chorus.url}/v1/chat/completions`, { ...preflight, headers: { ...preflight.headers, origin: allowedOrigin } })
    expect(allowed.status).toBe(204)
    expect(allowed.headers.get("access-control-allow-origin")).toBe(allowedOrigin)
    expect(allowed.headers.get("access-control-allow-methods")).toContain("POST")
    expect(allowed.headers.get("access-control-allow-headers")).toBe("authorization,content-type")
    expect(allowed.headers.get("access-control-max-age")).toBe("600")
    const plain = await fetch(`${chorus.url}/v1/models`, { headers: { origin: "https://app.example.com", authorization: `Bearer ${API_KEY}` } })
    expect(plain.headers.get("access-control-allow-origin")).toBe("https://app.example.com")
    expect(plain.headers.get("access-control-expose-headers")).toBe("x-request-id")
  }, 60_000)
})

describe("corsOrigins on an embedded server", () => {
  it("`*` answers any origin with that origin; no Origin header, no CORS headers", async () => {
    const server = await startServer({ adapter: BenchAdapter, adapterOptions: {}, corsOrigins: ["*"] })
    try {
      const preflight = await fetch(`${server.url}/llama3_chat`, {
        method: "OPTIONS",
        headers: { origin: "http://anything.test:1234", "access-control-request-method": "POST", "access-control-request-headers": "content-type" }
      })
      expect(preflight.status).toBe(204)
      expect(preflight.headers.get("access-control-allow-origin")).toBe("http://anything.test:1234")
      const sse = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { origin: "https://elsewhere.test", "content-type": "application/json" },
        body: JSON.stringify({ prompt: "x", max_tokens: 3, stream: true })
      })
      expect(sse.headers.get("content-type")).toBe("text/event-stream")
      expect(sse.headers.get("access-control-allow-origin")).toBe("https://elsewhere.test")
      expect(await sse.text()).toContain("data: [DONE]")
      const noOrigin = await fetch(`${server.url}/health`)
      expect([...noOrigin.headers.keys()].filter((h) => h.startsWith("access-control-"))).toEqual([])
    } finally {
      await server.close()
    }
  }, 60_000)
})

describe("CORS off (the default)", () => {
  it("the same page and client fail: the browser blocks every cross-origin call", async () => {
    const chorus = await startServeProcess(["--adapter", "bench", "--api-key", API_KEY])
    const page = await openPage(allowedOrigin, chorus.url)
    try {
      const aime = (await page.evaluate(runAimeClient(API_KEY))) as AimeOutcome
      expect(aime.ok).toBe(false)
      expect(aime.error).toMatch(/Failed to fetch/)
      const stream = (await page.evaluate(fetchStream({ messages: [{ role: "user", content: "hi" }], max_tokens: 5, stream: true }))) as StreamOutcome
      expect(stream.ok).toBe(false)
      const direct = await fetch(`${chorus.url}/v1/models`, { headers: { origin: allowedOrigin, authorization: `Bearer ${API_KEY}` } })
      expect(direct.status).toBe(200)
      expect(direct.headers.get("access-control-allow-origin")).toBeNull()
    } finally {
      await page.close()
      expect(await chorus.stop()).toBe(0)
    }
  }, 60_000)

  it("refuses a --cors-origin that is not an origin with one line and exit 2", () => {
    const r = serveFailing(["--adapter", "bench", "--cors-origin", "https://app.example.com/path"])
    expect(r.status).toBe(2)
    expect(r.stderr).toBe(
      "chorus: --cors-origin must be * or an origin such as https://app.example.com (scheme, host, optional port; no path), got 'https://app.example.com/path'\n"
    )
  }, 30_000)
})
