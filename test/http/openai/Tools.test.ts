// Tool calling through a real server on the default CPU model (random weights, real Llama 3 vocabulary): a forced
// call (`tool_choice` naming a function, or `required`) is constrained by the grammar, so whatever the weights it is a
// call of an offered function whose arguments validate against its parameters schema. Strings are bounded in the
// schemas below: a random model would otherwise rarely close one within max_tokens.
import { createOpenAI } from "@ai-sdk/openai"
import { ChatOpenAI } from "@langchain/openai"
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../../src/adapters/llama3/Llama3Adapter.ts"
import { readSse, startServer, type TestServer } from "../../support/server.ts"

let server: TestServer
beforeAll(async () => {
  server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, engine: { maxNumSeqs: 16 } })
}, 120_000)
afterAll(() => server.close())

type JsonSchema = Record<string, any>

/** The JSON Schema subset used below; where `value` breaks `schema`, or undefined. */
const violation = (schema: JsonSchema, value: unknown, at = "$"): string | undefined => {
  if (schema.enum !== undefined && !schema.enum.includes(value)) return `${at}: not in enum`
  const t = schema.type
  if (t === "object") {
    if (typeof value !== "object" || value === null || Array.isArray(value)) return `${at}: not an object`
    const o = value as Record<string, unknown>
    for (const k of schema.required ?? []) if (!(k in o)) return `${at}: missing ${k}`
    for (const [k, v] of Object.entries(o)) {
      const sub = schema.properties?.[k]
      if (sub === undefined) return `${at}: unexpected ${k}`
      const bad = violation(sub, v, `${at}.${k}`)
      if (bad !== undefined) return bad
    }
  }
  if (t === "string" && (typeof value !== "string" || [...value].length > (schema.maxLength ?? Infinity))) return `${at}: not a short string`
  if (t === "integer" && (!Number.isInteger(value) || (value as number) < schema.minimum || (value as number) > schema.maximum)) return `${at}: not an integer in range`
  if (t === "boolean" && typeof value !== "boolean") return `${at}: not a boolean`
  return undefined
}

