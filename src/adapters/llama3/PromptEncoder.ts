/**
 * Prompt text to token ids with the control tokens under the server's control: special-token strings that a caller
 * wrote (`<|eot_id|>`, `<|start_header_id|>system<|end_header_id|>`, …) are encoded as ordinary text, and only the
 * chat template introduces special tokens, unless the caller is trusted (`allowSpecialTokens`).
 *
 * @huggingface/tokenizers always splits added tokens out of the text (it has no `split_special_tokens`), so the
 * encoder runs a tokenizer built without the special added tokens, which sees `<|eot_id|>` as the BPE model does:
 * plain text. Special tokens that are meant are cut out here and mapped to their ids.
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers"
import type { ChatMessage, ToolDefinition } from "../../core/text/ChatMessage.ts"
import type { ChatRenderer } from "./PromptFormat.ts"
import type { Json } from "./Tokenizer.ts"

export interface PromptEncodeOptions {
  /** Special-token strings in caller text become the special tokens (trusted callers only). Default false. */
  readonly allowSpecialTokens?: boolean | undefined
  /** Functions the model may call (chat prompts), rendered by the chat format. */
  readonly tools?: ReadonlyArray<ToolDefinition> | undefined
}

export interface PromptEncoder {
  /** Text to ids; special-token strings in it are text unless allowed. No BOS is added. */
  readonly encodeText: (text: string, options?: PromptEncodeOptions) => number[]
  /** A chat rendered by `render`: the template's special tokens are tokens, the messages' content is text. */
  readonly encodeChat: (
    messages: ReadonlyArray<ChatMessage>,
    render: ChatRenderer,
    options?: PromptEncodeOptions
  ) => number[]
  /** The id of a special token by its text (`<|begin_of_text|>`). */
  readonly specialTokenId: (content: string) => number | undefined
}

interface AddedTokenJson {
  readonly id: number
  readonly content: string
  readonly special?: boolean
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/**
 * Marks a caller's special-token string while the template renders: `marker + index (base 36) + marker`. The marker
 * is a private-use character absent from every message, so each occurrence in the rendered text is one of ours;
 * it holds no whitespace, so a template's `| trim` treats it as the text it stands for.
 */
const pickMarker = (texts: ReadonlyArray<string>): string => {
  for (let code = 0xe000; code <= 0xf8ff; code++) {
    const c = String.fromCharCode(code)
    if (!texts.some((t) => t.includes(c))) return c
  }
  // 6400 distinct private-use characters in one request: no marker is free, so no content can be protected.
  throw new Error("the messages use every private-use character; cannot separate their text from the template")
}

export const makePromptEncoder = (json: Json, config: Json): PromptEncoder => {
  const added = (json["added_tokens"] as ReadonlyArray<AddedTokenJson> | undefined) ?? []
  const specials = added.filter((t) => t.special === true)
  const specialId = new Map(specials.map((t) => [t.content, t.id]))
  const specialText = specials.map((t) => t.content)
  // Longest first, so that one special token that prefixes another does not cut it short.
  const alternatives = [...specialText].sort((a, b) => b.length - a.length).map(escapeRegExp).join("|")
  const specialPattern = specials.length === 0 ? undefined : new RegExp(alternatives, "g")
  const plain = new HfTokenizer({ ...json, added_tokens: added.filter((t) => t.special !== true) }, config)

  /** Appends the ids of `text`, with every special-token string in it encoded as text (no spread: prompts are long). */
  const appendPlain = (ids: number[], text: string): number[] => {
    if (text.length === 0) return ids
    for (const id of plain.encode(text, { add_special_tokens: false }).ids) ids.push(id)
    return ids
  }

  /** Text where every special-token string is the special token (what the template writes, or a trusted caller). */
  const withSpecials = (text: string): number[] => {
    if (specialPattern === undefined) return appendPlain([], text)
    const ids: number[] = []
    let from = 0
    for (const m of text.matchAll(specialPattern)) {
      appendPlain(ids, text.slice(from, m.index)).push(specialId.get(m[0])!)
      from = m.index + m[0].length
    }
    return appendPlain(ids, text.slice(from))
  }

  const encodeText = (text: string, options?: PromptEncodeOptions): number[] =>
    options?.allowSpecialTokens === true ? withSpecials(text) : appendPlain([], text)

  const encodeChat = (
    messages: ReadonlyArray<ChatMessage>,
    render: ChatRenderer,
    options?: PromptEncodeOptions
  ): number[] => {
    const tools = options?.tools
    if (options?.allowSpecialTokens === true || specialPattern === undefined) return withSpecials(render(messages, tools))
    const hasSpecial = (s: string) => {
      specialPattern.lastIndex = 0
      return specialPattern.test(s)
    }
    // Tool definitions and tool calls reach the template as structures, not text that can be masked: refused.
    if ((tools !== undefined && hasSpecial(JSON.stringify(tools))) || messages.some((m) => m.toolCalls !== undefined && hasSpecial(JSON.stringify(m.toolCalls)))) {
      throw new Error("tool definitions and tool calls may not contain special-token strings")
    }
    if (!messages.some((m) => hasSpecial(m.content))) return withSpecials(render(messages, tools))
    const marker = pickMarker(messages.map((m) => m.content))
    const index = new Map(specialText.map((t, i) => [t, i]))
    const masked = messages.map((m) => ({
      ...m,
      content: m.content.replace(specialPattern, (s) => `${marker}${index.get(s)!.toString(36)}${marker}`)
    }))
    const rendered = render(masked, tools)
    // One pass over the rendered text: a marker puts the caller's string back as text, a special token written by
    // the template ends the text run before it. Each text run is encoded whole, as the BPE would see it unmasked.
    const m = escapeRegExp(marker)
    const scan = new RegExp(`${m}([0-9a-zA-Z]+)${m}|${alternatives}`, "g")
    const ids: number[] = []
    let run = ""
    let from = 0
    for (const match of rendered.matchAll(scan)) {
      run += rendered.slice(from, match.index)
      from = match.index + match[0].length
      if (match[1] !== undefined) {
        run += specialText[parseInt(match[1], 36)] ?? match[0]
      } else {
        appendPlain(ids, run).push(specialId.get(match[0])!)
        run = ""
      }
    }
    return appendPlain(ids, run + rendered.slice(from))
  }

  return { encodeText, encodeChat, specialTokenId: (content) => specialId.get(content) }
}
