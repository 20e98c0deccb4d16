/**
 * The OpenAI wire shapes Chorus accepts, as Schemas (decoding rejects unknown fields, so a client asking for a
 * feature Chorus lacks hears about it instead of being silently ignored). Fields that OpenAI defines but Chorus
 * does not implement are accepted only with their neutral value (`n: 1`, `logprobs: false`) and otherwise refused.
 */
import { Schema } from "effect"

// An empty message says nothing a model could answer: refused rather than passed through.
const Content = Schema.Union([
  Schema.String.check(Schema.isMinLength(1)),
  Schema.Array(Schema.Struct({ type: Schema.Literal("text"), text: Schema.String })).check(Schema.isMinLength(1))
])

export const ChatMessageIn = Schema.Struct({
  role: Schema.Literals(["system", "developer", "user", "assistant"]),
  content: Content,
  name: Schema.optional(Schema.String)
})

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

/** Sampling and control fields shared by both routes. */
const common = {
  model: Schema.optional(Schema.String),
  stream: Schema.optional(Schema.Boolean),
  stream_options: Schema.optional(Schema.NullOr(Schema.Struct({ include_usage: Schema.optional(Schema.Boolean) }))),
  max_tokens: Schema.optional(Schema.NullOr(MaxTokens)),
  temperature: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 2 })))),
  top_p: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)))),
  stop: Schema.optional(Schema.NullOr(Stop)),
  seed: Schema.optional(Schema.NullOr(Schema.Int)),
  presence_penalty: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: -2, maximum: 2 })))),
  frequency_penalty: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: -2, maximum: 2 })))),
  n: Schema.optional(Schema.NullOr(Schema.Literal(1))),
  user: Schema.optional(Schema.String),
  response_format: Schema.optional(Schema.NullOr(ResponseFormat)),
  // Extensions, named as vLLM names them.
  top_k: Schema.optional(Schema.NullOr(Schema.Int.check(Schema.isGreaterThanOrEqualTo(-1)))),
  min_p: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 })))),
  repetition_penalty: Schema.optional(Schema.NullOr(Schema.Number.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(10)))),
  ignore_eos: Schema.optional(Schema.Boolean),
  priority: Schema.optional(Schema.Int)
}

export const ChatCompletionRequest = Schema.Struct({
  ...common,
  messages: Schema.Array(ChatMessageIn).check(Schema.isMinLength(1)),
  max_completion_tokens: Schema.optional(Schema.NullOr(MaxTokens)),
  logprobs: Schema.optional(Schema.NullOr(Schema.Literal(false)))
})
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

export const CompletionRequest = Schema.Struct({
  ...common,
  prompt: Schema.Union([
    Schema.String,
    Schema.Array(Schema.String).check(Schema.isMinLength(1), Schema.isMaxLength(1)),
    Schema.Array(Schema.Int).check(Schema.isMinLength(1))
  ]),
  echo: Schema.optional(Schema.NullOr(Schema.Literal(false))),
  logprobs: Schema.optional(Schema.NullOr(Schema.Literal(0))),
  best_of: Schema.optional(Schema.NullOr(Schema.Literal(1))),
  suffix: Schema.optional(Schema.NullOr(Schema.Literal("")))
})
export type CompletionRequest = typeof CompletionRequest.Type
