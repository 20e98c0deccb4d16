// Malformed requests over every route: each is a 4xx whose body names the problem, none is a 5xx, and the server
// keeps serving afterwards.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
import { startServer, type TestServer } from "../support/server.ts"

let server: TestServer
beforeAll(async () => {
  server = await startServer({ adapter: BenchAdapter, adapterOptions: {}, engine: { maxNumSeqs: 4, contextLength: 4096 } })
})
afterAll(() => server.close())

const user = [{ role: "user", content: "Hi" }]
const chat = (extra: Record<string, unknown>) => JSON.stringify({ messages: user, ...extra })

interface Case {
  readonly name: string
  readonly method?: string
  readonly path: string
  readonly body?: string
  readonly status: number
  /** What the error text must mention. */
  readonly names: RegExp
}

const openai: ReadonlyArray<Case> = [
  { name: "bad JSON", path: "/v1/chat/completions", body: "{messages:", status: 400, names: /not valid JSON/ },
  { name: "empty body", path: "/v1/chat/completions", body: "", status: 400, names: /body is empty/ },
  { name: "array body", path: "/v1/chat/completions", body: "[1,2]", status: 400, names: /Expected object/ },
  { name: "missing messages", path: "/v1/chat/completions", body: "{}", status: 400, names: /messages/ },
  { name: "empty messages", path: "/v1/chat/completions", body: JSON.stringify({ messages: [] }), status: 400, names: /messages.*at least 1/ },
  { name: "messages not an array", path: "/v1/chat/completions", body: JSON.stringify({ messages: "hi" }), status: 400, names: /messages/ },
  { name: "unknown role", path: "/v1/chat/completions", body: JSON.stringify({ messages: [{ role: "bot", content: "x" }] }), status: 400, names: /messages\[0\]\.role/ },
  { name: "null user content", path: "/v1/chat/completions", body: JSON.stringify({ messages: [{ role: "user", content: null }] }), status: 400, names: /messages\[0\]/ },
  { name: "content of the wrong type", path: "/v1/chat/completions", body: JSON.stringify({ messages: [{ role: "user", content: 5 }] }), status: 400, names: /messages\[0\]\.content/ },
  { name: "missing role", path: "/v1/chat/completions", body: JSON.stringify({ messages: [{ content: "x" }] }), status: 400, names: /messages\[0\]\.role/ },
  { name: "temperature as a string", path: "/v1/chat/completions", body: chat({ temperature: "hot" }), status: 400, names: /temperature.*"hot"/ },
  { name: "temperature above 2", path: "/v1/chat/completions", body: chat({ temperature: 2.5 }), status: 400, names: /temperature.*2\.5/ },
  { name: "negative temperature", path: "/v1/chat/completions", body: chat({ temperature: -1 }), status: 400, names: /temperature.*-1/ },
  { name: "top_p 0", path: "/v1/chat/completions", body: chat({ top_p: 0 }), status: 400, names: /top_p/ },
  { name: "top_p 1.5", path: "/v1/chat/completions", body: chat({ top_p: 1.5 }), status: 400, names: /top_p.*1\.5/ },
  { name: "max_tokens 0", path: "/v1/chat/completions", body: chat({ max_tokens: 0 }), status: 400, names: /max_tokens/ },
  { name: "max_tokens fractional", path: "/v1/chat/completions", body: chat({ max_tokens: 2.5 }), status: 400, names: /max_tokens/ },
  { name: "max_tokens beyond the context", path: "/v1/chat/completions", body: chat({ max_tokens: 100_000 }), status: 400, names: /max_tokens.*100000/ },
  { name: "n = 9", path: "/v1/chat/completions", body: chat({ n: 9 }), status: 400, names: /\bn\b/ },
  { name: "stop as a number", path: "/v1/chat/completions", body: chat({ stop: 5 }), status: 400, names: /stop/ },
  { name: "too many stop strings", path: "/v1/chat/completions", body: chat({ stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }), status: 400, names: /stop/ },
  { name: "seed as a string", path: "/v1/chat/completions", body: chat({ seed: "abc" }), status: 400, names: /seed/ },
  { name: "top_logprobs without logprobs", path: "/v1/chat/completions", body: chat({ top_logprobs: 3 }), status: 400, names: /top_logprobs/ },
  { name: "top_logprobs above 20", path: "/v1/chat/completions", body: chat({ logprobs: true, top_logprobs: 21 }), status: 400, names: /top_logprobs/ },
  { name: "a tool without its function", path: "/v1/chat/completions", body: chat({ tools: [{ type: "function" }] }), status: 400, names: /tools/ },
  { name: "legacy functions", path: "/v1/chat/completions", body: chat({ functions: [{ name: "f" }] }), status: 400, names: /unsupported field 'functions'/ },
  { name: "tool_choice naming no tool", path: "/v1/chat/completions", body: chat({ tools: [{ type: "function", function: { name: "f" } }], tool_choice: { type: "function", function: { name: "g" } } }), status: 400, names: /tool_choice/ },
  { name: "stream as a string", path: "/v1/chat/completions", body: chat({ stream: "yes" }), status: 400, names: /stream/ },
  { name: "stream_options of the wrong type", path: "/v1/chat/completions", body: chat({ stream: true, stream_options: 3 }), status: 400, names: /stream_options/ },
  { name: "presence_penalty out of range", path: "/v1/chat/completions", body: chat({ presence_penalty: 3 }), status: 400, names: /presence_penalty/ },
  { name: "an unknown model", path: "/v1/chat/completions", body: chat({ model: "gpt-4o" }), status: 404, names: /gpt-4o/ },
  { name: "an oversized body", path: "/v1/chat/completions", body: chat({ pad: "x".repeat(5 * 1024 * 1024) }), status: 413, names: /limit|larger/ },
  { name: "completion without a prompt", path: "/v1/completions", body: JSON.stringify({ max_tokens: 3 }), status: 400, names: /prompt/ },
  { name: "completion with two prompts", path: "/v1/completions", body: JSON.stringify({ prompt: ["a", "b"] }), status: 400, names: /prompt/ },
  { name: "completion with token ids outside the vocabulary", path: "/v1/completions", body: JSON.stringify({ prompt: [1, 999_999] }), status: 400, names: /999999/ },
  { name: "completion with best_of above n", path: "/v1/completions", body: JSON.stringify({ prompt: "a", best_of: 3 }), status: 400, names: /best_of/ },
  { name: "completion with logprobs above 5", path: "/v1/completions", body: JSON.stringify({ prompt: "a", logprobs: 6 }), status: 400, names: /logprobs/ },
  { name: "completion with an empty prompt", path: "/v1/completions", body: JSON.stringify({ prompt: [] }), status: 400, names: /prompt/ }
]

