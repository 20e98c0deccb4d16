/**
 * Turns a `GenerateRequest` into a `ValidatedRequest`: defaults resolved, seed fixed, ranges checked, prompt
 * tokenized and fitted to the context. Messages name the field, the limit and the value given.
 */
import { Effect } from "effect"
import type { LoadedModel, PromptOptions } from "./ModelAdapter.ts"
import { ContextLengthError, type GenerationError, ValidationError } from "./Errors.ts"
import type { GenerateRequest, ValidatedRequest } from "./Request.ts"
import { checkJsonSchema } from "./sampling/Grammar.ts"
import type { SamplingParams } from "./sampling/SamplingParams.ts"
import type { ChatMessage } from "./text/ChatMessage.ts"
import { droppableMessages, dropOldest, fitChat } from "./text/ChatTruncation.ts"
import { chatDropsForBound, leastTextTokens } from "./text/PromptBound.ts"

/** Engine-level defaults; protocol layers pass their own (OpenAI: temperature 1, AIME: its documented values). */
export const defaultSampling: Omit<SamplingParams, "seed"> = {
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0
}

const invalid = (field: string, message: string) => Effect.fail(new ValidationError({ field, message }))

const checkRange = (field: string, value: number, min: number, max: number, opts: { integer?: boolean; minExclusive?: boolean } = {}) => {
  if (typeof value !== "number" || !Number.isFinite(value)) return invalid(field, `${field} must be a number, got ${String(value)}`)
  if (opts.integer === true && !Number.isInteger(value)) return invalid(field, `${field} must be an integer, got ${value}`)
  const belowMin = opts.minExclusive === true ? value <= min : value < min
  if (belowMin || value > max) {
    const lower = opts.minExclusive === true ? `greater than ${min}` : `at least ${min}`
    return invalid(field, `${field} must be ${lower} and at most ${max}, got ${value}`)
  }
  return Effect.void
}

/** Checks sampling parameters and fills in defaults; a missing seed is drawn at random. */
export const resolveSampling = (given: Partial<SamplingParams> | undefined): Effect.Effect<SamplingParams, ValidationError> =>
  Effect.gen(function*() {
    const p = { ...defaultSampling, seed: Math.floor(Math.random() * 2 ** 31), ...given }
    yield* checkRange("temperature", p.temperature, 0, 100)
    yield* checkRange("top_k", p.topK, 0, 1_000_000, { integer: true })
    yield* checkRange("top_p", p.topP, 0, 1, { minExclusive: true })
    yield* checkRange("min_p", p.minP, 0, 1)
    yield* checkRange("repetition_penalty", p.repetitionPenalty, 0, 10, { minExclusive: true })
    yield* checkRange("presence_penalty", p.presencePenalty, -2, 2)
    yield* checkRange("frequency_penalty", p.frequencyPenalty, -2, 2)
    yield* checkRange("seed", p.seed, -(2 ** 53), 2 ** 53, { integer: true })
    const grammar = p.grammar
    if (grammar === undefined) delete p.grammar
    else if (grammar.kind === "json_schema") {
      const reason = checkJsonSchema(grammar.schema)
      if (reason !== undefined) return yield* invalid("response_format.json_schema.schema", `response_format.json_schema.schema: ${reason}`)
    } else if (grammar.kind !== "json") return yield* invalid("response_format", `unknown grammar kind ${String((grammar as { kind: unknown }).kind)}`)
    return p
  })

const tooLong = (least: number, bytes: number, maxTokenBytes: number, budget: number, context: number) =>
  Effect.fail(
    new ContextLengthError({
      promptTokens: least,
      contextLength: context,
      message: `the prompt has ${bytes} bytes of text, at least ${least} tokens (a token covers at most ` +
        `${maxTokenBytes} bytes), but the context holds ${context} tokens` +
        (budget === context - 1 ? " (prompt + at least 1 generated token)" : ` and the prompt may use ${budget}`)
    })
  )

/**
 * The chat's prompt ids, the oldest messages dropped as needed. With the model's bytes-per-token bound, messages
 * that cannot fit go before any tokenizer runs, so a huge history costs no tokenization.
 */
