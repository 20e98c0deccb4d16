// A seeded fuzz of the request edge: 1,200 generated malformed requests over raw sockets against every route (OpenAI,
// AIME, operations, the web page, unknown routes) of a real in-process server with API keys. Every one must get a
// 4xx answer (AIME's login keeps the protocol's 200 with `success: false` for a bad key): never a 5xx, a reset or
// silence. Afterwards the server must still be healthy and complete a real chat. CHORUS_FUZZ_SEED=<n> replays a run.
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
import { chunked, type RawAnswer, rawRequest, requestHead } from "../support/rawHttp.ts"
import { startServer, type TestServer } from "../support/server.ts"

const SEED = Number(process.env["CHORUS_FUZZ_SEED"] ?? 20261201)
const COUNT = 1_200
const CONCURRENCY = 8
const KEY = "fuzz-key"

let server: TestServer
let port: number
beforeAll(async () => {
  server = await startServer({ adapter: BenchAdapter, adapterOptions: {}, apiKeys: [KEY], engine: { maxNumSeqs: 4, contextLength: 4096 } })
  port = Number(new URL(server.url).port)
})
afterAll(() => server.close())

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
const makeRng = (seed: number) => {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1))
  const pick = <A>(xs: ReadonlyArray<A>): A => xs[int(0, xs.length - 1)]!
  return { next, int, pick }
}
type Rng = ReturnType<typeof makeRng>

/** What an answer must be: a 4xx, or (AIME login) anything below 500 that is a 4xx or says `success: false`. */
type Expectation = "4xx" | "aime-refusal"

interface FuzzCase {
  readonly name: string
  readonly head: Buffer
  readonly pieces: ReadonlyArray<Buffer>
  readonly halfClose: boolean
  readonly expect: Expectation
}

interface JsonRoute {
  readonly path: string
  /** A well-formed body with the key where the protocol carries it, for the mutators to break. */
  readonly base: Record<string, unknown>
  /** Fields and values of the wrong type or out of range, each enough on its own for a 4xx. */
  readonly bad: ReadonlyArray<readonly [string, string]>
  readonly aime: boolean
}

const deepText = (rng: Rng) => {
  const depth = rng.int(65, 20_000)
  return rng.next() < 0.5 ? "[".repeat(depth) + "1" + "]".repeat(depth) : "{\"a\":".repeat(depth) + "1" + "}".repeat(depth)
}
// Not -1e400: it parses to -0, a valid temperature.
const HUGE = ["1e309", "-1e309", "123456789012345678901234567890", "-123456789012345678901234567890", "NaN", "Infinity", "0x10", "1_000"]

