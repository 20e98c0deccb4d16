/**
 * Prompt token ids for Llama 3. Chat prompts are rendered with the checkpoint's own Jinja chat template when its
 * tokenizer config has one (as transformers' `apply_chat_template` does), else with the Llama 3 instruct format
 * written out below, which is exactly what Meta's Llama 3 template renders.
 */
import { Environment, Interpreter, Template } from "@huggingface/jinja"
import { Effect } from "effect"
import { CheckpointError } from "../../core/Errors.ts"
import type { ChatMessage, ToolCall, ToolDefinition } from "../../core/text/ChatMessage.ts"
import { makePromptEncoder, type PromptEncodeOptions } from "./PromptEncoder.ts"
import { chatSettings, type Llama3Tokenizer, type TokenizerFiles } from "./Tokenizer.ts"

export interface ChatFormatOptions {
  /** The clock for templates that print today's date (Llama 3.1+); defaults to now. */
  readonly now?: Date
}

/** What rendering a chat template needs of a tokenizer. */
export type TemplateTokenizer =
  & Pick<Llama3Tokenizer, "bosToken" | "eosToken" | "chatTemplate">
  & Partial<Pick<Llama3Tokenizer, "files">>

/** A chat (and the tools it offers) as prompt text, special tokens spelled out. */
export type ChatRenderer = (messages: ReadonlyArray<ChatMessage>, tools?: ReadonlyArray<ToolDefinition>) => string

const HEADER = (role: string): string => `<|start_header_id|>${role}<|end_header_id|>\n\n`

/** A message of the plain format: any header name (Llama 3.1's `ipython` included). */
interface PlainMessage {
  readonly role: string
  readonly content: string
}

/** Meta's Llama 3.1 JSON-based tool calling instruction, put before the first user message with the definitions. */
export const TOOLS_INSTRUCTION = "Given the following functions, please respond with a JSON for a function call with its proper arguments " +
  "that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of " +
  "argument name and its value}. Do not use variables.\n\n"

/** A tool definition as OpenAI and the chat templates of Llama 3.1+ write it. */
const toolJson = (t: ToolDefinition) => ({
  type: "function",
  function: { name: t.name, ...(t.description === undefined ? {} : { description: t.description }), parameters: t.parameters ?? { type: "object", properties: {} } }
})

/** A call's arguments as an object when they are JSON, else the text. */
const callArguments = (c: ToolCall): unknown => {
  try {
    return JSON.parse(c.arguments)
  } catch {
    return c.arguments
  }
}

/** An assistant's tool calls as Llama 3.1 writes them: one `{"name": ..., "parameters": ...}` per line. */
export const toolCallsText = (calls: ReadonlyArray<ToolCall>): string =>
  calls.map((c) => JSON.stringify({ name: c.name, parameters: callArguments(c) })).join("\n")

/**
 * A chat with tools in the Llama 3.1 JSON tool calling format, as plain messages: `Environment: ipython` in the
 * system turn, the instruction and the definitions (indented JSON) before the first user message, tool results in
 * `ipython` turns, the assistant's calls as JSON lines. Without tools, tool calls and tool results are still
 * written so (a history from a request that had them).
 */
export const toolChatMessages = (messages: ReadonlyArray<ChatMessage>, tools?: ReadonlyArray<ToolDefinition>): Array<PlainMessage> => {
  const out: Array<PlainMessage> = messages.map((m) => {
    if (m.role === "tool") return { role: "ipython", content: m.content }
    if (m.role === "assistant" && m.toolCalls !== undefined && m.toolCalls.length > 0) {
      const calls = toolCallsText(m.toolCalls)
      return { role: "assistant", content: m.content.trim() === "" ? calls : `${m.content.trim()}\n${calls}` }
    }
    return { role: m.role, content: m.content }
  })
  if (tools === undefined || tools.length === 0) return out
  const block = TOOLS_INSTRUCTION + tools.map((t) => JSON.stringify(toolJson(t), null, 4)).join("\n\n") + "\n\n"
  const user = out.findIndex((m) => m.role === "user")
  if (user >= 0) out[user] = { role: "user", content: block + out[user]!.content.trim() }
  else out.splice(out.findIndex((m) => m.role !== "system") < 0 ? out.length : out.findIndex((m) => m.role !== "system"), 0, { role: "user", content: block.trim() })
  if (out[0]?.role === "system") out[0] = { role: "system", content: `Environment: ipython\n\n${out[0].content.trim()}` }
  else out.unshift({ role: "system", content: "Environment: ipython" })
  return out
}

