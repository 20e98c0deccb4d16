/**
 * The OpenAI wire shapes Chorus accepts, as Schemas. Lenient as OpenAI is: `null` stands for any optional field,
 * content may be empty, an assistant turn may carry `content: null` with `tool_calls`, and fields Chorus does not
 * know are ignored (the routes log them at debug level; `Lenient.ts`). Fields that name an OpenAI feature Chorus
 * lacks (legacy `functions`, ...) are still refused, so a client relying on one hears about it instead of being silently ignored.
 */
import { Schema } from "effect"

// Empty content is taken as OpenAI takes it (an empty turn).
const Content = Schema.Union([
  Schema.String,
  Schema.Array(Schema.Struct({ type: Schema.Literal("text"), text: Schema.String }))
])

/** A tool call of an earlier assistant turn. */
export const ToolCallIn = Schema.Struct({
  id: Schema.optional(Schema.NullOr(Schema.String)),
  type: Schema.optional(Schema.NullOr(Schema.String)),
  function: Schema.Struct({ name: Schema.String, arguments: Schema.String })
})
export type ToolCallIn = typeof ToolCallIn.Type

export const ChatMessageIn = Schema.Union([
  Schema.Struct({
    role: Schema.Literals(["system", "developer", "user"]),
    content: Content,
    name: Schema.optional(Schema.NullOr(Schema.String))
  }),
  // An assistant turn may have no content (it only called tools, or only refused).
  Schema.Struct({
    role: Schema.Literal("assistant"),
    content: Schema.optional(Schema.NullOr(Content)),
    name: Schema.optional(Schema.NullOr(Schema.String)),
    refusal: Schema.optional(Schema.NullOr(Schema.String)),
    tool_calls: Schema.optional(Schema.NullOr(Schema.Array(ToolCallIn)))
  }),
  // A tool's result, answering the call `tool_call_id`.
  Schema.Struct({
    role: Schema.Literal("tool"),
    content: Content,
    tool_call_id: Schema.optional(Schema.NullOr(Schema.String))
  })
])
export type ChatMessageIn = typeof ChatMessageIn.Type

const FunctionName = Schema.String.check(Schema.isPattern(/^[a-zA-Z0-9_.-]{1,64}$/))
const Parameters = Schema.Record(Schema.String, Schema.Unknown)

/** A function the model may call (chat completions shape). */
export const ChatTool = Schema.Struct({
  type: Schema.Literal("function"),
  function: Schema.Struct({
    name: FunctionName,
    description: Schema.optional(Schema.NullOr(Schema.String)),
    parameters: Schema.optional(Schema.NullOr(Parameters)),
    strict: Schema.optional(Schema.NullOr(Schema.Boolean))
  })
})
export type ChatTool = typeof ChatTool.Type

const ChoiceMode = Schema.Literals(["auto", "none", "required"])

/** `auto` (the model decides), `none` (no tools), `required` (some call), or one named function. */
export const ChatToolChoice = Schema.Union([
  ChoiceMode,
  Schema.Struct({ type: Schema.Literal("function"), function: Schema.Struct({ name: Schema.String }) })
])
export type ChatToolChoice = typeof ChatToolChoice.Type

/** A function tool in the Responses API's flat shape. */
export const ResponsesTool = Schema.Struct({
  type: Schema.Literal("function"),
  name: FunctionName,
  description: Schema.optional(Schema.NullOr(Schema.String)),
  parameters: Schema.optional(Schema.NullOr(Parameters)),
  strict: Schema.optional(Schema.NullOr(Schema.Boolean))
})
export type ResponsesTool = typeof ResponsesTool.Type

export const ResponsesToolChoice = Schema.Union([
  ChoiceMode,
  Schema.Struct({ type: Schema.Literal("function"), name: Schema.String })
])
export type ResponsesToolChoice = typeof ResponsesToolChoice.Type

const Stop = Schema.Union([Schema.String, Schema.Array(Schema.String).check(Schema.isMaxLength(16))])
const MaxTokens = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1))

