/**
 * The inputs of the AIME `llama3_chat` endpoint (endpoint version 3) and their decoding into an engine request.
 * Each parameter has its own Schema so that every bad parameter gets its own message: the AIME protocol answers a
 * list of messages, one per problem, where the OpenAI routes stop at the first.
 *
 * @since 0.1.0
 */
import { Effect, Exit, Schema } from "effect"
import type { PromptInput } from "../../core/Request.ts"
import type { SamplingParams } from "../../core/sampling/SamplingParams.ts"
import type { ChatMessage } from "../../core/text/ChatMessage.ts"
import { describeValue, flattenMessages } from "../ChatInput.ts"
import { MAX_JSON_DEPTH, nestsDeeperThan, schemaErrorToValidation } from "../JsonBody.ts"
import { AimeInputError } from "./Errors.ts"

/** The endpoint version Chorus implements (`ep_version` in every answer). */
export const EP_VERSION = 3

const between = (minimum: number, maximum: number) => Schema.isBetween({ minimum, maximum })

/** A part of a multimodal message: Chorus serves a text model, so only text parts. */
const TextPart = Schema.Struct({ type: Schema.optional(Schema.Literal("text")), text: Schema.String })

const ChatMessageIn = Schema.Struct({
  role: Schema.Literals(["system", "user", "assistant"]),
  content: Schema.Union([Schema.String, Schema.Array(TextPart)])
})

const ChatContext = Schema.Array(ChatMessageIn)

type Kind = "chat_context" | "text_context" | "string" | "integer" | "float" | "bool"

interface InputSpec {
  readonly kind: Kind
  readonly schema: Schema.Top & { readonly DecodingServices: never }
  readonly describe: Record<string, unknown>
}

/** Declared inputs, in the reference's order; the implicit ones last. */
export const inputs: Record<string, InputSpec> = {
  chat_context: {
    kind: "chat_context",
    schema: Schema.Union([Schema.String, ChatContext]),
    describe: { type: "chat_context", required: false, support: [] }
  },
  text_context: {
    kind: "text_context",
    schema: Schema.String,
    describe: { type: "text_context", required: false, help: "plain completion prompt (no chat template); not with chat_context" }
  },
  prompt_input: {
    kind: "string",
    schema: Schema.String,
    describe: { type: "string", default: "", help: "appended to chat_context as a final user turn" }
  },
  top_k: { kind: "integer", schema: Schema.Int.check(between(1, 1000)), describe: { type: "integer", minimum: 1, maximum: 1000, default: 40 } },
  top_p: { kind: "float", schema: Schema.Number.check(between(0, 1)), describe: { type: "float", minimum: 0, maximum: 1, default: 0.9 } },
  temperature: { kind: "float", schema: Schema.Number.check(between(0, 1)), describe: { type: "float", minimum: 0, maximum: 1, default: 0.8 } },
  max_gen_tokens: { kind: "integer", schema: Schema.Int.check(between(1, 16384)), describe: { type: "integer", minimum: 1, maximum: 16384, default: 2000 } },
  client_session_auth_key: { kind: "string", schema: Schema.String, describe: { type: "string" } },
  key: { kind: "string", schema: Schema.String, describe: { type: "string" } },
  wait_for_result: { kind: "bool", schema: Schema.Boolean, describe: { type: "bool", default: true } }
}

/** `parameter_description` of the endpoint details. */
export const parameterDescription = {
  input: Object.fromEntries(Object.entries(inputs).map(([name, spec]) => [name, spec.describe])),
  output: {
    text: { type: "string" },
    num_generated_tokens: { type: "integer" },
    model_name: { type: "string" },
    max_seq_len: { type: "integer" },
    current_context_length: { type: "integer" },
    prompt_length: { type: "integer" },
    error: { type: "string" }
  },
  progress: {
    OUTPUTS: { text: { type: "string" }, num_generated_tokens: { type: "integer" }, current_context_length: { type: "integer" } }
  }
}

/**
 * Query-string values arrive as strings: turn them into the declared type where they read as one (`"0.5"`,
 * `"true"`); anything else stays a string and fails decoding with its own message.
 */
export const coerceQuery = (query: Readonly<Record<string, string | ReadonlyArray<string>>>): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  for (const [name, raw] of Object.entries(query)) {
    const value = typeof raw === "string" ? raw : raw[0] ?? ""
    const kind = Object.hasOwn(inputs, name) ? inputs[name]?.kind : undefined
    if ((kind === "integer" || kind === "float") && value.trim() !== "" && Number.isFinite(Number(value))) out[name] = Number(value)
    else if (kind === "bool" && /^(true|1)$/i.test(value)) out[name] = true
    else if (kind === "bool" && /^(false|0)$/i.test(value)) out[name] = false
    else out[name] = value
  }
  return out
}

/** A submission, decoded: what to generate, and how the client wants the answer. */
export interface JobInput {
  readonly input: PromptInput
  readonly sampling: Partial<SamplingParams>
  readonly maxGenTokens: number
  readonly waitForResult: boolean
}

/** The credentials any AIME route may carry. */
export interface Credentials {
  readonly key: string | undefined
  readonly session: string | undefined
}

const optionalString = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined)