const aime: ReadonlyArray<Case> = [
  { name: "AIME: bad JSON", path: "/llama3_chat", body: "{chat_context", status: 400, names: /JSON/ },
  { name: "AIME: an unknown parameter", path: "/llama3_chat", body: JSON.stringify({ prompt_input: "hi", colour: "red" }), status: 400, names: /Invalid input parameter\(s\): colour/ },
  { name: "AIME: chat_context that is not JSON", path: "/llama3_chat", body: JSON.stringify({ chat_context: "[{nope" }), status: 400, names: /chat_context/ },
  { name: "AIME: a message with an unknown role", path: "/llama3_chat", body: JSON.stringify({ chat_context: JSON.stringify([{ role: "robot", content: "x" }]) }), status: 400, names: /role/ },
  { name: "AIME: temperature above 1", path: "/llama3_chat", body: JSON.stringify({ prompt_input: "hi", temperature: 1.5 }), status: 400, names: /temperature/ },
  { name: "AIME: top_k 0", path: "/llama3_chat", body: JSON.stringify({ prompt_input: "hi", top_k: 0 }), status: 400, names: /top_k/ },
  { name: "AIME: max_gen_tokens as a string", path: "/llama3_chat", body: JSON.stringify({ prompt_input: "hi", max_gen_tokens: "many" }), status: 400, names: /max_gen_tokens/ },
  { name: "AIME: text and chat together", path: "/llama3_chat", body: JSON.stringify({ text_context: "a", chat_context: JSON.stringify([{ role: "user", content: "b" }]) }), status: 400, names: /text_context/ },
  { name: "AIME: progress without a job id", path: "/llama3_chat/progress", body: JSON.stringify({}), status: 402, names: /No job_id given/ },
  { name: "AIME: progress of an unknown job", path: "/llama3_chat/progress", body: JSON.stringify({ job_id: "nope#1" }), status: 402, names: /no active request with this job id nope#1/ },
  { name: "AIME: cancel of an unknown job", path: "/llama3_chat/cancel", body: JSON.stringify({ job_id: "nope#2" }), status: 402, names: /nope#2/ }
]

const run = async (c: Case) => {
  const r = await fetch(`${server.url}${c.path}`, {
    method: c.method ?? "POST",
    headers: { "content-type": "application/json" },
    ...(c.body === undefined ? {} : { body: c.body })
  })
  return { status: r.status, text: await r.text() }
}

describe("malformed requests over every route", () => {
  it.each(openai.map((c) => [c.name, c] as const))("%s", async (_, c) => {
    const r = await run(c)
    expect(r.status).toBe(c.status)
    const body = JSON.parse(r.text) as { error: { message: string; type: string } }
    expect(body.error.message).toMatch(c.names)
    expect(body.error.message.includes("\n")).toBe(false)
  })

  it.each(aime.map((c) => [c.name, c] as const))("%s", async (_, c) => {
    const r = await run(c)
    expect(r.status).toBe(c.status)
    const body = JSON.parse(r.text) as { success: boolean; error: string | Array<string> }
    expect(body.success).toBe(false)
    expect([body.error].flat().join(" ")).toMatch(c.names)
  })

  it("an unknown route is a 404, not a 5xx", async () => {
    const r = await fetch(`${server.url}/v2/chat`, { method: "POST", body: "{}" })
    expect(r.status).toBe(404)
  })

  it("the server still serves after all of them", async () => {
    const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: chat({ max_tokens: 3 }) })
    expect(r.status).toBe(200)
    expect(((await r.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(3)
  })
})