const WEATHER = {
  type: "object",
  properties: { city: { type: "string", maxLength: 12 }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
  required: ["city", "unit"],
  additionalProperties: false
}
const TIMER = {
  type: "object",
  properties: { minutes: { type: "integer", minimum: 1, maximum: 90 }, loud: { type: "boolean" } },
  required: ["minutes", "loud"],
  additionalProperties: false
}
const PARAMS: Record<string, JsonSchema> = { get_weather: WEATHER, set_timer: TIMER }
const TOOLS = [
  { type: "function", function: { name: "get_weather", description: "Current weather in a city", parameters: WEATHER } },
  { type: "function", function: { name: "set_timer", description: "Starts a timer", parameters: TIMER } }
]
const MESSAGES = [{ role: "user", content: "What is the weather in Paris?" }]

const post = async (path: string, body: Record<string, unknown>) => {
  const r = await fetch(`${server.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
  return { status: r.status, body: (await r.json()) as any }
}

/** A call's arguments parsed and checked against its function's schema. */
const checkCall = (name: string, args: string, allowed: ReadonlyArray<string>) => {
  expect(allowed).toContain(name)
  const parsed = JSON.parse(args)
  expect(violation(PARAMS[name]!, parsed), args).toBeUndefined()
  return parsed
}

describe("chat completions: forced calls", () => {
  const cases = [
    { label: "named", choice: { type: "function", function: { name: "set_timer" } }, allowed: ["set_timer"] },
    { label: "required", choice: "required", allowed: ["get_weather", "set_timer"] }
  ]
  for (const c of cases) {
    for (const temperature of [0, 1]) {
      it(`${c.label}, temperature ${temperature}: a valid call for each seed`, async () => {
        const answers = await Promise.all([1, 2, 3].map((seed) =>
          post("/v1/chat/completions", { messages: MESSAGES, tools: TOOLS, tool_choice: c.choice, temperature, seed, max_tokens: 96 })
        ))
        for (const { status, body } of answers) {
          expect(status).toBe(200)
          const choice = body.choices[0]
          expect(choice.finish_reason).toBe("tool_calls")
          expect(choice.message.content).toBeNull()
          expect(choice.message.tool_calls).toHaveLength(1)
          const call = choice.message.tool_calls[0]
          expect(call.type).toBe("function")
          expect(call.id).toMatch(/^call_/)
          checkCall(call.function.name, call.function.arguments, c.allowed)
        }
      })
    }
  }

  it("streamed deltas reassemble to the same call", async () => {
    const request = { messages: MESSAGES, tools: TOOLS, tool_choice: "required", temperature: 0.8, seed: 11, max_tokens: 96 }
    const whole = (await post("/v1/chat/completions", request)).body.choices[0].message.tool_calls[0]
    const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...request, stream: true }) })
    const chunks = (await readSse(r)).map((e) => e.data).filter((d) => d !== "[DONE]").map((d) => JSON.parse(d))
    const calls: Array<{ id?: string; name: string; arguments: string }> = []
    let finish: string | null = null
    let pieces = 0
    for (const chunk of chunks) {
      const choice = chunk.choices[0]
      finish = choice.finish_reason ?? finish
      for (const d of choice.delta.tool_calls ?? []) {
        if ((d.function?.arguments ?? "") !== "") pieces++
        const call = (calls[d.index] ??= { name: "", arguments: "" })
        if (d.id !== undefined) call.id = d.id
        call.name += d.function?.name ?? ""
        call.arguments += d.function?.arguments ?? ""
      }
    }
    expect(finish).toBe("tool_calls")
    // The arguments stream as they are generated, not in one piece at the end.
    expect(pieces).toBeGreaterThan(2)
    expect(calls).toHaveLength(1)
    expect(calls[0]!.id).toMatch(/^call_/)
    expect({ name: calls[0]!.name, arguments: calls[0]!.arguments }).toEqual({ name: whole.function.name, arguments: whole.function.arguments })
  })

  it("renders the tools into the prompt (as /tokenize counts them) unless tool_choice is none", async () => {
    const count = async (body: Record<string, unknown>) => (await post("/v1/chat/completions", { messages: MESSAGES, max_tokens: 1, ...body })).body.usage.prompt_tokens
    const plain = await count({})
    const withTools = await count({ tools: TOOLS })
    expect(withTools).toBeGreaterThan(plain + 50)
    expect(await count({ tools: TOOLS, tool_choice: "none" })).toBe(plain)
    expect((await post("/tokenize", { messages: MESSAGES, tools: TOOLS })).body.count).toBe(withTools)
  })

  it("tool_choice none answers in text", async () => {
    const { status, body } = await post("/v1/chat/completions", { messages: MESSAGES, tools: TOOLS, tool_choice: "none", max_tokens: 8, temperature: 0 })
    expect(status).toBe(200)
    expect(typeof body.choices[0].message.content).toBe("string")
    expect(body.choices[0].message.tool_calls).toBeUndefined()
    expect(["stop", "length"]).toContain(body.choices[0].finish_reason)
  })

  it("auto: an answer in text or a call, never both broken", async () => {
    const { status, body } = await post("/v1/chat/completions", { messages: MESSAGES, tools: TOOLS, max_tokens: 24, temperature: 1, seed: 5 })
    expect(status).toBe(200)
    const m = body.choices[0].message
    if (m.tool_calls !== undefined) checkCall(m.tool_calls[0].function.name, m.tool_calls[0].function.arguments, ["get_weather", "set_timer"])
    else expect(typeof m.content).toBe("string")
  })

  it("auto, streamed with logprobs: held-back text comes with its tokens' logprobs", async () => {
    const request = { messages: MESSAGES, tools: TOOLS, max_tokens: 16, temperature: 1, seed: 9, logprobs: true }
    const whole = (await post("/v1/chat/completions", request)).body.choices[0]
    const r = await fetch(`${server.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...request, stream: true }) })
    const chunks = (await readSse(r)).map((e) => e.data).filter((d) => d !== "[DONE]").map((d) => JSON.parse(d))
    if (whole.message.tool_calls !== undefined) return
    expect(chunks.map((c) => c.choices[0].delta.content ?? "").join("")).toBe(whole.message.content)
    expect(chunks.flatMap((c) => c.choices[0].logprobs?.content ?? []).map((l: any) => l.token)).toEqual(whole.logprobs.content.map((l: any) => l.token))
  })

  it("refuses a tool_choice that names no offered function, a forced choice without tools, an unusable schema", async () => {
    const bad = [
      { messages: MESSAGES, tools: TOOLS, tool_choice: { type: "function", function: { name: "nope" } } },
      { messages: MESSAGES, tool_choice: "required" },
      { messages: MESSAGES, tools: [{ type: "function", function: { name: "f", parameters: { type: "array" } } }] },
      { messages: MESSAGES, tools: [TOOLS[0], TOOLS[0]] },
      { messages: MESSAGES, functions: [{ name: "f" }] }
    ]
    for (const body of bad) {
      const r = await post("/v1/chat/completions", body)
      expect(r.status, JSON.stringify(body)).toBe(400)
      expect(r.body.error.message.length).toBeGreaterThan(0)
    }
  })
})