const jsonRoutes: ReadonlyArray<JsonRoute> = [
  {
    path: "/v1/chat/completions",
    base: { messages: [{ role: "user", content: "Hi" }], max_tokens: 2 },
    aime: false,
    bad: [
      ["messages", "5"], ["messages", "\"hi\""], ["messages", "null"], ["messages", "{}"], ["messages", "[]"], ["messages", "[5]"],
      ["messages", "[{\"role\":\"bot\",\"content\":\"x\"}]"], ["messages", "[{\"role\":\"user\",\"content\":{}}]"],
      ["messages", "[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":\"x\"}]}]"], ["messages", "[{\"role\":\"user\",\"content\":null}]"],
      ["max_tokens", "\"3\""], ["max_tokens", "true"], ["max_tokens", "[]"], ["max_tokens", "0"], ["max_tokens", "1e309"], ["max_tokens", "123456789012345678901234567890"],
      ["temperature", "1e308"], ["temperature", "-1e308"], ["temperature", "\"hot\""], ["top_p", "0"], ["top_p", "1e300"], ["stream", "\"yes\""],
      ["model", "5"], ["model", "[]"], ["n", "9"], ["stop", "{}"], ["tools", "[{\"type\":\"function\"}]"], ["logprobs", "\"yes\""], ["seed", "1e309"], ["seed", "\"1\""]
    ]
  },
  {
    path: "/v1/completions",
    base: { prompt: "Hi", max_tokens: 2 },
    aime: false,
    bad: [
      ["prompt", "5"], ["prompt", "null"], ["prompt", "[]"], ["prompt", "[\"a\",\"b\"]"], ["prompt", "[1.5]"], ["prompt", "[99999999999]"], ["prompt", "{}"],
      ["max_tokens", "-1e400"], ["max_tokens", "1e20"], ["echo", "\"yes\""], ["best_of", "3"], ["suffix", "\"x\""], ["temperature", "3"], ["top_k", "-5"]
    ]
  },
  {
    path: "/llama3_chat",
    base: { key: KEY, prompt_input: "Hi", max_gen_tokens: 2 },
    aime: true,
    bad: [
      ["prompt_input", "5"], ["prompt_input", "{}"], ["prompt_input", "[]"], ["chat_context", "5"], ["chat_context", "{}"], ["chat_context", "true"],
      ["chat_context", "\"[{\\\"role\\\":1}]\""], ["chat_context", "\"[{nope\""], ["top_k", "\"a\""], ["top_k", "0"], ["top_k", "1e309"], ["temperature", "1e308"],
      ["max_gen_tokens", "123456789012345678901234567890"], ["wait_for_result", "\"maybe\""], ["key", "5"], ["key", "\"wrong\""], ["seed", "1"], ["colour", "\"red\""]
    ]
  },
  { path: "/llama3_chat/progress", base: { key: KEY, job_id: "nope#1" }, aime: true, bad: [["job_id", "5"], ["job_id", "{}"], ["job_id", "\"\""], ["key", "\"wrong\""]] },
  { path: "/llama3_chat/cancel", base: { key: KEY, job_id: "nope#2" }, aime: true, bad: [["job_id", "[]"], ["job_id", "null"], ["key", "[]"]] }
]

/** `{...base, field: raw}` as text, the raw value spliced in unparsed (it may not be valid JSON on purpose). */
const withField = (base: Record<string, unknown>, field: string, raw: string) => {
  const rest = JSON.stringify(Object.fromEntries(Object.entries(base).filter(([k]) => k !== field)))
  return `{${JSON.stringify(field)}:${raw}${rest === "{}" ? "}" : `,${rest.slice(1)}`}`
}

/** A malformed body for a route: each kind on its own guarantees a 4xx. */
const badBody = (rng: Rng, route: JsonRoute): { readonly kind: string; readonly body: Buffer } => {
  const fields = Object.keys(route.base)
  const kind = rng.pick(["nesting", "huge-number", "wrong-type", "invalid-utf8", "truncated", "duplicate-key", "form", "not-json"] as const)
  switch (kind) {
    case "nesting":
      return { kind, body: Buffer.from(withField(route.base, rng.pick([...fields, "extra"]), deepText(rng))) }
    case "huge-number": {
      const field = route.path === "/v1/chat/completions" || route.path === "/v1/completions" ? rng.pick(["max_tokens", "temperature", "top_p"]) : route.path === "/llama3_chat" ? rng.pick(["top_k", "temperature", "max_gen_tokens"]) : "job_id"
      const value = rng.pick(HUGE)
      // Big integers are in range for nothing here except the AIME job id, which is then simply not a string.
      return { kind, body: Buffer.from(withField(route.base, field, field === "top_p" && value.startsWith("-") ? value.slice(1) : value)) }
    }
    case "wrong-type": {
      const [field, raw] = rng.pick(route.bad)
      return { kind, body: Buffer.from(withField(route.base, field, raw)) }
    }
    case "invalid-utf8": {
      const text = Buffer.from(JSON.stringify(route.base))
      const at = rng.int(1, text.length - 1)
      const junk = Buffer.from(rng.pick([[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0x80], [0xe2, 0x82]]))
      return { kind, body: Buffer.concat([text.subarray(0, at), junk, text.subarray(at)]) }
    }
    case "truncated": {
      const text = JSON.stringify(route.base)
      return { kind, body: Buffer.from(text.slice(0, rng.int(route.aime ? 1 : 0, text.length - 1))) }
    }
    case "duplicate-key": {
      // JSON.parse keeps the last of duplicate keys: the last one is the bad one.
      const [field, raw] = rng.pick(route.bad)
      const text = JSON.stringify(route.base)
      return { kind, body: Buffer.from(`${text.slice(0, -1)},${JSON.stringify(field)}:${raw}}`) }
    }
    case "form":
      return { kind, body: Buffer.from(new URLSearchParams(Object.entries(route.base).map(([k, v]): [string, string] => [k, typeof v === "string" ? v : JSON.stringify(v)])).toString()) }
    case "not-json":
      return { kind, body: Buffer.from(rng.pick(["<xml/>", "undefined", "'single'", "{a:1}", "[1,]", "{\"a\":1}}", "\u0000", "--boundary\r\n\r\nx", "{\"messages\":[}"])) }
  }
}

