// Continuous batching through the HTTP path: concurrent greedy streams give exactly what each gives alone, and the
// metrics show that they shared decode steps.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { readSse, startServer, type TestServer } from "../support/server.ts"

let server: TestServer
beforeAll(async () => {
  server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, engine: { maxNumSeqs: 8 } })
})
afterAll(() => server.close())

const prompts = ["The sea", "A robot", "In 1850", "My cat", "Quantum", "Bread is", "Rain fell", "Ten apples"]

const streamText = async (prompt: string) => {
  const r = await fetch(`${server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: 32, temperature: 0, stream: true, ignore_eos: true })
  })
  expect(r.status).toBe(200)
  const events = await readSse(r)
  expect(events[events.length - 1]!.data).toBe("[DONE]")
  return events.slice(0, -1).map((e) => JSON.parse(e.data).choices[0].text as string).join("")
}

const metric = async (name: string) => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`))
  return Number(line?.split(" ")[1])
}

describe("batching", () => {
  it("8 concurrent streamed requests produce what each produces alone, in shared decode steps", async () => {
    const alone: Array<string> = []
    for (const p of prompts) alone.push(await streamText(p))
    const before = await metric("chorus:engine_batched_decode_steps_total")
    const together = await Promise.all(prompts.map(streamText))
    expect(together).toEqual(alone)
    const after = await metric("chorus:engine_batched_decode_steps_total")
    // 8 x 32 tokens decoded together: most of the ~31 decode steps carried several sequences.
    expect(after - before).toBeGreaterThanOrEqual(20)
    const metrics = await (await fetch(`${server.url}/metrics`)).text()
    expect(metrics).toMatch(/chorus:engine_decode_step_sequences_bucket\{model_name="[^"]+",le="8"\} \d+/)
    expect(await metric("chorus:generation_tokens_total")).toBeGreaterThanOrEqual(16 * 32)
  })
})
