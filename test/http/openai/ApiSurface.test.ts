// The OpenAI surface agents need, through the official `openai` client and plain fetch against a real server on the
// embedded default Llama 3 model: logprobs (chat and completions, streamed and not), n > 1, echo, lenient inputs,
// /v1/models/{id}, /tokenize and /detokenize, /version, JSON 404s and /v1/responses.
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../../src/adapters/llama3/Llama3Adapter.ts"
import { startServer, type TestServer } from "../../support/server.ts"

let server: TestServer
let client: OpenAI
let model: string

beforeAll(async () => {
  server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, engine: { maxNumSeqs: 8 } })
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 })
  model = (await client.models.list()).data[0]!.id
}, 120_000)
afterAll(() => server.close())

const post = async (path: string, body: unknown) => {
  const r = await fetch(`${server.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
  return { status: r.status, body: (await r.json()) as any }
}

const messages = [{ role: "user" as const, content: "Name three colours." }]

describe("logprobs", () => {
  it("chat: each token's logprob, and at temperature 0 it is the largest of the top_logprobs", async () => {
    const r = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 5 })
    const content = r.choices[0]!.logprobs!.content!
    const generated = r.usage!.completion_tokens
    // An end-of-turn token has no entry (it is not text).
    expect(content.length).toBe(r.choices[0]!.finish_reason === "stop" ? generated - 1 : generated)
    expect(content.length).toBeGreaterThan(0)
    for (const entry of content) {
      expect(entry.top_logprobs).toHaveLength(5)
      expect(entry.logprob).toBeLessThanOrEqual(0)
      expect(entry.logprob).toBeCloseTo(Math.max(...entry.top_logprobs.map((t) => t.logprob)), 4)
      expect(entry.token).toBe(entry.top_logprobs[0]!.token)
      expect(entry.bytes!.length).toBeGreaterThan(0)
      const sorted = [...entry.top_logprobs].sort((a, b) => b.logprob - a.logprob)
      expect(entry.top_logprobs.map((t) => t.logprob)).toEqual(sorted.map((t) => t.logprob))
    }
    expect(content.map((c) => c.token).join("")).toBe(r.choices[0]!.message.content)

    // Streamed: the same entries, chunk by chunk.
    const stream = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 5, stream: true })
    const streamed: Array<OpenAI.Chat.Completions.ChatCompletionTokenLogprob> = []
    for await (const chunk of stream) for (const c of chunk.choices) streamed.push(...(c.logprobs?.content ?? []))
    expect(streamed.map((e) => [e.token, e.logprob.toFixed(4)])).toEqual(content.map((e) => [e.token, e.logprob.toFixed(4)]))
  })

  it("chat: logprobs without top_logprobs gives empty top lists", async () => {
    const r = await client.chat.completions.create({ model, messages, max_tokens: 3, logprobs: true, ignore_eos: true } as any)
    const content = r.choices[0]!.logprobs!.content!
    expect(content).toHaveLength(3)
    for (const entry of content) expect(entry.top_logprobs).toEqual([])
  })

  it("completions: tokens, token_logprobs, top_logprobs and text_offset, streamed and not", async () => {
    const body = { model, prompt: "Once upon a time", max_tokens: 6, temperature: 0, logprobs: 3, ignore_eos: true } as const
    const r = await client.completions.create(body as any)
    const lp = r.choices[0]!.logprobs!
    expect(lp.tokens).toHaveLength(6)
    expect(lp.token_logprobs).toHaveLength(6)
    for (let i = 0; i < 6; i++) {
      const top = lp.top_logprobs![i]!
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(3)
      expect(lp.token_logprobs![i]).toBeCloseTo(Math.max(...Object.values(top)), 4)
      expect(lp.text_offset![i]).toBe(i === 0 ? 0 : lp.text_offset![i - 1]! + lp.tokens![i - 1]!.length)
    }
    const stream = await client.completions.create({ ...body, stream: true } as any) as unknown as AsyncIterable<OpenAI.Completions.Completion>
    const tokens: Array<string> = []
    const offsets: Array<number> = []
    for await (const chunk of stream) {
      for (const c of chunk.choices) tokens.push(...(c.logprobs?.tokens ?? [])), offsets.push(...(c.logprobs?.text_offset ?? []))
    }
    expect(tokens).toEqual(lp.tokens)
    expect(offsets).toEqual(lp.text_offset)
  })
})

describe("n > 1", () => {
  it("answers n choices, reproducible with a seed; usage counts the prompt once", async () => {
    const ask = () => client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 1, seed: 7, n: 3 })
    const a = await ask()
    const b = await ask()
    expect(a.choices.map((c) => c.index)).toEqual([0, 1, 2])
    expect(b.choices.map((c) => c.message.content)).toEqual(a.choices.map((c) => c.message.content))
    const one = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 1, seed: 7 })
    expect(a.choices[0]!.message.content).toBe(one.choices[0]!.message.content)
    expect(a.usage!.prompt_tokens).toBe(one.usage!.prompt_tokens)
    expect(a.usage!.completion_tokens).toBeGreaterThanOrEqual(3)
    expect(a.usage!.total_tokens).toBe(a.usage!.prompt_tokens + a.usage!.completion_tokens)

    // Streamed: chunks carry their choice index; each choice's text is the non-streamed one.
    const stream = await client.chat.completions.create({
      model, messages, max_tokens: 6, temperature: 1, seed: 7, n: 3, stream: true, stream_options: { include_usage: true }
    })
    const texts = ["", "", ""]
    const finished = new Set<number>()
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        texts[c.index] += c.delta.content ?? ""
        if (c.finish_reason !== null) finished.add(c.index)
      }
      if (chunk.usage) usage = chunk.usage
    }
    expect(texts).toEqual(a.choices.map((c) => c.message.content))
    expect([...finished].sort()).toEqual([0, 1, 2])
    expect(usage).toEqual(a.usage)
  })

  it("completions take n too", async () => {
    const r = await post("/v1/completions", { prompt: "Hello", max_tokens: 3, n: 2, seed: 1, temperature: 1, ignore_eos: true })
    expect(r.status).toBe(200)
    expect(r.body.choices.map((c: any) => c.index)).toEqual([0, 1])
    expect(r.body.usage.completion_tokens).toBe(6)
  })
})

describe("echo", () => {
  it("prepends the prompt, with the prompt's logprobs when asked", async () => {
    const plain = await post("/v1/completions", { prompt: "The sky is", max_tokens: 3, temperature: 0, ignore_eos: true })
    const echoed = await post("/v1/completions", { prompt: "The sky is", max_tokens: 3, temperature: 0, ignore_eos: true, echo: true })
    expect(echoed.body.choices[0].text).toBe(`The sky is${plain.body.choices[0].text}`)

    const withLp = await post("/v1/completions", { prompt: "The sky is", max_tokens: 3, temperature: 0, ignore_eos: true, echo: true, logprobs: 2 })
    const lp = withLp.body.choices[0].logprobs
    const promptTokens = withLp.body.usage.prompt_tokens
    expect(lp.tokens).toHaveLength(promptTokens + 3)
    expect(lp.token_logprobs[0]).toBeNull()
    expect(lp.top_logprobs[0]).toBeNull()
    for (let i = 1; i < lp.tokens.length; i++) expect(lp.token_logprobs[i]).toBeLessThanOrEqual(0)
    // The generated part matches a request without echo.
    const gen = await post("/v1/completions", { prompt: "The sky is", max_tokens: 3, temperature: 0, ignore_eos: true, logprobs: 2 })
    expect(lp.tokens.slice(promptTokens)).toEqual(gen.body.choices[0].logprobs.tokens)
    expect(withLp.body.choices[0].text).toBe(echoed.body.choices[0].text)
  })

  it("bounds the prompt of an echo with logprobs (its logits come to the main thread)", async () => {
    const r = await post("/v1/completions", { prompt: "word ".repeat(2000), max_tokens: 1, echo: true, logprobs: 1 })
    expect(r.status).toBe(400)
    expect(r.body.error.message).toMatch(/echo with logprobs takes prompts of at most \d+ tokens/)
  })
})

describe("lenient inputs", () => {
  it("takes nulls, empty content, assistant tool calls with null content, and ignores unknown fields", async () => {
    const r = await post("/v1/chat/completions", {
      model: null,
      messages: [
        { role: "system", content: "" },
        { role: "user", content: "What is the weather?", name: null },
        { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "weather", arguments: "{\"city\":\"Oslo\"}" } }] },
        { role: "user", content: [{ type: "text", text: "Thanks" }] }
      ],
      max_tokens: 2,
      temperature: null,
      top_p: null,
      stop: null,
      seed: null,
      stream: null,
      stream_options: null,
      user: null,
      n: null,
      logprobs: null,
      top_logprobs: null,
      tools: [],
      some_vendor_field: { anything: true },
      store: false
    })
    expect(r.status).toBe(200)
    expect(r.body.choices).toHaveLength(1)
  })

  it("still refuses features it lacks", async () => {
    const r = await post("/v1/chat/completions", { messages, functions: [{ name: "f" }] })
    expect(r.status).toBe(400)
    expect(r.body.error.message).toMatch(/functions/)
  })
})

describe("models, tokenize, detokenize, version, 404", () => {
  it("GET /v1/models/{id}", async () => {
    const m = await client.models.retrieve(model)
    expect(m.id).toBe(model)
    const missing = await fetch(`${server.url}/v1/models/gpt-4o`)
    expect(missing.status).toBe(404)
    expect(((await missing.json()) as any).error.code).toBe("model_not_found")
    const slashed = await fetch(`${server.url}/v1/models/meta-llama/Meta-Llama-3-8B`)
    expect(slashed.status).toBe(404)
    expect(((await slashed.json()) as any).error.message).toMatch(/'meta-llama\/Meta-Llama-3-8B' does not exist/)
  })

  it("/tokenize round-trips through /detokenize; messages count as the chat prompt", async () => {
    const t = await post("/tokenize", { prompt: "Hello world" })
    expect(t.status).toBe(200)
    expect(t.body.count).toBe(t.body.tokens.length)
    expect(t.body.max_model_len).toBeGreaterThan(0)
    const d = await post("/detokenize", { tokens: t.body.tokens })
    expect(d.body.prompt).toMatch(/Hello world$/)
    const chat = await post("/tokenize", { messages })
    const answer = await client.chat.completions.create({ model, messages, max_tokens: 1 })
    expect(chat.body.count).toBe(answer.usage!.prompt_tokens)
    expect((await post("/detokenize", { tokens: [-1] })).status).toBe(400)
  })

  it("GET /version and a JSON 404 body on unknown routes", async () => {
    const v = await fetch(`${server.url}/version`)
    expect(((await v.json()) as any).version).toMatch(/^\d+\.\d+\.\d+/)
    const missing = await fetch(`${server.url}/v2/chat`, { method: "POST", body: "{}" })
    expect(missing.status).toBe(404)
    expect(((await missing.json()) as any).error.type).toBe("invalid_request_error")
  })
})

describe("/v1/responses", () => {
  it("responses.create with a string and with messages", async () => {
    const r = await client.responses.create({ model, input: "Say hi.", instructions: "Be brief.", max_output_tokens: 6, temperature: 0, store: false })
    expect(r.object).toBe("response")
    expect(["completed", "incomplete"]).toContain(r.status)
    expect(r.output[0]!.type).toBe("message")
    expect(r.output_text.length).toBeGreaterThan(0)
    expect(r.usage!.output_tokens).toBeGreaterThan(0)
    expect(r.usage!.total_tokens).toBe(r.usage!.input_tokens + r.usage!.output_tokens)
    const m = await client.responses.create({
      model,
      input: [
        { role: "user", content: [{ type: "input_text", text: "Hi" }] },
        { role: "assistant", content: [{ type: "output_text", text: "Hello!", annotations: [] }] } as any,
        { role: "user", content: "Say hi again." }
      ],
      max_output_tokens: 4
    })
    expect(m.output_text.length).toBeGreaterThan(0)
  })

  it("responses.stream emits the Responses events and ends with the whole response", async () => {
    const stream = client.responses.stream({ model, input: "Say hi.", max_output_tokens: 6, temperature: 0 })
    const types: Array<string> = []
    let deltas = ""
    for await (const event of stream) {
      types.push(event.type)
      if (event.type === "response.output_text.delta") deltas += event.delta
    }
    const final = await stream.finalResponse()
    expect(types[0]).toBe("response.created")
    expect(types).toContain("response.output_text.delta")
    expect(types).toContain("response.output_text.done")
    expect(["response.completed", "response.incomplete"]).toContain(types[types.length - 1])
    expect(final.output_text).toBe(deltas)
    const plain = await client.responses.create({ model, input: "Say hi.", max_output_tokens: 6, temperature: 0 })
    expect(final.output_text).toBe(plain.output_text)
  })
})