const CONTENT_TYPES = ["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded", "application/xml", "image/png", "multipart/form-data; boundary=x", "application/json; charset=latin1", ""]

const absurdHeaders = (rng: Rng): ReadonlyArray<string> =>
  rng.pick([
    () => Array.from({ length: rng.int(2_100, 3_000) }, (_, i) => `x-fuzz-${i}: ${i}`),
    () => [`x-fuzz: ${"v".repeat(rng.int(17_000, 64_000))}`],
    () => [`cookie: ${"c=1; ".repeat(rng.int(4_000, 9_000))}`]
  ])()

/** Header sets Node's parser refuses with 400 before any route runs. */
const brokenHeaders = (rng: Rng, length: number): ReadonlyArray<string> =>
  rng.pick([
    [`Content-Length: ${length}`, `Content-Length: ${length + 1}`],
    [`Content-Length: ${length}`, "Transfer-Encoding: chunked"],
    ["Content-Length: -1"],
    ["Content-Length: 1e3"],
    ["Content-Length: 99999999999999999999999"],
    ["Transfer-Encoding: gzip"],
    [`Content-Length: ${length}`, "X-Bad: a\u0001b"],
    [`Content-Length: ${length}`, "Bad Header: x"]
  ])

const bytes = (text: string) => Buffer.from(text, "latin1")

const bodyCase = (rng: Rng): FuzzCase => {
  const route = rng.pick(jsonRoutes)
  const { kind, body } = badBody(rng, route)
  const auth = route.aime ? [] : [rng.next() < 0.85 ? `Authorization: Bearer ${KEY}` : rng.pick(["Authorization: fuzz-key", "Authorization: Bearer wrong", `Authorization: Bearer ${"k".repeat(8_000)}`, "Authorization: Basic Zm9vOmJhcg==", "Authorization: Bearer  "])]
  const contentType = kind === "form" ? "application/x-www-form-urlencoded" : rng.pick(CONTENT_TYPES)
  const headers = [...auth, ...(contentType === "" ? [] : [`Content-Type: ${contentType}`]), ...(rng.next() < 0.7 ? ["Connection: close"] : [])]
  const framing = rng.pick(["declared", "declared", "chunked", "chunked-truncated", "declared-short", "broken-headers", "absurd-headers", "expect-continue"] as const)
  const name = `POST ${route.path} ${kind} ${framing} ${contentType || "no content-type"}`
  switch (framing) {
    case "declared":
      return { name, head: bytes(requestHead("POST", route.path, [...headers, `Content-Length: ${body.length}`])), pieces: [body], halfClose: false, expect: "4xx" }
    case "expect-continue":
      return { name, head: bytes(requestHead("POST", route.path, [...headers, "Expect: 100-continue", `Content-Length: ${body.length}`])), pieces: [body], halfClose: false, expect: "4xx" }
    case "chunked": {
      const sizes = Array.from({ length: rng.int(1, 12) }, () => rng.int(1, 64))
      return { name, head: bytes(requestHead("POST", route.path, [...headers, "Transfer-Encoding: chunked"])), pieces: [chunked(body, sizes)], halfClose: false, expect: "4xx" }
    }
    case "chunked-truncated": {
      // The client sends part of a chunked body and then closes its side.
      const whole = chunked(body, [rng.int(1, 16), rng.int(1, 16)])
      return { name, head: bytes(requestHead("POST", route.path, [...headers, "Transfer-Encoding: chunked"])), pieces: [whole.subarray(0, rng.int(0, whole.length - 6))], halfClose: true, expect: "4xx" }
    }
    case "declared-short":
      return { name, head: bytes(requestHead("POST", route.path, [...headers, `Content-Length: ${body.length + rng.int(1, 1000)}`])), pieces: [body], halfClose: true, expect: "4xx" }
    case "broken-headers":
      return { name, head: bytes(requestHead("POST", route.path, [...headers, ...brokenHeaders(rng, body.length)])), pieces: [body], halfClose: false, expect: "4xx" }
    case "absurd-headers":
      return { name, head: bytes(requestHead("POST", route.path, [...headers, ...absurdHeaders(rng), `Content-Length: ${body.length}`])), pieces: [body], halfClose: false, expect: "4xx" }
  }
}

