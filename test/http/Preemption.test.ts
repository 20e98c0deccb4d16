// Preemption through the server on the default CPU model: a KV pool too small for every running sequence makes the
// scheduler take blocks back from the newest one and recompute it later. Every request still gets exactly the
// tokens it gets alone (greedy), and /metrics counts the preemptions.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { type RunningServer, startServer } from "../../src/http/Server.ts"

let small: RunningServer
let roomy: RunningServer
beforeAll(async () => {
  ;[small, roomy] = await Promise.all([
    // 16 usable blocks of 16 tokens: one 256-token sequence, or four sequences of 64.
    startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, engine: { maxNumSeqs: 4, contextLength: 256, numBlocks: 17 } }),
    startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, engine: { maxNumSeqs: 4, contextLength: 256 } })
  ])
})
afterAll(async () => {
  await Promise.all([small?.close(), roomy?.close()])
})

const complete = async (server: RunningServer, prompt: string): Promise<string> => {
  const r = await fetch(`${server.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: 72, temperature: 0, ignore_eos: true })
  })
  expect(r.status).toBe(200)
  return ((await r.json()) as { choices: Array<{ text: string }> }).choices[0]!.text
}
const preemptions = async (server: RunningServer) => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  return Number(/^chorus:num_preemptions_total\{[^}]*\} (\S+)$/m.exec(text)![1])
}

describe("preemption", () => {
  it("four sequences outgrowing the pool are preempted and recomputed, each answering as it does alone", async () => {
    const prompts = ["The river", "A stone in the garden", "Paper lanterns over the market", "Winter came early that year"].map((p) => `${p} `.repeat(4))
    const alone: Array<string> = []
    for (const p of prompts) alone.push(await complete(roomy, p))
    const together = await Promise.all(prompts.map((p) => complete(small, p)))
    expect(together).toEqual(alone)
    expect(await preemptions(small)).toBeGreaterThan(0)
    expect(await preemptions(roomy)).toBe(0)
  })
})
