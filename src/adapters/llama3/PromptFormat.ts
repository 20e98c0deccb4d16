/**
 * Prompt token ids for Llama 3. Chat prompts are rendered with the checkpoint's own Jinja chat template when its
 * tokenizer config has one (as transformers' `apply_chat_template` does), else with the Llama 3 instruct format
 * written out below, which is exactly what Meta's Llama 3 template renders.
 */
import { Environment, Interpreter, Template } from "@huggingface/jinja"
import { Effect } from "effect"
import { CheckpointError } from "../../core/Errors.ts"
import type { ChatMessage } from "../../core/text/ChatMessage.ts"
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

/** A chat as prompt text, special tokens spelled out. */
export type ChatRenderer = (messages: ReadonlyArray<ChatMessage>) => string

const HEADER = (role: string): string => `<|start_header_id|>${role}<|end_header_id|>\n\n`

/** The Llama 3 instruct format by hand: BOS, one header + trimmed content + `<|eot_id|>` per message, then the
 *  assistant header as the generation prompt. */
export const llama3ChatText = (messages: ReadonlyArray<ChatMessage>, bosToken = "<|begin_of_text|>"): string =>
  bosToken + messages.map((m) => `${HEADER(m.role)}${m.content.trim()}<|eot_id|>`).join("") + HEADER("assistant")

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

/**
 * Renders a compiled chat template with the variables transformers passes (tools left undefined).
 * `Template.render` cannot replace its built-in `strftime_now` (redeclaring a global throws), so this builds the
 * environment itself with the same globals.
 */
const renderTemplate = (
  template: Template,
  messages: ReadonlyArray<ChatMessage>,
  tokenizer: TemplateTokenizer,
  options: ChatFormatOptions | undefined
): string => {
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
    messages: messages.map((m) => ({ role: m.role, content: m.content })),
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
  options?: ChatFormatOptions
): string =>
  tokenizer.chatTemplate === undefined
    ? llama3ChatText(messages, tokenizer.bosToken)
    : renderTemplate(new Template(tokenizer.chatTemplate), messages, tokenizer, options)

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
      if (source === undefined) return (messages) => llama3ChatText(messages, tokenizer.bosToken)
      const template = new Template(source)
      renderTemplate(template, [{ role: "system", content: "s" }, { role: "user", content: "u" }], tokenizer, options)
      return (messages) => renderTemplate(template, messages, tokenizer, options)
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