/**
 * Structured output: `text` (no constraint), `json_object` (any JSON object) or `json_schema` (JSON valid against
 * `json_schema.schema`; a missing schema means any JSON). The schema is checked, and refused with a 400 naming
 * `response_format.json_schema.schema`, when the request is validated.
 */
const ResponseFormat = Schema.Union([
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    json_schema: Schema.Struct({
      name: Schema.String,
      description: Schema.optional(Schema.String),
      schema: Schema.optional(Schema.Record(Schema.String, Schema.Unknown)),
      strict: Schema.optional(Schema.NullOr(Schema.Boolean))
    })
  })
])
export type ResponseFormat = typeof ResponseFormat.Type

/** The most choices (`n`) one request may ask for. */
export const MAX_N = 8

/** Sampling and control fields shared by both routes. */
const common = {
  model: Schema.optional(Schema.NullOr(Schema.String)),
  stream: Schema.optional(Schema.NullOr(Schema.Boolean)),
  stream_options: Schema.optional(Schema.NullOr(Schema.Struct({ include_usage: Schema.optional(Schema.NullOr(Schema.Boolean)) }))),
  max_tokens: Schema.optional(Schema.NullOr(MaxTokens)),
  temperature: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 2 })))),
  top_p: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)))),
  stop: Schema.optional(Schema.NullOr(Stop)),
  seed: Schema.optional(Schema.NullOr(Schema.Int)),
  presence_penalty: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: -2, maximum: 2 })))),
  frequency_penalty: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: -2, maximum: 2 })))),
  /** Independent samples of the prompt, answered as choices 0..n-1. */
  n: Schema.optional(Schema.NullOr(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: MAX_N })))),
  user: Schema.optional(Schema.NullOr(Schema.String)),
  response_format: Schema.optional(Schema.NullOr(ResponseFormat)),
  // Extensions, named as vLLM names them.
  top_k: Schema.optional(Schema.NullOr(Schema.Int.check(Schema.isGreaterThanOrEqualTo(-1)))),
  min_p: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 })))),
  repetition_penalty: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(10)))),
  ignore_eos: Schema.optional(Schema.NullOr(Schema.Boolean)),
  priority: Schema.optional(Schema.NullOr(Schema.Int))
}

export const ChatCompletionRequest = Schema.Struct({
  ...common,
  messages: Schema.Array(ChatMessageIn).check(Schema.isMinLength(1)),
  max_completion_tokens: Schema.optional(Schema.NullOr(MaxTokens)),
  logprobs: Schema.optional(Schema.NullOr(Schema.Boolean)),
  top_logprobs: Schema.optional(Schema.NullOr(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 20 })))),
  tools: Schema.optional(Schema.NullOr(Schema.Array(ChatTool).check(Schema.isMaxLength(128)))),
  tool_choice: Schema.optional(Schema.NullOr(ChatToolChoice)),
  parallel_tool_calls: Schema.optional(Schema.NullOr(Schema.Boolean))
})
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

export const CompletionRequest = Schema.Struct({
  ...common,
  prompt: Schema.Union([
    Schema.String,
    Schema.Array(Schema.String).check(Schema.isMinLength(1), Schema.isMaxLength(1)),
    Schema.Array(Schema.Int).check(Schema.isMinLength(1))
  ]),
  echo: Schema.optional(Schema.NullOr(Schema.Boolean)),
  logprobs: Schema.optional(Schema.NullOr(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 5 })))),
  // Only its neutral value (n, or 1): Chorus does not rank extra samples server-side.
  best_of: Schema.optional(Schema.NullOr(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)))),
  suffix: Schema.optional(Schema.NullOr(Schema.Literal("")))
})
export type CompletionRequest = typeof CompletionRequest.Type

/** A Responses API input part: text the user gave, or text an earlier answer gave. */
const ResponseInputPart = Schema.Struct({
  type: Schema.Literals(["input_text", "output_text", "text"]),
  text: Schema.String
})

const ResponseInputMessage = Schema.Struct({
  type: Schema.optional(Schema.NullOr(Schema.Literal("message"))),
  role: Schema.Literals(["system", "developer", "user", "assistant"]),
  content: Schema.Union([Schema.String, Schema.Array(ResponseInputPart)])
})