const ALL_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/llama3_chat", "/llama3_chat/progress", "/llama3_chat/cancel", "/llama3_chat/login", "/health", "/ready", "/metrics", "/", "/index.html", "/app.js", "/style.css"]
const UNKNOWN_PATHS = ["/v2/chat", "/v1/chat", "/v1/chat/completions/extra", "/llama3_chat/nope", "/%ZZ", "/../../etc/passwd", "/app.js%00", "/static/../package.json", "/api/endpoints/other", `/${"a".repeat(8_000)}`, "/\u00e9", "/health/x", "/metrics/x"]

/** A request the routes have no handler for: a method a path does not take, an unknown path, or a broken request line. */
const routingCase = (rng: Rng): FuzzCase => {
  const kind = rng.pick(["wrong-method", "unknown-path", "bad-request-line", "connect", "absurd-headers", "no-key"] as const)
  const close = "Connection: close"
  switch (kind) {
    case "wrong-method": {
      const path = rng.pick(ALL_PATHS)
      const gets = ["/v1/models", "/health", "/ready", "/metrics", "/", "/index.html", "/app.js", "/style.css"]
      // Each route answers GET, POST or both; every other method is refused (OPTIONS and HEAD are left to CORS and the platform).
      const method = rng.pick(["PUT", "DELETE", "PATCH", "TRACE", "PROPFIND", "MKCOL", "FOO", ...(gets.includes(path) ? ["POST"] : path.startsWith("/v1/") || path.endsWith("/cancel") ? ["GET"] : [])])
      return { name: `${method} ${path}`, head: bytes(requestHead(method, path, [close, `Authorization: Bearer ${KEY}`, "Content-Length: 0"])), pieces: [], halfClose: false, expect: "4xx" }
    }
    case "unknown-path": {
      const path = rng.pick(UNKNOWN_PATHS)
      const method = rng.pick(["GET", "POST"])
      return { name: `${method} ${path.slice(0, 40)}`, head: Buffer.from(requestHead(method, path, [close, `Authorization: Bearer ${KEY}`, "Content-Length: 0"])), pieces: [], halfClose: false, expect: "4xx" }
    }
    case "bad-request-line": {
      const line = rng.pick(["GET /health HTTP/9.9", "GET /health HTTP/1.1 extra", "\u0000\u0001\u0002garbage", "GET /he alth HTTP/1.1", "POST", "GET /health HTTP/1.1\nHost: x", "G\u00c9T /health HTTP/1.1"])
      return { name: `request line ${JSON.stringify(line)}`, head: bytes(`${line}\r\nHost: 127.0.0.1\r\n\r\n`), pieces: [], halfClose: false, expect: "4xx" }
    }
    case "connect":
      return { name: "CONNECT", head: bytes("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"), pieces: [], halfClose: false, expect: "4xx" }
    case "absurd-headers": {
      const path = rng.pick(ALL_PATHS)
      return { name: `GET ${path} absurd headers`, head: bytes(requestHead("GET", path, [close, ...absurdHeaders(rng)])), pieces: [], halfClose: false, expect: "4xx" }
    }
    case "no-key": {
      const path = rng.pick(["/v1/models", "/llama3_chat", "/llama3_chat/progress", "/llama3_chat/login", "/v1/chat/completions"])
      const refused = ["", "?key=wrong", "?key=", "?client_session_auth_key=nope"]
      const invalid = [`?key=${KEY}&top_k=abc&prompt_input=x`, `?key=${KEY}&chat_context=${encodeURIComponent("[".repeat(2000))}`, `?key=${KEY}&temperature=9&prompt_input=x`, `?key=${KEY}&bogus=1`]
      const query = path.endsWith("/login") ? rng.pick(refused) : path.startsWith("/llama3") ? rng.pick([...refused, ...invalid]) : ""
      const auth = path.startsWith("/v1/") ? [rng.pick(["", "Authorization: fuzz-key", "Authorization: Bearer nope", "Authorization: Digest x"])].filter((h) => h !== "") : []
      return { name: `GET ${path}${query.slice(0, 40)} ${auth.join("")}`, head: bytes(requestHead("GET", `${path}${query}`, [close, ...auth])), pieces: [], halfClose: false, expect: path.endsWith("/login") ? "aime-refusal" : "4xx" }
    }
  }
}

