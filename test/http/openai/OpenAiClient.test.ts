// The official `openai` npm client against a real Chorus server on localhost (embedded default model).
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../../src/adapters/llama3/Llama3Adapter.ts"
import { startServer, type TestServer } from "../../support/server.ts"

let server: TestServer
let client: OpenAI
let model: string

beforeAll(async () => {
  server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, apiKeys: ["sk-test"], engine: { maxNumSeqs: 8 } })
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "sk-test", maxRetries: 0 })
  model = (await client.models.list()).data[0]!.id
})
afterAll(() => server.close())

describe("OpenAI API with the official client", () => {
  it("lists the served model", async () => {
    const models = await client.models.list()
    expect(models.data.map((m) => m.id)).toEqual(["chorus-default-llama3"])
  })

  it("answers a non-streamed chat completion with usage", async () => {
    const r = await client.chat.completions.create({
      model,
      messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello!" }],
      max_tokens: 12,
      temperature: 0.7,
      seed: 3
    })
    expect(r.object).toBe("chat.completion")
    expect(r.choices).toHaveLength(1)
    expect(r.choices[0]!.message.role).toBe("assistant")
    expect(r.choices[0]!.message.content!.length).toBeGreaterThan(0)
    expect(["stop", "length"]).toContain(r.choices[0]!.finish_reason)
    expect(r.usage!.completion_tokens).toBeGreaterThan(0)
    expect(r.usage!.completion_tokens).toBeLessThanOrEqual(12)
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + r.usage!.completion_tokens)
  })

  it("streams a chat completion chunk by chunk, with usage at the end", async () => {
    const stream = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Tell me a story." }],
      max_completion_tokens: 24,
      stream: true,
      stream_options: { include_usage: true },
      seed: 5
    })
    const arrivals: Array<number> = []
    let text = ""
    let finish: string | null = null
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      arrivals.push(performance.now())
      if (chunk.usage) usage = chunk.usage
      const choice = chunk.choices[0]
      if (choice === undefined) continue
      text += choice.delta.content ?? ""
      if (choice.finish_reason !== null) finish = choice.finish_reason
    }
    // One chunk per token (plus the finish and usage chunks), arriving over time rather than all at once.
    expect(arrivals.length).toBeGreaterThanOrEqual(24)
    expect(arrivals[arrivals.length - 1]! - arrivals[0]!).toBeGreaterThan(0)
    expect(text.length).toBeGreaterThan(0)
    expect(finish).toBe("length")
    expect(usage).toMatchObject({ completion_tokens: 24 })
    expect(usage!.prompt_tokens).toBeGreaterThan(0)
  })

  it("answers a completion, and the same seed gives the same text", async () => {
    const ask = () => client.completions.create({ model, prompt: "Once upon a time", max_tokens: 10, seed: 11, temperature: 1 })
    const a = await ask()
    expect(a.object).toBe("text_completion")
    expect(a.choices[0]!.text.length).toBeGreaterThan(0)
    expect(a.usage!.completion_tokens).toBe(10)
    expect((await ask()).choices[0]!.text).toBe(a.choices[0]!.text)
  })

  it("stops at a stop string, which is not returned", async () => {
    const first = await client.completions.create({ model, prompt: "Hello", max_tokens: 12, seed: 21, temperature: 0 })
    const full = first.choices[0]!.text
    const middle = Math.floor(full.length / 2)
    const stop = full.slice(middle, middle + 3)
    expect(stop.length).toBe(3)
    const r = await client.completions.create({ model, prompt: "Hello", max_tokens: 12, seed: 21, temperature: 0, stop: [stop] })
    expect(r.choices[0]!.finish_reason).toBe("stop")
    expect(r.choices[0]!.text).toBe(full.slice(0, full.indexOf(stop)))
  })

  it("reports errors in OpenAI's shape through the client", async () => {
    const bad = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 })
    await expect(bad.models.list()).rejects.toMatchObject({ status: 401 })
    await expect(client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], top_p: 1.5 })).rejects.toMatchObject({
      status: 400,
      error: { param: "top_p", type: "invalid_request_error" }
    })
    await expect(client.chat.completions.create({ model: "gpt-4", messages: [{ role: "user", content: "x" }] })).rejects.toMatchObject({ status: 404 })
  })
})
