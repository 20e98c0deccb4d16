// The Vercel AI SDK's default OpenAI provider (`openai(model)` speaks /v1/responses) with generateText and
// streamText against a real Chorus server on the embedded default Llama 3 model.
import { createOpenAI } from "@ai-sdk/openai"
import { generateText, streamText } from "ai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../../src/adapters/llama3/Llama3Adapter.ts"
import { startServer, type TestServer } from "../../support/server.ts"

let server: TestServer
let openai: ReturnType<typeof createOpenAI>

beforeAll(async () => {
  server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, engine: { maxNumSeqs: 4 } })
  openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: "none" })
}, 120_000)
afterAll(() => server.close())

describe("Vercel AI SDK, default OpenAI provider (Responses API)", () => {
  it("generateText", async () => {
    const r = await generateText({ model: openai("chorus-default-llama3"), system: "Be brief.", prompt: "Say hi.", maxOutputTokens: 6, temperature: 0 })
    expect(r.text.length).toBeGreaterThan(0)
    expect(r.usage.outputTokens).toBeGreaterThan(0)
    expect(["stop", "length"]).toContain(r.finishReason)
  })

  it("streamText gives the same text as generateText at temperature 0", async () => {
    const args = { model: openai("chorus-default-llama3"), prompt: "Say hi.", maxOutputTokens: 6, temperature: 0 } as const
    const s = streamText(args)
    let streamed = ""
    for await (const part of s.textStream) streamed += part
    const whole = await generateText(args)
    expect(streamed).toBe(whole.text)
    expect((await s.usage).outputTokens).toBe(whole.usage.outputTokens)
  })

  it("went through /v1/responses", async () => {
    const metrics = await (await fetch(`${server.url}/metrics`)).text()
    expect(metrics).toMatch(/chorus:http_requests_total\{[^}]*route="\/v1\/responses"[^}]*status="200"[^}]*\} [3-9]/)
  })
})
