/**
 * What the OpenAI and AIME surfaces share about chat input: turning a wire message (content as a string or as a
 * list of text parts) into the engine's `ChatMessage`, and describing a client's value in one short line for an
 * error message. One module, so both APIs flatten and quote alike.
 *
 * @since 0.1.0
 */
import type { ChatMessage, ChatRole } from "../core/text/ChatMessage.ts"

/** A message as either API accepts it; `developer` is OpenAI's newer name for `system`. */
export interface WireChatMessage {
  readonly role: ChatRole | "developer"
  readonly content: string | ReadonlyArray<{ readonly text: string }>
}

/** The text of a message's content: text parts are joined without a separator, as OpenAI concatenates them. */
export const flattenContent = (content: WireChatMessage["content"]): string =>
  typeof content === "string" ? content : content.map((part) => part.text).join("")

/** Wire messages as the engine takes them. */
export const flattenMessages = (messages: ReadonlyArray<WireChatMessage>): Array<ChatMessage> =>
  messages.map((m) => ({ role: m.role === "developer" ? "system" : m.role, content: flattenContent(m.content) }))

const MAX_DESCRIPTION = 60

/**
 * A client's value as it would appear in JSON, cut to 60 characters, for "got ..." in error messages. Never throws:
 * a value JSON cannot render (a cycle, or nesting deep enough to exhaust the stack) is described by its kind.
 */
export const describeValue = (value: unknown): string => {
  if (value === undefined) return "nothing"
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch {
    text = Array.isArray(value) ? "an array" : typeof value === "object" ? "an object" : undefined
  }
  if (text === undefined) return String(value)
  return text.length > MAX_DESCRIPTION ? `${text.slice(0, MAX_DESCRIPTION - 3)}...` : text
}
