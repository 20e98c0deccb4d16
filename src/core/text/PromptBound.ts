/**
 * Lower bounds on a prompt's token count from its UTF-8 length, for refusing a prompt that cannot fit before any
 * tokenizer runs. A byte-level BPE token stands for at most `maxTokenBytes` bytes (its longest vocabulary entry),
 * so B bytes of text need at least ceil(B / maxTokenBytes) tokens, whatever the text is.
 */
import type { ChatMessage } from "./ChatMessage.ts"

export interface TokenBound {
  readonly bytes: number
  readonly tokens: number
}

const bound = (bytes: number, maxTokenBytes: number): TokenBound => ({ bytes, tokens: Math.ceil(bytes / maxTokenBytes) })

export const leastTextTokens = (text: string, maxTokenBytes: number): TokenBound =>
  bound(Buffer.byteLength(text, "utf8"), maxTokenBytes)

/**
 * The fewest of the oldest non-system messages (at most `droppable`) to drop before the chat's bound fits
 * `budgetTokens`, and that bound. Only the messages' content counts, surrounding whitespace trimmed: chat templates
 * trim it, and the headers they add only make the prompt longer. When even `droppable` drops leave the bound over
 * the budget, that is what comes back, and the chat cannot fit.
 */
export const chatDropsForBound = (
  messages: ReadonlyArray<ChatMessage>,
  droppable: number,
  budgetTokens: number,
  maxTokenBytes: number
): { readonly drop: number; readonly least: TokenBound } => {
  const sizes = messages.map((m) => Buffer.byteLength(m.content.trim(), "utf8"))
  let bytes = sizes.reduce((a, b) => a + b, 0)
  let drop = 0
  for (let i = 0; i < messages.length && drop < droppable && bound(bytes, maxTokenBytes).tokens > budgetTokens; i++) {
    if (messages[i]!.role === "system") continue
    bytes -= sizes[i]!
    drop++
  }
  return { drop, least: bound(bytes, maxTokenBytes) }
}