const chatPrompt = (
  messages: ReadonlyArray<ChatMessage>,
  budget: number,
  context: number,
  model: LoadedModel,
  options: PromptOptions
) =>
  Effect.gen(function*() {
    let candidates = messages
    const bound = model.maxTokenBytes
    if (bound !== undefined) {
      const { drop, least } = chatDropsForBound(messages, droppableMessages(messages), budget, bound)
      if (least.tokens > budget) return yield* tooLong(least.tokens, least.bytes, bound, budget, context)
      if (drop > 0) candidates = dropOldest(messages, drop)
    }
    // fitChat counts the whole chat first; when it fits, those ids are the prompt (no second tokenization).
    let last: { readonly messages: ReadonlyArray<ChatMessage>; readonly ids: ReadonlyArray<number> } | undefined
    const count = (m: ReadonlyArray<ChatMessage>) =>
      Effect.map(model.formatChat(m, options), (ids) => {
        last = { messages: m, ids }
        return ids.length
      })
    const fitted = yield* fitChat(candidates, budget, count)
    const same = last !== undefined && last.messages.length === fitted.length &&
      last.messages.every((m, i) => m === fitted[i])
    const ids = same ? last!.ids : yield* model.formatChat(fitted, options)
    return { ids, truncatedMessages: messages.length - fitted.length }
  })

export const validateRequest = (
  request: GenerateRequest,
  model: LoadedModel,
  promptOptions: PromptOptions = { allowSpecialTokens: false }
): Effect.Effect<ValidatedRequest, ValidationError | ContextLengthError | GenerationError> =>
  Effect.gen(function*() {
    const context = model.contextLength
    if (request.maxTokens !== undefined) {
      yield* checkRange("max_tokens", request.maxTokens, 1, context - 1, { integer: true })
    }
    const sampling = yield* resolveSampling(request.sampling)
    if (sampling.grammar !== undefined && model.codec.tokenBytes === undefined) {
      return yield* invalid("response_format", `response_format is not supported by ${model.id}: its tokenizer gives no token bytes`)
    }
    if (request.priority !== undefined) yield* checkRange("priority", request.priority, -1_000_000, 1_000_000, { integer: true })
    if (request.timeoutMs !== undefined) yield* checkRange("timeout", request.timeoutMs, 1, 7 * 24 * 3600 * 1000)
    if (request.logprobs !== undefined) yield* checkRange("logprobs", request.logprobs, 0, 20, { integer: true })
    const stop = request.stop ?? []
    if (stop.length > 16) return yield* invalid("stop", `stop may hold at most 16 strings, got ${stop.length}`)
    if (stop.some((s) => typeof s !== "string" || s.length === 0)) return yield* invalid("stop", "stop strings must be non-empty")

    let prompt: ReadonlyArray<number>
    let truncatedMessages = 0
    const input = request.input
    switch (input.type) {
      case "chat": {
        if (input.messages.length === 0) return yield* invalid("messages", "messages must hold at least one message")
        // Keep room for at least the requested answer (or one token) after the prompt.
        const budget = context - Math.min(request.maxTokens ?? 1, context - 1)
        const chat = yield* chatPrompt(input.messages, budget, context, model, input.tools === undefined || input.tools.length === 0 ? promptOptions : { ...promptOptions, tools: input.tools })
        truncatedMessages = chat.truncatedMessages
        prompt = chat.ids
        break
      }
      case "text": {
        const bound = model.maxTokenBytes
        if (bound !== undefined) {
          const least = leastTextTokens(input.text, bound)
          if (least.tokens >= context) return yield* tooLong(least.tokens, least.bytes, bound, context - 1, context)
        }
        prompt = yield* model.formatCompletion(input.text, promptOptions)
        break
      }
      case "tokens": {
        if (input.tokenIds.length === 0) return yield* invalid("prompt", "the prompt must hold at least one token")
        const bad = input.tokenIds.find((t) => !Number.isInteger(t) || t < 0 || t >= model.vocabSize)
        if (bad !== undefined) {
          return yield* invalid("prompt", `token id ${bad} is outside the vocabulary [0, ${model.vocabSize})`)
        }
        prompt = input.tokenIds
        break
      }
    }
    if (prompt.length === 0) return yield* invalid("prompt", "the prompt must not be empty")
    const outside = prompt.find((t) => t >= model.vocabSize)
    if (outside !== undefined) {
      return yield* invalid("prompt", `the tokenizer produced id ${outside}, outside the model's vocabulary [0, ${model.vocabSize}): give the checkpoint its own tokenizer.json`)
    }
    if (prompt.length >= context) {
      return yield* Effect.fail(
        new ContextLengthError({
          promptTokens: prompt.length,
          contextLength: context,
          message: `the prompt has ${prompt.length} tokens but the context holds ${context} (prompt + at least 1 generated token)`
        })
      )
    }
    return {
      promptTokenIds: Int32Array.from(prompt),
      maxTokens: request.maxTokens ?? context,
      sampling,
      stop,
      ignoreEos: request.ignoreEos ?? false,
      promptLogits: request.promptLogits ?? "none",
      ...(request.logprobs === undefined ? {} : { logprobs: request.logprobs }),
      truncatedMessages,
      priority: request.priority ?? 0,
      timeoutMs: request.timeoutMs ?? Number.POSITIVE_INFINITY
    }
  })