describe("official openai client", () => {
  it("round trip: a call, the tool's result, the next answer", async () => {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 })
    const tools = TOOLS as Array<OpenAI.Chat.Completions.ChatCompletionTool>
    const messages: Array<OpenAI.Chat.Completions.ChatCompletionMessageParam> = [{ role: "user", content: "Weather in Oslo?" }]
    const first = await client.chat.completions.create({
      model: "chorus-default-llama3",
      messages,
      tools,
      tool_choice: { type: "function", function: { name: "get_weather" } },
      max_tokens: 96,
      temperature: 0
    })
    const call = first.choices[0]!.message.tool_calls![0]!
    expect(call.type).toBe("function")
    if (call.type !== "function") return
    checkCall(call.function.name, call.function.arguments, ["get_weather"])
    messages.push(first.choices[0]!.message, { role: "tool", tool_call_id: call.id, content: JSON.stringify({ temperature: 7, sky: "grey" }) })
    const next = await client.chat.completions.create({ model: "chorus-default-llama3", messages, tools, max_tokens: 8, temperature: 0 })
    expect(next.choices[0]!.message.role).toBe("assistant")
    expect(next.usage!.prompt_tokens).toBeGreaterThan(first.usage!.prompt_tokens)
  })
})

describe("/v1/responses", () => {
  const rtools = TOOLS.map((t) => ({ type: "function", ...t.function }))

  it("a forced call is a function_call item; streamed events give the same call; its output is accepted next turn", async () => {
    const request = { input: "Start a timer.", tools: rtools, tool_choice: { type: "function", name: "set_timer" }, temperature: 1, seed: 4, max_output_tokens: 96 }
    const { status, body } = await post("/v1/responses", request)
    expect(status).toBe(200)
    expect(body.status).toBe("completed")
    const item = body.output[0]
    expect(item).toMatchObject({ type: "function_call", name: "set_timer", status: "completed" })
    expect(item.call_id).toMatch(/^call_/)
    checkCall(item.name, item.arguments, ["set_timer"])

    const r = await fetch(`${server.url}/v1/responses`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...request, stream: true }) })
    const events = (await readSse(r)).map((e) => JSON.parse(e.data))
    const types = events.map((e) => e.type)
    expect(types).toEqual(expect.arrayContaining(["response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done", "response.completed"]))
    const deltas = events.filter((e) => e.type === "response.function_call_arguments.delta").map((e) => e.delta)
    expect(deltas.length).toBeGreaterThan(2)
    expect(deltas.join("")).toBe(item.arguments)
    expect(events.find((e) => e.type === "response.function_call_arguments.done").arguments).toBe(item.arguments)

    const next = await post("/v1/responses", {
      input: [{ role: "user", content: "Start a timer." }, item, { type: "function_call_output", call_id: item.call_id, output: "{\"started\":true}" }],
      tools: rtools,
      max_output_tokens: 8,
      temperature: 0
    })
    expect(next.status).toBe(200)
    expect(next.body.output.length).toBeGreaterThan(0)
  })
})

