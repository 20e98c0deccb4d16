// The model's output read back as tool calls (Llama 3.1 JSON calls), and the stream splitter that holds what may
// be a call.
import { describe, expect, it } from "vitest"
import { ForcedCallStream, parseToolCalls, type ToolSetup, ToolStream } from "../../../src/http/openai/Tools.ts"

const tools = [{ name: "a" }, { name: "b" }]
const auto: ToolSetup = { tools, mode: { kind: "auto" }, parallel: true }
const strip = (calls: ReturnType<typeof parseToolCalls>) => calls?.map(({ name, arguments: args }) => ({ name, args }))

describe("parseToolCalls", () => {
  it("reads calls with parameters or arguments, after the python tag, several separated by ; or newlines", () => {
    expect(strip(parseToolCalls(" {\"name\": \"a\", \"parameters\": {\"x\": 1}}", auto))).toEqual([{ name: "a", args: "{\"x\":1}" }])
    expect(strip(parseToolCalls("<|python_tag|>{\"name\": \"b\", \"arguments\": {}}", auto))).toEqual([{ name: "b", args: "{}" }])
    expect(strip(parseToolCalls("{\"name\":\"a\",\"parameters\":{\"s\":\"}{\"}}; {\"name\":\"b\",\"parameters\":{}}\n{\"name\":\"a\"}", auto)))
      .toEqual([{ name: "a", args: "{\"s\":\"}{\"}" }, { name: "b", args: "{}" }, { name: "a", args: "{}" }])
    expect(parseToolCalls("{\"name\":\"a\",\"parameters\":{}}{\"name\":\"b\",\"parameters\":{}}", { ...auto, parallel: false })).toHaveLength(1)
    // Llama 3.2's habit, and OpenAI's wrapping.
    expect(strip(parseToolCalls("{\"type\": \"function\", \"name\": \"a\", \"parameters\": {\"x\": 2}}", auto))).toEqual([{ name: "a", args: "{\"x\":2}" }])
    expect(strip(parseToolCalls("{\"type\": \"function\", \"function\": {\"name\": \"b\", \"arguments\": \"{\\\"y\\\": 1}\"}}", auto))).toEqual([{ name: "b", args: "{\"y\":1}" }])
  })

  it("takes anything else for text", () => {
    for (const text of ["Hello", "{\"name\": \"zzz\", \"parameters\": {}}", "{\"name\": \"a\", \"parameters\": 3}", "{\"name\": \"a\"", "{\"name\":\"a\"} and more", ""]) {
      expect(parseToolCalls(text, auto), text).toBeUndefined()
    }
  })
})

describe("ToolStream", () => {
  it("auto: sends text once its start shows it is not a call", () => {
    const s = new ToolStream(auto)
    expect(s.push(" ")).toBe("")
    expect(s.push("{")).toBe("")
    expect(s.push("\"ke")).toBe("")
    expect(s.push("y\"")).toBe(" {\"key\"")
    expect(s.push("y")).toBe("y")
    expect(s.finish("z")).toEqual({ text: "z" })
    expect(new ToolStream(auto).push("Hi")).toBe("Hi")
    expect(new ToolStream(auto).push("{1")).toBe("{1")
  })

  it("auto: holds a call and returns it at the end; held text that is no call comes back as text", () => {
    const s = new ToolStream(auto)
    for (const piece of ["{\"na", "me\": \"a\", ", "\"parameters\": {}}"]) expect(s.push(piece)).toBe("")
    expect(s.finish("").calls?.map((c) => c.name)).toEqual(["a"])
    const t = new ToolStream(auto)
    expect(t.push("{\"name\": \"q\"")).toBe("")
    expect(t.finish("}")).toEqual({ text: "{\"name\": \"q\"}" })
  })

  it("forced: holds everything", () => {
    const s = new ToolStream({ ...auto, mode: { kind: "required" } })
    expect(s.push("Hello")).toBe("")
    expect(s.finish("")).toEqual({ text: "Hello" })
  })
})

describe("ForcedCallStream", () => {
  const forced: ToolSetup = { ...auto, mode: { kind: "required" } }

  it("sends the head once the name is known, then the arguments as they come, all but the closing brace", () => {
    const s = new ForcedCallStream()
    expect(s.push("{\"name\":\"a\",\"para")).toEqual({ args: "" })
    expect(s.push("meters\":{\"x\"")).toEqual({ start: { id: s.id, name: "a" }, args: "{\"x" })
    expect(s.push(":12}")).toEqual({ args: "\":12" })
    const end = s.finish("}", forced)
    expect(end.args).toBe("}")
    expect(end.call).toEqual({ id: s.id, name: "a", arguments: "{\"x\":12}" })
  })

  it("a cut-off call stays a call without a whole one; no head at all is text", () => {
    const s = new ForcedCallStream()
    s.push("{\"name\":\"a\",\"parameters\":{\"x\":1")
    expect(s.finish("", forced).call).toBeUndefined()
    const t = new ForcedCallStream()
    expect(t.finish("{\"na", forced)).toEqual({ args: "", text: "{\"na" })
  })
})
