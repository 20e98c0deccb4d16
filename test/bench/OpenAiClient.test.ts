// The OpenAI client against a scripted server: failures keep their reason and their partial output (never
// dropped), counts fall back to the stream when the server sends no usage.
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { LoadClient } from "../../src/bench/LoadClient.ts"
import { RequestOutcome, Samples } from "../../src/bench/Metrics.ts"
import { openAiClient } from "../../src/bench/OpenAiClient.ts"
import type { Prompt } from "../../src/bench/Prompts.ts"

const chunk = (content: string) => `data: {"choices":[{"index":0,"delta":{"content":${JSON.stringify(content)}},"finish_reason":null}]}\n\n`

/** Behaviour by the prompt's text. */
const script: Record<string, (res: http.ServerResponse) => void> = {
  drop: (res) => {
    res.writeHead(200, { "content-type": "text/event-stream" })
    res.write(chunk("a") + chunk("b") + chunk("c"))
    setTimeout(() => res.socket?.destroy(), 30)
  },
  error: (res) => {
    res.writeHead(200, { "content-type": "text/event-stream" })
    res.write(chunk("a"))
    res.end(`data: {"error":{"message":"shard 0 worker thread died","type":"server_error"}}\n\ndata: [DONE]\n\n`)
  },
  nousage: (res) => {
    res.writeHead(200, { "content-type": "text/event-stream" })
    res.write(chunk("one"))
    setTimeout(() => res.end(chunk("two") + chunk("") + `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n`), 20)
  },
  busy: (res) => {
    res.writeHead(429, { "content-type": "application/json" })
    res.end(JSON.stringify({ error: { message: "the waiting queue is full (1 requests)", type: "overloaded" } }))
  },
  truncated: (res) => {
    res.writeHead(200, { "content-type": "text/event-stream" })
    res.end(chunk("a"))
  }
}

let server: http.Server
let client: LoadClient
const bodies: Array<Record<string, unknown>> = []

beforeAll(async () => {
  server = http.createServer((req, res) => {
    if (req.url === "/v1/models") return void res.end(JSON.stringify({ data: [{ id: "scripted" }] }))
    let body = ""
    req.on("data", (c) => (body += c))
    req.on("end", () => {
      const json = JSON.parse(body)
      bodies.push(json)
      script[json.messages[0].content]!(res)
    })
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  const url = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`)
  client = await openAiClient({ url, apiKey: "k", model: undefined, temperature: 0, maxSockets: 8, timeoutMs: 5000 })
})
afterAll(() => {
  client.close()
  server.close()
})

const send = async (text: string) => {
  const prompt: Prompt = { messages: [{ role: "user", content: text }], maxTokens: 10, ignoreEos: true }
  const o = new RequestOutcome()
  const itl = new Samples()
  await client.send(prompt, o, itl)
  return { o, itl }
}

describe("OpenAI client", () => {
  it("learns the model from /v1/models and sends it, streamed with usage and ignore_eos", async () => {
    expect(client.model).toBe("scripted")
    await send("nousage")
    expect(bodies.at(-1)).toMatchObject({ model: "scripted", stream: true, stream_options: { include_usage: true }, ignore_eos: true, max_tokens: 10, temperature: 0 })
  })

  it("a connection dropped mid-stream fails the request with its reason and keeps what arrived", async () => {
    const { o } = await send("drop")
    expect(o.ok).toBe(false)
    expect(o.error).toMatch(/^connection lost mid-stream/)
    expect(o.outputs).toBe(3)
    expect(o.firstMs).toBeGreaterThan(o.startMs)
    expect(o.endMs).toBeGreaterThanOrEqual(o.firstMs)
  })

  it("an error event mid-stream fails the request with the server's message", async () => {
    const { o } = await send("error")
    expect(o.ok).toBe(false)
    expect(o.error).toBe("stream error: shard 0 worker thread died")
  })

  it("without usage, output tokens are the non-empty streamed outputs and the gaps between them are ITLs", async () => {
    const { o, itl } = await send("nousage")
    expect(o.ok).toBe(true)
    expect(o).toMatchObject({ outputs: 2, outputTokens: 2, fromServer: false })
    expect(o.promptTokens).toBeNaN()
    expect(itl.length).toBe(1)
    expect(itl.values()[0]).toBeGreaterThan(10)
  })

  it("a 429 is a failure whose reason carries the status and the message", async () => {
    const { o } = await send("busy")
    expect(o.ok).toBe(false)
    expect(o.error).toBe("HTTP 429: the waiting queue is full (1 requests)")
  })

  it("a stream that ends without [DONE] is a failure, not a success", async () => {
    const { o } = await send("truncated")
    expect(o.error).toBe("stream ended before [DONE]")
  })
})