/** A function call of an earlier answer. */
const ResponseFunctionCall = Schema.Struct({
  type: Schema.Literal("function_call"),
  id: Schema.optional(Schema.NullOr(Schema.String)),
  call_id: Schema.String,
  name: Schema.String,
  arguments: Schema.String,
  status: Schema.optional(Schema.NullOr(Schema.String))
})

/** The result of a function call, for the next turn. */
const ResponseFunctionCallOutput = Schema.Struct({
  type: Schema.Literal("function_call_output"),
  id: Schema.optional(Schema.NullOr(Schema.String)),
  call_id: Schema.String,
  output: Schema.Union([Schema.String, Schema.Array(ResponseInputPart)]),
  status: Schema.optional(Schema.NullOr(Schema.String))
})

export const ResponseInputItem = Schema.Union([ResponseInputMessage, ResponseFunctionCall, ResponseFunctionCallOutput])
export type ResponseInputItem = typeof ResponseInputItem.Type


/**
 * The Responses API's structured output, `text.format`: the same three kinds as chat's `response_format`, with the
 * `json_schema` fields (`name`, `schema`, `strict`) on the format itself instead of under `json_schema`.
 */
const TextFormat = Schema.Union([
  Schema.Struct({ type: Schema.Literal("text") }),
  Schema.Struct({ type: Schema.Literal("json_object") }),
  Schema.Struct({
    type: Schema.Literal("json_schema"),
    name: Schema.String,
    description: Schema.optional(Schema.NullOr(Schema.String)),
    schema: Schema.optional(Schema.Record(Schema.String, Schema.Unknown)),
    strict: Schema.optional(Schema.NullOr(Schema.Boolean))
  })
])
export type TextFormat = typeof TextFormat.Type

/** `text`: the format of the answer (`verbosity` is accepted and plays no part). */
const ResponseText = Schema.Struct({
  format: Schema.optional(Schema.NullOr(TextFormat)),
  verbosity: Schema.optional(Schema.NullOr(Schema.String))
})

/** `POST /v1/responses`, the stateless subset: no `previous_response_id`; `store` is accepted and ignored. */
export const ResponsesRequest = Schema.Struct({
  model: Schema.optional(Schema.NullOr(Schema.String)),
  input: Schema.Union([Schema.String, Schema.Array(ResponseInputItem)]),
  tools: Schema.optional(Schema.NullOr(Schema.Array(ResponsesTool).check(Schema.isMaxLength(128)))),
  tool_choice: Schema.optional(Schema.NullOr(ResponsesToolChoice)),
  parallel_tool_calls: Schema.optional(Schema.NullOr(Schema.Boolean)),
  instructions: Schema.optional(Schema.NullOr(Schema.String)),
  max_output_tokens: Schema.optional(Schema.NullOr(MaxTokens)),
  temperature: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 2 })))),
  top_p: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)))),
  stream: Schema.optional(Schema.NullOr(Schema.Boolean)),
  store: Schema.optional(Schema.NullOr(Schema.Boolean)),
  metadata: Schema.optional(Schema.NullOr(Schema.Record(Schema.String, Schema.String))),
  user: Schema.optional(Schema.NullOr(Schema.String)),
  seed: Schema.optional(Schema.NullOr(Schema.Int)),
  text: Schema.optional(Schema.NullOr(ResponseText))
})
export type ResponsesRequest = typeof ResponsesRequest.Type

/** vLLM's `POST /tokenize`: a completion prompt or chat messages. */
export const TokenizeRequest = Schema.Union([
  Schema.Struct({ model: Schema.optional(Schema.NullOr(Schema.String)), prompt: Schema.String }),
  Schema.Struct({
    model: Schema.optional(Schema.NullOr(Schema.String)),
    messages: Schema.Array(ChatMessageIn).check(Schema.isMinLength(1)),
    tools: Schema.optional(Schema.NullOr(Schema.Array(ChatTool).check(Schema.isMaxLength(128))))
  })
])

/** vLLM's `POST /detokenize`. */
export const DetokenizeRequest = Schema.Struct({
  model: Schema.optional(Schema.NullOr(Schema.String)),
  tokens: Schema.Array(Schema.Int)
})
