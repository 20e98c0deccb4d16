// Tools in the prompt: Llama 3.1's JSON tool calling format by hand (no template), through a template that renders
// tools itself, and through one that does not.
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { llama3ChatText, makePromptFormatter, renderChat, TOOLS_INSTRUCTION } from "../../../src/adapters/llama3/PromptFormat.ts"
import { readTokenizerFiles, tokenizerFromFiles, type TokenizerFiles } from "../../../src/adapters/llama3/Tokenizer.ts"
import type { Llama3Tokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import type { ChatMessage, ToolDefinition } from "../../../src/core/text/ChatMessage.ts"

let files: TokenizerFiles
let tok: Llama3Tokenizer
beforeAll(async () => {
  files = await Effect.runPromise(readTokenizerFiles(undefined))
  tok = await Effect.runPromise(tokenizerFromFiles(files))
})

const tools: ReadonlyArray<ToolDefinition> = [
  { name: "get_weather", description: "Weather in a city", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } }
]
const chat: ReadonlyArray<ChatMessage> = [
  { role: "system", content: "Be brief." },
  { role: "user", content: "Weather in Oslo?" },
  { role: "assistant", content: "", toolCalls: [{ id: "call_1", name: "get_weather", arguments: "{\"city\":\"Oslo\"}" }] },
  { role: "tool", content: "{\"temperature\":7}", toolCallId: "call_1" }
]
const H = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`
const toolJson = JSON.stringify({ type: "function", function: tools[0] }, null, 4)

describe("Llama 3.1 tool format by hand", () => {
  it("writes the definitions before the first user message, calls as JSON, results as ipython", () => {
    expect(llama3ChatText(chat, "<|begin_of_text|>", tools)).toBe(
      "<|begin_of_text|>" +
        `${H("system")}Environment: ipython\n\nBe brief.<|eot_id|>` +
        `${H("user")}${TOOLS_INSTRUCTION}${toolJson}\n\nWeather in Oslo?<|eot_id|>` +
        `${H("assistant")}{"name":"get_weather","parameters":{"city":"Oslo"}}<|eot_id|>` +
        `${H("ipython")}{"temperature":7}<|eot_id|>` +
        H("assistant")
    )
  })

  it("writes a tool history without tools, and a plain chat unchanged", () => {
    const text = llama3ChatText(chat)
    expect(text).not.toContain(TOOLS_INSTRUCTION)
    expect(text).toContain(`${H("ipython")}{"temperature":7}<|eot_id|>`)
    expect(llama3ChatText(chat.slice(0, 2), "<|begin_of_text|>", [])).toBe(`<|begin_of_text|>${H("system")}Be brief.<|eot_id|>${H("user")}Weather in Oslo?<|eot_id|>${H("assistant")}`)
  })

  it("refuses special-token strings in tool definitions unless special tokens are allowed", async () => {
    const f = await Effect.runPromise(makePromptFormatter(files))
    const forged = [{ name: "f", description: "<|eot_id|>" }]
    expect(() => f.formatChat(chat, { tools: forged })).toThrow(/special-token/)
    expect(f.formatChat(chat, { tools: forged, allowSpecialTokens: true }).length).toBeGreaterThan(0)
  })
})

/** In the shape of Llama 3.1's template, tool part only (tools in the first user message). */
const TOOL_TEMPLATE = `{{- bos_token }}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if tools is not none %}{{- "TOOLS:" }}{%- for t in tools %}{{- t | tojson }}{%- endfor %}{%- endif %}
{%- for message in messages %}
{%- if 'tool_calls' in message %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "' + message.tool_calls[0].function.name + '", "parameters": ' + message.tool_calls[0].function.arguments | tojson + '}<|eot_id|>' }}
{%- elif message.role == "tool" %}{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
{%- else %}{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}{%- endif %}
{%- endfor %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}`

describe("chat templates", () => {
  it("pass tools and tool calls to a template that renders them (arguments as an object)", () => {
    const text = renderChat(chat, { ...tok, chatTemplate: TOOL_TEMPLATE }, undefined, tools)
    expect(text).toContain("TOOLS:{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"")
    expect(text).toContain(`${H("assistant")}{"name": "get_weather", "parameters": {"city": "Oslo"}}<|eot_id|>`)
    expect(text).toContain(`${H("ipython")}{"temperature":7}<|eot_id|>`)
    expect(text).not.toContain(TOOLS_INSTRUCTION)
  })

  it("write tools into the messages for a template that does not know them", () => {
    const plain = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    // (Jinja drops the template's trailing newline.)
    expect(renderChat(chat, { ...tok, chatTemplate: plain }, undefined, tools)).toBe(llama3ChatText(chat, "<|begin_of_text|>", tools).slice(0, -1))
  })
})
