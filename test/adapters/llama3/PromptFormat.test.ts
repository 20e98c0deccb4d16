import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import {
  type ChatFormatOptions,
  llama3ChatText,
  makePromptFormatter,
  type PromptFormatter,
  renderChat,
  strftime
} from "../../../src/adapters/llama3/PromptFormat.ts"
import { readTokenizerFiles, tokenizerFromFiles, type TokenizerFiles } from "../../../src/adapters/llama3/Tokenizer.ts"
import type { Llama3Tokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import type { ChatMessage } from "../../../src/core/text/ChatMessage.ts"

let files: TokenizerFiles
let tok: Llama3Tokenizer
let shipped: PromptFormatter
beforeAll(async () => {
  files = await Effect.runPromise(readTokenizerFiles(undefined))
  tok = await Effect.runPromise(tokenizerFromFiles(files))
  shipped = await Effect.runPromise(makePromptFormatter(files))
})

/** The shipped files with another chat template (undefined: none at all, the hand-written format). */
const withTemplate = (template: string | undefined, options?: ChatFormatOptions) =>
  Effect.runPromise(
    makePromptFormatter({ ...files, jinja: template, config: { ...files.config, chat_template: undefined } }, options)
  )

const withSystem: ReadonlyArray<ChatMessage> = [
  { role: "system", content: "  You are a terse assistant.\n" },
  { role: "user", content: "What is 2+2? 🤔" },
  { role: "assistant", content: "4\n\n" },
  { role: "user", content: "\nAnd in 日本語?  " }
]
const withoutSystem = withSystem.slice(1)

const GENERATION_PROMPT = [128006, 78191, 128007, 271]

/** Written for these tests in the shape of the Llama 3.1 template (date line, system block first), tools left out. */
const LLAMA31_STYLE = String.raw`{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}{{- "Environment: ipython\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}`

describe("llama3ChatText", () => {
  it("writes the Llama 3 instruct format", () => {
    expect(llama3ChatText([{ role: "user", content: " Hi " }])).toBe(
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
  })
})

describe("renderChat with the shipped Meta Llama 3 template", () => {
  it("equals the hand-written format for a multi-turn chat with a system prompt", () => {
    expect(tok.chatTemplate).toBeDefined()
    expect(renderChat(withSystem, tok)).toBe(llama3ChatText(withSystem))
  })

  it("equals the hand-written format without a system prompt", () => {
    expect(renderChat(withoutSystem, tok)).toBe(llama3ChatText(withoutSystem))
  })
})

describe("formatChat", () => {
  it("gives the prompt ids with a single BOS and the assistant header at the end", () => {
    const ids = shipped.formatChat(withSystem)
    expect(ids.slice(0, 5)).toEqual([128000, 128006, 9125, 128007, 271])
    expect(ids.slice(-4)).toEqual(GENERATION_PROMPT)
    expect(ids.filter((id) => id === 128000)).toHaveLength(1)
    expect(ids.filter((id) => id === 128009)).toHaveLength(withSystem.length)
    expect(ids).toEqual(tok.encode(llama3ChatText(withSystem)))
  })

  it("uses the hand-written format when the checkpoint has no template", async () => {
    const plain = await withTemplate(undefined)
    expect(plain.formatChat(withoutSystem)).toEqual(shipped.formatChat(withoutSystem))
  })

  it("adds BOS once when the template does not write it", async () => {
    const noBos = await withTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    expect(noBos.formatChat([{ role: "user", content: "Hi" }])).toEqual([128000, 13347])
  })

  it("renders a Llama 3.1-style template with today's date", async () => {
    const t31 = { ...tok, chatTemplate: LLAMA31_STYLE }
    const now = new Date(2025, 2, 5, 12, 0, 0)
    const expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" +
      "Cutting Knowledge Date: December 2023\nToday Date: 05 Mar 2025\n\n" +
      "You are a terse assistant.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2? 🤔<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nAnd in 日本語?<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\n"
    expect(renderChat(withSystem, t31, { now })).toBe(expected)
    expect((await withTemplate(LLAMA31_STYLE, { now })).formatChat(withSystem)).toEqual(tok.encode(expected))
    // Without a system prompt the system block is still written, empty.
    expect(renderChat(withoutSystem, t31, { now })).toContain("Today Date: 05 Mar 2025\n\n<|eot_id|><|start_header_id|>user")
  })

  it("lets 3.2-style templates call strftime_now with English month names", () => {
    const t32 = { ...tok, chatTemplate: `{{ bos_token }}{{ strftime_now("%d %b %Y / %B %A") }}` }
    expect(renderChat([], t32, { now: new Date(2024, 6, 26) })).toBe("<|begin_of_text|>26 Jul 2024 / July Friday")
  })

  it("reads the date per call, not once when the template is compiled", async () => {
    const format31 = await withTemplate(LLAMA31_STYLE)
    const before = strftime(new Date(), "%d %b %Y")
    const text = tok.decode(format31.formatChat(withoutSystem))
    const after = strftime(new Date(), "%d %b %Y")
    // Either side of a midnight is accepted.
    expect([`Today Date: ${before}`, `Today Date: ${after}`].some((line) => text.includes(line))).toBe(true)
  })
})

describe("makePromptFormatter", () => {
  it("fails with a CheckpointError for a template that does not parse or raises", async () => {
    const broken = await Effect.runPromise(Effect.flip(makePromptFormatter({ ...files, jinja: "{% for m in %}" })))
    expect(broken._tag).toBe("CheckpointError")
    expect(broken.path).toBe(files.files.tokenizerConfig)
    expect(broken.message).toContain("chat_template")
    const raising = await Effect.runPromise(
      Effect.flip(makePromptFormatter({ ...files, jinja: `{{ raise_exception("roles must alternate") }}` }))
    )
    expect(raising.message).toContain("roles must alternate")
  })
})

describe("formatCompletion", () => {
  it("is BOS then the text", () => {
    expect(shipped.formatCompletion("Hello world")).toEqual([128000, 9906, 1917])
  })

  it("spells out a BOS written in the text, unless special tokens are allowed (then no second BOS)", () => {
    const asText = shipped.formatCompletion("<|begin_of_text|>Hello world")
    expect(asText[0]).toBe(128000)
    expect(asText.slice(1).every((id) => id < 128000)).toBe(true)
    expect(tok.decode(asText.slice(1))).toBe("<|begin_of_text|>Hello world")
    expect(shipped.formatCompletion("<|begin_of_text|>Hello world", { allowSpecialTokens: true })).toEqual([128000, 9906, 1917])
  })
})

describe("strftime", () => {
  it("formats the fields chat templates use", () => {
    const d = new Date(2024, 0, 9, 7, 5, 3)
    expect(strftime(d, "%d %b %Y")).toBe("09 Jan 2024")
    expect(strftime(d, "%Y-%m-%d %H:%M:%S %a %j %y %%")).toBe("2024-01-09 07:05:03 Tue 009 24 %")
  })
})