/** The Llama 3 instruct format by hand: BOS, one header + trimmed content + `<|eot_id|>` per message, then the
 *  assistant header as the generation prompt. With tools (or a history of tool calls), Llama 3.1's tool format. */
export const llama3ChatText = (
  messages: ReadonlyArray<ChatMessage>,
  bosToken = "<|begin_of_text|>",
  tools?: ReadonlyArray<ToolDefinition>
): string => {
  const plain: ReadonlyArray<PlainMessage> = (tools !== undefined && tools.length > 0) || messages.some((m) => m.role === "tool" || m.toolCalls !== undefined)
    ? toolChatMessages(messages, tools)
    : messages
  return bosToken + plain.map((m) => `${HEADER(m.role)}${m.content.trim()}<|eot_id|>`).join("") + HEADER("assistant")
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
const MONTHS_LONG = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December"
]
const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]

/**
 * The strftime subset chat templates use. @huggingface/jinja has its own `strftime_now`, but it names months in
 * the host's locale; Python (and so every published prompt) uses English names.
 */
export const strftime = (date: Date, format: string): string => {
  const pad = (n: number): string => String(n).padStart(2, "0")
  return format.replace(/%[YmdbBaAHMSyje%]/g, (token) => {
    switch (token) {
      case "%Y":
        return String(date.getFullYear())
      case "%y":
        return pad(date.getFullYear() % 100)
      case "%m":
        return pad(date.getMonth() + 1)
      case "%d":
        return pad(date.getDate())
      case "%e":
        return String(date.getDate()).padStart(2, " ")
      case "%b":
        return MONTHS[date.getMonth()]
      case "%B":
        return MONTHS_LONG[date.getMonth()]
      case "%a":
        return DAYS[date.getDay()].slice(0, 3)
      case "%A":
        return DAYS[date.getDay()]
      case "%H":
        return pad(date.getHours())
      case "%M":
        return pad(date.getMinutes())
      case "%S":
        return pad(date.getSeconds())
      case "%j": {
        const start = new Date(date.getFullYear(), 0, 1)
        return String(Math.floor((date.getTime() - start.getTime()) / 86_400_000) + 1).padStart(3, "0")
      }
      default:
        return "%"
    }
  })
}

/** Python's `range`, as Jinja templates call it. */
const range = (start: number, stop?: number, step = 1): number[] => {
  const [from, to] = stop === undefined ? [0, start] : [start, stop]
  if (step === 0) throw new Error("range() step must not be zero")
  const out: number[] = []
  for (let i = from; step > 0 ? i < to : i > to; i += step) out.push(i)
  return out
}

/** Messages as transformers hands them to a template: tool calls with their arguments parsed, tool results by id. */
const templateMessages = (messages: ReadonlyArray<ChatMessage>) =>
  messages.map((m) => ({
    role: m.role,
    content: m.content,
    ...(m.toolCalls === undefined ? {} : {
      tool_calls: m.toolCalls.map((c) => ({ ...(c.id === undefined ? {} : { id: c.id }), type: "function", function: { name: c.name, arguments: callArguments(c) } }))
    }),
    ...(m.toolCallId === undefined ? {} : { tool_call_id: m.toolCallId })
  }))

/** Whether a chat template renders tools itself (Llama 3.1+ do); others get the tools written into the messages. */
const templateKnowsTools = (source: string): boolean => /\btools\b/.test(source) && /tool_calls/.test(source)

/**
 * Renders a compiled chat template with the variables transformers passes (`tools` as OpenAI's function list, or
 * left undefined).
 * `Template.render` cannot replace its built-in `strftime_now` (redeclaring a global throws), so this builds the
 * environment itself with the same globals.
 */
