// Structured output (`response_format`) through the server on the default CPU model (random weights, real Llama 3
// vocabulary): the sampler in the last shard masks each step's logits to what the grammar allows, so whatever the
// model's weights, the text is JSON that validates against the schema, and a constrained sequence batched with plain
// ones leaves their tokens unchanged. Strings, numbers and arrays are bounded in the schemas below: a random model
// would otherwise rarely close a string within max_tokens (nothing in a grammar makes it stop).
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { type RunningServer, startServer } from "../../src/http/Server.ts"

let server: RunningServer
beforeAll(async () => {
  server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, engine: { maxNumSeqs: 32 } })
})
afterAll(async () => {
  await server?.close()
})

interface Answer {
  readonly status: number
  readonly text: string
  readonly finishReason: string
  readonly body: any
}
const post = async (route: "chat" | "completions", body: Record<string, unknown>, url = server.url): Promise<Answer> => {
  const chat = route === "chat"
  const r = await fetch(`${url}/v1/${chat ? "chat/completions" : "completions"}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(chat ? { messages: [{ role: "user", content: "Answer in JSON." }], ...body } : { prompt: "JSON:", ...body })
  })
  const json = (await r.json()) as any
  const choice = json.choices?.[0]
  return { status: r.status, text: chat ? choice?.message?.content : choice?.text, finishReason: choice?.finish_reason, body: json }
}

type JsonSchema = Record<string, any>

/** The JSON Schema subset the schemas below use; returns where `value` breaks `schema`, or undefined. */
const violation = (schema: JsonSchema, value: unknown, at = "$"): string | undefined => {
  if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) return `${at}: not the const`
  if (schema.enum !== undefined && !schema.enum.some((e: unknown) => JSON.stringify(e) === JSON.stringify(value))) return `${at}: not in enum`
  if (schema.anyOf !== undefined) {
    return schema.anyOf.some((s: JsonSchema) => violation(s, value, at) === undefined) ? undefined : `${at}: matches no anyOf branch`
  }
  const type = schema.type
  const is = (t: string): boolean => {
    switch (t) {
      case "object": return typeof value === "object" && value !== null && !Array.isArray(value)
      case "array": return Array.isArray(value)
      case "string": return typeof value === "string"
      case "integer": return Number.isInteger(value)
      case "number": return typeof value === "number"
      case "boolean": return typeof value === "boolean"
      case "null": return value === null
      default: throw new Error(`validator: type ${t}`)
    }
  }
  if (type !== undefined && !(Array.isArray(type) ? type.some(is) : is(type))) return `${at}: not ${JSON.stringify(type)}`
  if (typeof value === "string") {
    const n = [...value].length
    if (schema.minLength !== undefined && n < schema.minLength) return `${at}: shorter than ${schema.minLength}`
    if (schema.maxLength !== undefined && n > schema.maxLength) return `${at}: longer than ${schema.maxLength}`
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) return `${at}: below ${schema.minimum}`
    if (schema.maximum !== undefined && value > schema.maximum) return `${at}: above ${schema.maximum}`
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) return `${at}: fewer than ${schema.minItems} items`
    if (schema.maxItems !== undefined && value.length > schema.maxItems) return `${at}: more than ${schema.maxItems} items`
    if (schema.items !== undefined) {
      for (let i = 0; i < value.length; i++) {
        const v = violation(schema.items, value[i], `${at}[${i}]`)
        if (v !== undefined) return v
      }
    }
  }
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    const obj = value as Record<string, unknown>
    for (const key of schema.required ?? []) if (!(key in obj)) return `${at}: missing ${key}`
    for (const [key, v] of Object.entries(obj)) {
      const sub = schema.properties?.[key]
      if (sub === undefined) {
        if (schema.additionalProperties !== true) return `${at}: unexpected property ${key}`
        continue
      }
      const bad = violation(sub, v, `${at}.${key}`)
      if (bad !== undefined) return bad
    }
  }
  return undefined
}

const str = (maxLength: number, minLength = 0) => ({ type: "string", minLength, maxLength })
const int = (minimum: number, maximum: number) => ({ type: "integer", minimum, maximum })
const SCHEMAS: ReadonlyArray<JsonSchema> = [
  { type: "object", properties: { name: str(12), age: int(0, 120) }, required: ["name", "age"] },
  { type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"] },
  { type: "object", properties: { color: { enum: ["red", "green", "blue"] } }, required: ["color"] },
  { type: "object", properties: { tags: { type: "array", items: str(6), maxItems: 3 } }, required: ["tags"] },
  { type: "object", properties: { point: { type: "object", properties: { x: int(-100, 100), y: int(-100, 100) }, required: ["x", "y"] } }, required: ["point"] },
  { type: "object", properties: { id: int(1, 99999), label: str(8, 1), active: { type: "boolean" } }, required: ["id", "label", "active"] },
  { type: "object", properties: { level: { enum: [1, 2, 3] }, note: { type: "null" } }, required: ["level", "note"] },
  { type: "array", items: int(0, 9), minItems: 1, maxItems: 5 },
  { type: "object", properties: { user: { type: "object", properties: { name: str(10), roles: { type: "array", items: { enum: ["admin", "dev", "ops"] }, maxItems: 3 } }, required: ["name", "roles"] } }, required: ["user"] },
  { type: "object", properties: { a: int(0, 5), b: int(0, 5), c: int(0, 5) }, required: ["a", "c"] },
  { type: "object", properties: { status: { const: "done" }, count: int(0, 1000) }, required: ["status", "count"] },
  { type: "object", properties: { matrix: { type: "array", items: { type: "array", items: int(0, 9), maxItems: 3 }, maxItems: 3 } }, required: ["matrix"] },
  { type: "object", properties: { value: { anyOf: [int(0, 10), { type: "boolean" }, { type: "null" }] } }, required: ["value"] },
  { type: "object", properties: { title: str(16, 1), year: int(1900, 2100), genres: { type: "array", items: { enum: ["drama", "comedy", "sci-fi"] }, minItems: 1, maxItems: 2 } }, required: ["title", "year", "genres"] },
  { type: "object", properties: { inner: { type: "object", properties: { deeper: { type: "object", properties: { leaf: { type: "boolean" } }, required: ["leaf"] } }, required: ["deeper"] } }, required: ["inner"] },
  { type: "object", properties: { code: str(4, 4) }, required: ["code"] },
  { type: "object", properties: { items: { type: "array", items: { type: "object", properties: { sku: str(5, 1), qty: int(1, 9) }, required: ["sku", "qty"] }, minItems: 1, maxItems: 2 } }, required: ["items"] },
  { type: "object", properties: { yes: { type: "boolean" }, no: { type: "boolean" }, maybe: { enum: ["yes", "no", null] } }, required: ["yes", "no", "maybe"] },
  { type: "object", properties: { temperature: int(-40, 50), unit: { enum: ["C", "F"] }, floor: { type: "integer", minimum: 5, maximum: 7 } }, required: ["temperature", "unit", "floor"] },
  { type: "object", properties: { first: str(6), rest: { type: "array", items: { type: "boolean" }, maxItems: 4 }, n: int(0, 3) }, required: ["first", "rest", "n"] }
]

const schemaFormat = (schema: JsonSchema) => ({ type: "json_schema", json_schema: { name: "answer", schema, strict: true } })

describe("response_format", () => {
  it("json_object gives a JSON object, at temperature 0 and 1, on both routes", async () => {
    // Random weights rarely close a free string (json_object bounds nothing) within max_tokens: answers that stop
    // parse as an object, the others are still an object's beginning (nothing outside the grammar was sampled), and
    // at each temperature some do stop.
    const prompts = ["Answer in JSON.", "Give me an object.", "{}", "Reply with JSON only."]
    for (const temperature of [0, 1]) {
      const answers = await Promise.all(prompts.flatMap((content, i) => [
        post("chat", { messages: [{ role: "user", content }], temperature, seed: i, max_tokens: 48, response_format: { type: "json_object" } }),
        post("completions", { prompt: content, temperature, seed: i, max_tokens: 48, response_format: { type: "json_object" } })
      ]))
      for (const a of answers) {
        expect(a.status).toBe(200)
        expect(a.text.startsWith("{")).toBe(true)
        if (a.finishReason === "stop") expect(JSON.parse(a.text)).toBeTypeOf("object")
        else expect(a.finishReason).toBe("length")
      }
      expect(answers.filter((a) => a.finishReason === "stop").length).toBeGreaterThan(0)
    }
  })

  it("json_schema: 20 schemas x 10 generations (temperature 0 and 1, several seeds) all parse and validate", async () => {
    const runs = SCHEMAS.flatMap((schema, i) =>
      Array.from({ length: 10 }, (_, k) => ({ schema, i, route: k % 2 === 0 ? "chat" as const : "completions" as const, temperature: k < 2 ? 0 : 1, seed: 1000 * i + k }))
    )
    const failures: Array<string> = []
    await Promise.all(runs.map(async (run) => {
      const a = await post(run.route, { temperature: run.temperature, seed: run.seed, max_tokens: 256, response_format: schemaFormat(run.schema) })
      const where = `schema ${run.i} seed ${run.seed} T=${run.temperature}`
      if (a.status !== 200) return failures.push(`${where}: HTTP ${a.status} ${JSON.stringify(a.body)}`)
      if (a.finishReason !== "stop") return failures.push(`${where}: finish ${a.finishReason}: ${a.text.slice(0, 200)}`)
      let value: unknown
      try {
        value = JSON.parse(a.text)
      } catch {
        return failures.push(`${where}: not JSON: ${a.text}`)
      }
      const bad = violation(run.schema, value)
      if (bad !== undefined) failures.push(`${where}: ${bad}: ${a.text}`)
    }))
    expect(failures).toEqual([])
  })

  it("a constrained sequence batched with plain greedy ones leaves their tokens unchanged", async () => {
    const plain = (i: number) => post("completions", { prompt: `Story ${i}: once upon a time`, temperature: 0, max_tokens: 24, ignore_eos: true })
    const alone = await Promise.all([0, 1, 2].map(plain))
    const [batched, constrained] = await Promise.all([
      Promise.all([0, 1, 2].map(plain)),
      Promise.all([1, 2, 3].map((seed) => post("chat", { temperature: 1, seed, max_tokens: 64, response_format: schemaFormat(SCHEMAS[0]!) })))
    ])
    expect(batched.map((a) => a.text)).toEqual(alone.map((a) => a.text))
    for (const c of constrained) expect(violation(SCHEMAS[0]!, JSON.parse(c.text))).toBeUndefined()
  })

  it("temperature 0 through the graph's masked ArgMax gives the text of the logits path (every schema, batched with plain rows)", async () => {
    // The second server masks fetched logits in the sampler, as before the graph took the grammar's mask.
    const viaLogits = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, engine: { maxNumSeqs: 32, grammarMaskInGraph: false } })
    try {
      const generate = (url: string) => Promise.all([
        ...SCHEMAS.map((schema, i) => post(i % 2 === 0 ? "chat" : "completions", { temperature: 0, max_tokens: 96, response_format: schemaFormat(schema) }, url)),
        // plain greedy rows share the constrained steps (all-ones mask rows)
        ...[0, 1].map((i) => post("completions", { prompt: `Story ${i}:`, temperature: 0, max_tokens: 24, ignore_eos: true }, url))
      ])
      const [graph, logits] = [await generate(server.url), await generate(viaLogits.url)]
      expect(graph.map((a) => [a.text, a.finishReason])).toEqual(logits.map((a) => [a.text, a.finishReason]))
      expect(graph.every((a) => a.status === 200)).toBe(true)
    } finally {
      await viaLogits.close()
    }
  })

  it("streams constrained text; json_schema without a schema is any JSON object", async () => {
    const r = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "JSON" }], stream: true, temperature: 1, seed: 5, max_tokens: 128, response_format: schemaFormat(SCHEMAS[13]!) })
    })
    const events = (await r.text()).split("\n").filter((l) => l.startsWith("data: {")).map((l) => JSON.parse(l.slice(6)))
    const text = events.map((e) => e.choices[0]?.delta?.content ?? "").join("")
    expect(events.at(-1).choices[0].finish_reason).toBe("stop")
    expect(violation(SCHEMAS[13]!, JSON.parse(text))).toBeUndefined()
    const free = await post("completions", { temperature: 0, max_tokens: 64, response_format: { type: "json_schema", json_schema: { name: "any" } } })
    expect(free.status).toBe(200)
    expect(free.text.startsWith("{")).toBe(true)
  })

  it("/v1/responses text.format: json_schema, json_object and text, streamed or not; a bad schema names text.format.schema", async () => {
    const respond = async (body: Record<string, unknown>) => {
      const r = await fetch(`${server.url}/v1/responses`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ input: "Answer in JSON.", ...body })
      })
      return { status: r.status, body: (await r.json()) as any }
    }
    const outputText = (body: any): string => body.output[0].content[0].text
    const failures: Array<string> = []
    await Promise.all(SCHEMAS.slice(0, 10).map(async (schema, i) => {
      const a = await respond({ temperature: 1, seed: i, max_output_tokens: 256, text: { format: { type: "json_schema", name: "answer", schema, strict: true } } })
      if (a.status !== 200 || a.body.status !== "completed") return failures.push(`schema ${i}: ${JSON.stringify(a.body).slice(0, 300)}`)
      expect(a.body.text.format).toMatchObject({ type: "json_schema", name: "answer" })
      const bad = violation(schema, JSON.parse(outputText(a.body)))
      if (bad !== undefined) failures.push(`schema ${i}: ${bad}: ${outputText(a.body)}`)
    }))
    expect(failures).toEqual([])

    const object = await respond({ temperature: 0, max_output_tokens: 48, text: { format: { type: "json_object" } } })
    expect(object.status).toBe(200)
    expect(outputText(object.body).startsWith("{")).toBe(true)
    const text = await respond({ temperature: 0, max_output_tokens: 8, text: { format: { type: "text" }, verbosity: "low" } })
    expect(text.status).toBe(200)
    expect(text.body.text.format).toEqual({ type: "text" })

    const streamed = await fetch(`${server.url}/v1/responses`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ input: "JSON", stream: true, temperature: 1, seed: 5, max_output_tokens: 128, text: { format: { type: "json_schema", name: "movie", schema: SCHEMAS[13] } } })
    })
    const events = (await streamed.text()).split("\n").filter((l) => l.startsWith("data: {")).map((l) => JSON.parse(l.slice(6)))
    const deltas = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("")
    expect(events.at(-1).type).toBe("response.completed")
    expect(violation(SCHEMAS[13]!, JSON.parse(deltas))).toBeUndefined()

    const refused = await respond({ max_output_tokens: 8, text: { format: { type: "json_schema", name: "bad", schema: { type: 5 } } } })
    expect(refused.status).toBe(400)
    expect(refused.body.error.param).toBe("text.format.schema")
    expect(refused.body.error.message).toMatch(/^text\.format\.schema: .*type/i)
    expect((await respond({ text: { format: { type: "xml" } } })).status).toBe(400)
  })

  it("text is accepted as no constraint; a bad schema is a 400 naming response_format.json_schema.schema", async () => {
    const text = await post("chat", { temperature: 0, max_tokens: 8, response_format: { type: "text" } })
    expect(text.status).toBe(200)
    const bad = await post("chat", { max_tokens: 8, response_format: schemaFormat({ type: 5 }) })
    expect(bad.status).toBe(400)
    expect(bad.body.error.param).toBe("response_format.json_schema.schema")
    expect(bad.body.error.message).toContain("response_format.json_schema.schema")
    expect(bad.body.error.message).toMatch(/type/i)
    const unknownFormat = await post("completions", { max_tokens: 8, response_format: { type: "xml" } })
    expect(unknownFormat.status).toBe(400)
  })
})
