/**
 * One message of a chat, as every surface (OpenAI routes, AIME routes, CLI) hands it to a model adapter, and the
 * tools a chat may offer the model.
 */
import { Schema } from "effect"

/** `tool`: the result of a tool call, answering an earlier assistant turn's `toolCalls`. */
export const ChatRole = Schema.Literals(["system", "user", "assistant", "tool"])
export type ChatRole = typeof ChatRole.Type

/** A function call the assistant made; `arguments` is JSON text (an object). */
export const ToolCall = Schema.Struct({
  id: Schema.optional(Schema.String),
  name: Schema.String,
  arguments: Schema.String
})
export type ToolCall = typeof ToolCall.Type

export const ChatMessage = Schema.Struct({
  role: ChatRole,
  content: Schema.String,
  /** An assistant turn's tool calls. */
  toolCalls: Schema.optional(Schema.Array(ToolCall)),
  /** A tool turn: the call it answers. */
  toolCallId: Schema.optional(Schema.String)
})
export type ChatMessage = typeof ChatMessage.Type

/** A function the model may call: its name, what it does, and a JSON schema of its parameters (an object). */
export const ToolDefinition = Schema.Struct({
  name: Schema.String,
  description: Schema.optional(Schema.String),
  parameters: Schema.optional(Schema.Record(Schema.String, Schema.Unknown))
})
export type ToolDefinition = typeof ToolDefinition.Type