const renderTemplate = (
  template: Template,
  messages: ReadonlyArray<ChatMessage>,
  tokenizer: TemplateTokenizer,
  options: ChatFormatOptions | undefined,
  tools?: ReadonlyArray<ToolDefinition>
): string => {
  const knowsTools = templateKnowsTools(tokenizer.chatTemplate ?? "")
  const withTools = tools !== undefined && tools.length > 0
  const toolHistory = messages.some((m) => m.role === "tool" || m.toolCalls !== undefined)
  const now = options?.now ?? new Date()
  const env = new Environment()
  const globals: Record<string, unknown> = {
    true: true,
    false: false,
    none: null,
    True: true,
    False: false,
    None: null,
    range,
    raise_exception: (message: unknown) => {
      throw new Error(String(message))
    },
    strftime_now: (format: string) => strftime(now, format),
    messages: knowsTools
      ? templateMessages(messages)
      : withTools || toolHistory
      ? toolChatMessages(messages, tools)
      : messages.map((m) => ({ role: m.role, content: m.content })),
    ...(knowsTools && withTools ? { tools: tools.map(toolJson) } : {}),
    add_generation_prompt: true,
    bos_token: tokenizer.bosToken,
    eos_token: tokenizer.eosToken ?? "",
    // Llama 3.1 templates print `date_string` (else a fixed "26 Jul 2024"); 3.2+ call strftime_now("%d %b %Y").
    date_string: strftime(now, "%d %b %Y")
  }
  for (const [name, value] of Object.entries(globals)) env.set(name, value)
  const out = new Interpreter(env).run(template.parsed).value
  if (typeof out !== "string") throw new Error(`chat template rendered ${typeof out}, expected a string`)
  return out
}

/** The chat prompt as text, specials spelled out. Throws when the checkpoint's template raises an exception. */
export const renderChat = (
  messages: ReadonlyArray<ChatMessage>,
  tokenizer: TemplateTokenizer,
  options?: ChatFormatOptions,
  tools?: ReadonlyArray<ToolDefinition>
): string =>
  tokenizer.chatTemplate === undefined
    ? llama3ChatText(messages, tokenizer.bosToken, tools)
    : renderTemplate(new Template(tokenizer.chatTemplate), messages, tokenizer, options, tools)

/**
 * Compiles the checkpoint's chat template once and checks it renders a small chat, so a broken template is a
 * CheckpointError at load time rather than a failure on the first request.
 */
export const makeChatRenderer = (
  tokenizer: TemplateTokenizer,
  options?: ChatFormatOptions
): Effect.Effect<ChatRenderer, CheckpointError> =>
  Effect.try({
    try: (): ChatRenderer => {
      const source = tokenizer.chatTemplate
      if (source === undefined) return (messages, tools) => llama3ChatText(messages, tokenizer.bosToken, tools)
      const template = new Template(source)
      renderTemplate(template, [{ role: "system", content: "s" }, { role: "user", content: "u" }], tokenizer, options)
      return (messages, tools) => renderTemplate(template, messages, tokenizer, options, tools)
    },
    catch: (e) => {
      const file = tokenizer.files?.tokenizerConfig ?? "tokenizer_config.json"
      const why = (e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ")
      return new CheckpointError({
        path: file,
        message: `${file}: chat_template does not render a system + user chat: ${why}`
      })
    }
  })

/** Prompt token ids, BOS first; what the prompt workers run. */
export interface PromptFormatter {
  /** The chat in the checkpoint's template, ending with the assistant header. Throws when the template raises. */
  readonly formatChat: (messages: ReadonlyArray<ChatMessage>, options?: PromptEncodeOptions) => number[]
  /** BOS, then the text (no second BOS when a trusted caller's text starts with one). */
  readonly formatCompletion: (text: string, options?: PromptEncodeOptions) => number[]
}

/**
 * The chat template and the encoder over a tokenizer's files. Special-token strings in message content and prompt
 * text are text unless `allowSpecialTokens` (see `PromptEncoder.ts`).
 */
export const makePromptFormatter = (
  files: TokenizerFiles,
  options?: ChatFormatOptions
): Effect.Effect<PromptFormatter, CheckpointError> =>
  Effect.gen(function*() {
    const settings = chatSettings(files)
    const render = yield* makeChatRenderer(settings, options)
    const encoder = yield* Effect.try({
      try: () => makePromptEncoder(files.json, files.config),
      catch: (e) =>
        new CheckpointError({
          path: files.files.tokenizerJson,
          message: `${files.files.tokenizerJson}: not a usable tokenizer: ${e instanceof Error ? e.message : String(e)}`
        })
    })
    const bosTokenId = encoder.specialTokenId(settings.bosToken)
    // The template usually writes BOS; a plain completion prompt never does.
    const withBos = (ids: number[]): number[] => (bosTokenId === undefined || ids[0] === bosTokenId ? ids : [bosTokenId, ...ids])
    return {
      formatChat: (messages, encodeOptions) => withBos(encoder.encodeChat(messages, render, encodeOptions)),
      formatCompletion: (text, encodeOptions) => withBos(encoder.encodeText(text, encodeOptions))
    }
  })
