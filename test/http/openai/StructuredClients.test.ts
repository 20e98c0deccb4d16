// Structured output through the clients people use, against a real Chorus server on the embedded default model
// (random weights, real Llama 3 vocabulary): the official `openai` client's `parse` helpers (zod), the Vercel AI
// SDK's generateObject / streamObject (Responses API and chat completions), and LangChain's withStructuredOutput.
// Each client turns a zod schema into a JSON schema, sends it (`response_format` on chat, `text.format` on
// /v1/responses), and validates the answer with zod; the grammar makes it valid whatever the weights. The schemas
// are bounded (maxLength, enums, integer ranges, maxItems) so a random model finishes them within max tokens.
import { createOpenAI } from "@ai-sdk/openai"
import { ChatOpenAI } from "@langchain/openai"
import { generateObject, streamObject } from "ai"
import OpenAI from "openai"
import { zodResponseFormat, zodTextFormat } from "openai/helpers/zod"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { z } from "zod"
import { Llama3Adapter } from "../../../src/adapters/llama3/Llama3Adapter.ts"
import { startServer, type TestServer } from "../../support/server.ts"

const MODEL = "chorus-default-llama3"

const Person = z.object({
  name: z.string().max(12),
  age: z.int().min(0).max(120),
  role: z.enum(["admin", "dev", "ops"]),
  tags: z.array(z.string().max(6)).max(3)
})

const Order = z.object({
  items: z.array(z.object({ sku: z.string().min(1).max(5), qty: z.int().min(1).max(9) })).min(1).max(2),
  express: z.boolean(),
  status: z.enum(["new", "paid", "shipped"])
})

let server: TestServer
let client: OpenAI
let provider: ReturnType<typeof createOpenAI>

beforeAll(async () => {
  server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, engine: { maxNumSeqs: 8 } })
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 })
  provider = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: "none" })
}, 120_000)
afterAll(() => server.close())

describe("official openai client, zod helpers", () => {
  it("chat.completions.parse with zodResponseFormat gives message.parsed", async () => {
    for (const seed of [1, 2, 3]) {
      const r = await client.chat.completions.parse({
        model: MODEL,
        messages: [{ role: "user", content: "A person, as JSON." }],
        response_format: zodResponseFormat(Person, "person"),
        max_completion_tokens: 128,
        temperature: 1,
        seed
      })
      const message = r.choices[0]!.message
      expect(r.choices[0]!.finish_reason).toBe("stop")
      expect(message.parsed).not.toBeNull()
      expect(Person.parse(message.parsed)).toEqual(message.parsed)
      expect(JSON.parse(message.content!)).toEqual(message.parsed)
    }
  })

  it("responses.parse with zodTextFormat gives output_parsed", async () => {
    for (const temperature of [0, 1]) {
      const r = await client.responses.parse({
        model: MODEL,
        input: "An order, as JSON.",
        text: { format: zodTextFormat(Order, "order") },
        max_output_tokens: 128,
        temperature
      })
      expect(r.status).toBe("completed")
      expect(r.output_parsed).not.toBeNull()
      expect(Order.parse(r.output_parsed)).toEqual(r.output_parsed)
      expect(r.text?.format).toMatchObject({ type: "json_schema", name: "order" })
    }
  })
})

describe("Vercel AI SDK", () => {
  it("generateObject through the default provider (/v1/responses)", async () => {
    const r = await generateObject({ model: provider(MODEL), schema: Person, prompt: "A person.", maxOutputTokens: 128, temperature: 1 })
    expect(r.finishReason).toBe("stop")
    expect(Person.parse(r.object)).toEqual(r.object)
  })

  it("generateObject through chat completions (openai.chat)", async () => {
    const r = await generateObject({ model: provider.chat(MODEL), schema: Order, prompt: "An order.", maxOutputTokens: 128, temperature: 1, seed: 5 })
    expect(r.finishReason).toBe("stop")
    expect(Order.parse(r.object)).toEqual(r.object)
  })

  it("streamObject streams partial objects to a valid one (both routes)", async () => {
    // The AI SDK sends no seed on the Responses API.
    for (const model of [provider(MODEL), provider.chat(MODEL)]) {
      const s = streamObject({ model, schema: Person, prompt: "A person.", maxOutputTokens: 128, temperature: 0 })
      let partials = 0
      for await (const _ of s.partialObjectStream) partials++
      const object = await s.object
      expect(partials).toBeGreaterThan(1)
      expect(Person.parse(object)).toEqual(object)
    }
  })
})

describe("LangChain ChatOpenAI.withStructuredOutput", () => {
  const chat = (extra: Record<string, unknown> = {}) =>
    new ChatOpenAI({ configuration: { baseURL: `${server.url}/v1` }, apiKey: "x", model: MODEL, maxTokens: 128, temperature: 1, maxRetries: 0, ...extra })

  it("the default method (json_schema for a non-gpt-3/4 model)", async () => {
    const r = await chat().withStructuredOutput(Person).invoke("A person, as JSON.")
    expect(Person.parse(r)).toEqual(r)
  })

  it("method jsonSchema, on chat completions and on the Responses API", async () => {
    const viaChat = await chat().withStructuredOutput(Order, { method: "jsonSchema", name: "order" }).invoke("An order.")
    expect(Order.parse(viaChat)).toEqual(viaChat)
    const viaResponses = await chat({ useResponsesApi: true }).withStructuredOutput(Order, { method: "jsonSchema", name: "order" }).invoke("An order.")
    expect(Order.parse(viaResponses)).toEqual(viaResponses)
  })

  it("went through both routes", async () => {
    const metrics = await (await fetch(`${server.url}/metrics`)).text()
    expect(metrics).toMatch(/route="\/v1\/responses"[^}]*status="200"/)
    expect(metrics).toMatch(/route="\/v1\/chat\/completions"[^}]*status="200"/)
  })
})
