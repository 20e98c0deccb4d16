// Automatic prefix caching through the server, on the default CPU model: the second turn of a chat finds the first
// turn's KV blocks (system prompt, question, answer), computes only the rest, counts the hit in /metrics, and
// answers exactly what a server without prefix caching answers.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { type RunningServer, startServer } from "../../src/http/Server.ts"

let cached: RunningServer
let uncached: RunningServer
beforeAll(async () => {
  ;[cached, uncached] = await Promise.all([
    startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, engine: { maxNumSeqs: 4 } }),
    startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, engine: { maxNumSeqs: 4, enablePrefixCaching: false } })
  ])
})
afterAll(async () => {
  await Promise.all([cached?.close(), uncached?.close()])
})

interface Chat {
  readonly choices: ReadonlyArray<{ readonly message: { readonly content: string } }>
  readonly usage: { readonly prompt_tokens: number; readonly completion_tokens: number }
}
const chat = async (server: RunningServer, messages: ReadonlyArray<{ role: string; content: string }>): Promise<Chat> => {
  const r = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages, max_tokens: 24, temperature: 0, ignore_eos: true })
  })
  expect(r.status).toBe(200)
  return (await r.json()) as Chat
}
const metric = async (server: RunningServer, name: string): Promise<number> => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`chorus:${name}{`))
  if (line === undefined) throw new Error(`no ${name} in /metrics`)
  return Number(line.slice(line.lastIndexOf(" ") + 1))
}

describe("prefix caching", () => {
  it("a second chat turn reuses the first turn's blocks and answers exactly as without reuse", async () => {
    const system = `You are a careful assistant. ${"Answer in full sentences and cite the rules you follow. ".repeat(30)}`
    const turn1 = [{ role: "system", content: system }, { role: "user", content: "What is a paged KV cache?" }]
    const first = await chat(cached, turn1)
    expect(first.choices[0]!.message.content.length).toBeGreaterThan(0)
    const hitsBefore = await metric(cached, "prefix_cache_hits_total")
    const queriesBefore = await metric(cached, "prefix_cache_queries_total")

    const turn2 = [...turn1, { role: "assistant", content: first.choices[0]!.message.content }, { role: "user", content: "And prefix caching?" }]
    const withReuse = await chat(cached, turn2)
    const without = await chat(uncached, turn2)

    const hits = (await metric(cached, "prefix_cache_hits_total")) - hitsBefore
    const queries = (await metric(cached, "prefix_cache_queries_total")) - queriesBefore
    expect(queries).toBe(withReuse.usage.prompt_tokens)
    // At least the whole first prompt (system prompt + question), in full blocks, came from the cache.
    expect(hits).toBeGreaterThanOrEqual(Math.floor(first.usage.prompt_tokens / 16) * 16)
    expect(hits).toBeLessThan(withReuse.usage.prompt_tokens)
    expect(withReuse.choices[0]!.message.content).toBe(without.choices[0]!.message.content)
    expect(withReuse.usage).toEqual(without.usage)
    expect(await metric(uncached, "prefix_cache_hits_total")).toBe(0)
  })
})