const generate = (seed: number, count: number): Array<FuzzCase> => {
  const rng = makeRng(seed)
  return Array.from({ length: count }, () => (rng.next() < 0.7 ? bodyCase(rng) : routingCase(rng)))
}

const judge = (c: FuzzCase, r: RawAnswer): string | undefined => {
  if (r.status === undefined) return `no answer (${r.end})`
  if (r.status >= 500) return `status ${r.status}: ${r.body.slice(0, 200)}`
  if (r.status >= 400) return undefined
  if (c.expect === "aime-refusal" && /"success":false/.test(r.body)) return undefined
  return `status ${r.status}: ${r.body.slice(0, 200)}`
}

describe(`fuzzing the request edge (seed ${SEED})`, () => {
  it(`${COUNT} malformed requests over every route are all answered with a 4xx`, async () => {
    const cases = generate(SEED, COUNT)
    const failures: Array<string> = []
    const statuses = new Map<number | string, number>()
    let next = 0
    const worker = async () => {
      while (next < cases.length) {
        const index = next++
        const c = cases[index]!
        const r = await rawRequest(port, c.head, { pieces: c.pieces, halfClose: c.halfClose, timeoutMs: 10_000 })
        statuses.set(r.status ?? r.end, (statuses.get(r.status ?? r.end) ?? 0) + 1)
        const problem = judge(c, r)
        if (problem !== undefined) failures.push(`#${index} ${c.name}: ${problem}`)
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
    expect(failures.slice(0, 10), `seed ${SEED}: ${failures.length} failures`).toEqual([])
    // The generator reaches the answers it aims at: validation, auth, unknown jobs, routing, size and header limits.
    for (const status of [400, 401, 402, 404, 405, 431]) expect(statuses.get(status) ?? 0, `answers with ${status}`).toBeGreaterThan(0)
  }, 90_000)

  it("the server is alive afterwards: healthy, ready, and a real chat completes", async () => {
    expect((await fetch(`${server.url}/health`)).status).toBe(200)
    expect((await fetch(`${server.url}/ready`)).status).toBe(200)
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 })
    const r = await client.chat.completions.create({ model: server.engine.model.id, messages: [{ role: "user", content: "Still there?" }], max_tokens: 4 })
    expect(r.usage?.completion_tokens).toBe(4)
    expect(r.choices[0]?.message.content?.length).toBeGreaterThan(0)
  })

  it("the generator is deterministic for a seed", () => {
    const a = generate(7, 50).map((c) => Buffer.concat([c.head, ...c.pieces]).toString("base64"))
    const b = generate(7, 50).map((c) => Buffer.concat([c.head, ...c.pieces]).toString("base64"))
    expect(a).toEqual(b)
  })
})