describe("AI SDK", () => {
  const weather = tool({
    description: "Current weather in a city",
    inputSchema: jsonSchema<{ city: string; unit: "celsius" | "fahrenheit" }>(WEATHER as any),
    execute: async ({ city }) => ({ city, temperature: 20 })
  })

  it("generateText with toolChoice required: default provider (/v1/responses) and .chat() (chat completions)", async () => {
    const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: "none" })
    for (const model of [openai("chorus-default-llama3"), openai.chat("chorus-default-llama3")]) {
      const r = await generateText({ model, prompt: "Weather in Rome?", tools: { get_weather: weather }, toolChoice: "required", maxOutputTokens: 96, temperature: 0 })
      expect(r.toolCalls).toHaveLength(1)
      expect(r.toolCalls[0]!.toolName).toBe("get_weather")
      expect(violation(WEATHER, r.toolCalls[0]!.input)).toBeUndefined()
      expect(r.toolResults[0]!.output).toMatchObject({ temperature: 20 })
      expect(r.finishReason).toBe("tool-calls")
    }
  })

  it("a two-step loop: the forced call, its result sent back (function_call_output / tool message), then text", async () => {
    const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: "none" })
    for (const model of [openai("chorus-default-llama3"), openai.chat("chorus-default-llama3")]) {
      const r = await generateText({
        model,
        prompt: "Weather in Rome?",
        tools: { get_weather: weather },
        stopWhen: stepCountIs(2),
        prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? "required" : "none" }),
        maxOutputTokens: 96,
        temperature: 0
      })
      expect(r.steps).toHaveLength(2)
      expect(r.steps[0]!.toolCalls).toHaveLength(1)
      expect(r.steps[1]!.toolCalls).toHaveLength(0)
      // The second request carried the call and its result (tool_choice none there: no definitions).
      const body = JSON.stringify(r.steps[1]!.request.body)
      expect(body).toMatch(/function_call_output|\\"role\\":\\"tool\\"|"role":"tool"/)
      expect(body).toContain("20")
    }
  })

  it("streamText with a forced call: the streamed call equals generateText's", async () => {
    const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: "none" })
    for (const model of [openai("chorus-default-llama3"), openai.chat("chorus-default-llama3")]) {
      const args = { model, prompt: "Weather in Rome?", tools: { get_weather: weather }, toolChoice: { type: "tool", toolName: "get_weather" }, maxOutputTokens: 96, temperature: 0 } as const
      const s = streamText(args)
      const streamed = await s.toolCalls
      const whole = await generateText(args)
      expect(streamed).toHaveLength(1)
      expect(streamed[0]!.input).toEqual(whole.toolCalls[0]!.input)
      expect(await s.finishReason).toBe("tool-calls")
    }
  })
})

describe("LangChain", () => {
  it("ChatOpenAI.bindTools with tool_choice forcing a call", async () => {
    const llm = new ChatOpenAI({ model: "chorus-default-llama3", apiKey: "none", configuration: { baseURL: `${server.url}/v1` }, temperature: 0, maxTokens: 96 })
    const bound = llm.bindTools([TOOLS[1] as any], { tool_choice: "set_timer" })
    const message = await bound.invoke("Set a timer for ten minutes.")
    expect(message.tool_calls).toHaveLength(1)
    expect(message.tool_calls![0]!.name).toBe("set_timer")
    expect(violation(TIMER, message.tool_calls![0]!.args)).toBeUndefined()
  })
})