export const credentialsOf = (params: Readonly<Record<string, unknown>>): Credentials => ({
  key: optionalString(params["key"]),
  session: optionalString(params["client_session_auth_key"])
})

const mediaPart = (messages: unknown): string | undefined => {
  if (!Array.isArray(messages)) return undefined
  for (const [i, m] of messages.entries()) {
    const content: unknown = m !== null && typeof m === "object" ? (m as Record<string, unknown>)["content"] : undefined
    if (!Array.isArray(content)) continue
    for (const [j, part] of content.entries()) {
      for (const media of ["image", "audio", "video"]) {
        if (part !== null && typeof part === "object" && media in part) {
          return `chat_context[${i}].content[${j}]: ${media} parts are not supported by this endpoint (text only)`
        }
      }
    }
  }
  return undefined
}

/**
 * chat_context: a string holding a JSON array (what AIME clients send) or the array itself. The string gets the
 * same nesting limit as a request body (an array in the body was already checked with the body).
 */
const decodeChatContext = (value: unknown): { readonly messages: Array<ChatMessage> } | { readonly error: string } => {
  let parsed: unknown = value
  if (typeof value === "string") {
    if (value.trim() === "") return { messages: [] }
    if (nestsDeeperThan(value, MAX_JSON_DEPTH)) {
      return { error: `chat_context: the JSON nests arrays or objects deeper than ${MAX_JSON_DEPTH} levels, the limit` }
    }
    try {
      parsed = JSON.parse(value)
    } catch (e) {
      return { error: `chat_context: expected a JSON array of {role, content} messages, got invalid JSON (${e instanceof Error ? e.message : String(e)})` }
    }
  }
  const media = mediaPart(parsed)
  if (media !== undefined) return { error: media }
  const exit = Schema.decodeUnknownExit(Schema.Struct({ chat_context: ChatContext }))({ chat_context: parsed })
  if (Exit.isSuccess(exit)) return { messages: flattenMessages(exit.value.chat_context) }
  const error = exit.cause.reasons.find((r) => r._tag === "Fail")
  return { error: error?._tag === "Fail" ? schemaErrorToValidation(error.error, { chat_context: parsed }).message : "chat_context: invalid" }
}

/**
 * Decodes a submission: unknown parameters, then every declared one (null counts as absent, as in the reference),
 * then the prompt. All problems are reported together.
 */
export const decodeJobInput = (params: Readonly<Record<string, unknown>>): Effect.Effect<JobInput, AimeInputError> =>
  Effect.suspend(() => {
    const unknown = Object.keys(params).filter((name) => !Object.hasOwn(inputs, name))
    if (unknown.length > 0) return Effect.fail(new AimeInputError({ messages: [`Invalid input parameter(s): ${unknown.join(", ")}`] }))
    const errors: Array<string> = []
    const values: Record<string, unknown> = {}
    for (const [name, spec] of Object.entries(inputs)) {
      let value = params[name]
      if (value === undefined || value === null) continue
      // The reference converts float to int by truncation.
      if (spec.kind === "integer" && typeof value === "number" && Number.isFinite(value)) value = Math.trunc(value)
      const exit = Schema.decodeUnknownExit(spec.schema)(value)
      if (Exit.isSuccess(exit)) values[name] = exit.value
      else {
        const reason = exit.cause.reasons.find((r) => r._tag === "Fail")
        const first = reason?._tag === "Fail" ? (reason.error as Schema.SchemaError).message.split("\n")[0] : "invalid value"
        errors.push(`${name}: ${first}, got ${describeValue(value)}`)
      }
    }
    let messages: Array<ChatMessage> = []
    if (values["chat_context"] !== undefined) {
      const chat = decodeChatContext(values["chat_context"])
      if ("error" in chat) errors.push(chat.error)
      else messages = chat.messages
    }
    const promptInput = (values["prompt_input"] as string | undefined) ?? ""
    const textContext = values["text_context"] as string | undefined
    let input: PromptInput | undefined
    if (textContext !== undefined && textContext !== "") {
      if (messages.length > 0) errors.push("text_context: cannot be combined with a non-empty chat_context")
      else if (promptInput !== "") errors.push("text_context: cannot be combined with a non-empty prompt_input")
      else input = { type: "text", text: textContext }
    } else {
      if (promptInput !== "") messages = [...messages, { role: "user", content: promptInput }]
      if (messages.length > 0) input = { type: "chat", messages }
      else if (errors.length === 0) errors.push("chat_context: no input given; send chat_context, prompt_input or text_context")
    }
    if (errors.length > 0 || input === undefined) return Effect.fail(new AimeInputError({ messages: errors }))
    const topP = (values["top_p"] as number | undefined) ?? 0.9
    const topK = (values["top_k"] as number | undefined) ?? 40
    return Effect.succeed({
      input,
      // top_p = 0 keeps only the most likely token (the engine requires top_p > 0; top_k = 1 is the same choice).
      sampling: topP === 0
        ? { temperature: (values["temperature"] as number | undefined) ?? 0.8, topK: 1, topP: 1 }
        : { temperature: (values["temperature"] as number | undefined) ?? 0.8, topK, topP },
      maxGenTokens: (values["max_gen_tokens"] as number | undefined) ?? 2000,
      waitForResult: (values["wait_for_result"] as boolean | undefined) ?? true
    })
  })
