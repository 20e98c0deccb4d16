/**
 * One message of a chat, as every surface (OpenAI routes, AIME routes, CLI) hands it to a model adapter.
 */
import { Schema } from "effect"

export const ChatRole = Schema.Literals(["system", "user", "assistant"])
export type ChatRole = typeof ChatRole.Type

export const ChatMessage = Schema.Struct({
  role: ChatRole,
  content: Schema.String
})
export type ChatMessage = typeof ChatMessage.Type
