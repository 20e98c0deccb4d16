/**
 * OpenAI-compatible routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as SSE or not) and
 * `GET /v1/models`. Thin: decode the wire shape, submit to the engine, encode its events.
 */
import { Effect, Stream } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { randomUUID } from "node:crypto"
import type { EngineError } from "../../core/Engine.ts"
import type { GenerateRequest, GenerationEvent, Usage } from "../../core/Request.ts"
import type { SamplingParams } from "../../core/sampling/SamplingParams.ts"
import { bearerKey } from "../ApiKeys.ts"
import { flattenMessages } from "../ChatInput.ts"
import { decodeJson, readJsonBody } from "../JsonBody.ts"
import { type ShutDown, UnknownModel } from "../ServerErrors.ts"
import { Serving } from "../Serving.ts"
import { type OpenAiError, toOpenAiError } from "./Errors.ts"
import { ChatCompletionRequest, CompletionRequest } from "./Schemas.ts"

type Common = ChatCompletionRequest | CompletionRequest

const errorResponse = (e: OpenAiError) => {
  const { status, body } = toOpenAiError(e)
  return HttpServerResponse.jsonUnsafe(body, { status })
}

/**
 * The caller's key, from the headers alone: it runs before any body byte is read, so a client without a valid key
 * cannot make the server read (or buffer) anything. On an open server the header is not looked at.
 */
const authorize = Effect.gen(function*() {
  const serving = yield* Serving
  if (serving.isOpen) return
  const request = yield* HttpServerRequest.HttpServerRequest
  yield* serving.checkKey(yield* bearerKey(request.headers["authorization"]))
})

/** The engine for a request to `model` (or the served model when omitted). */
const engineFor = (model: string | undefined) =>
  Effect.gen(function*() {
    const serving = yield* Serving
    const engine = yield* serving.engine
    if (model !== undefined && model !== engine.model.id) {
      return yield* Effect.fail(new UnknownModel({ model, message: `the model '${model}' does not exist; this server serves '${engine.model.id}'` }))
    }
    return engine
  })

const sampling = (r: Common): Partial<SamplingParams> => {
  const out: { -readonly [K in keyof SamplingParams]?: SamplingParams[K] } = {}
  if (r.temperature != null) out.temperature = r.temperature
  if (r.top_p != null) out.topP = r.top_p
  if (r.top_k != null) out.topK = r.top_k === -1 ? 0 : r.top_k
  if (r.min_p != null) out.minP = r.min_p
  if (r.repetition_penalty != null) out.repetitionPenalty = r.repetition_penalty
  if (r.presence_penalty != null) out.presencePenalty = r.presence_penalty
  if (r.frequency_penalty != null) out.frequencyPenalty = r.frequency_penalty
  if (r.seed != null) out.seed = r.seed
  const format = r.response_format
  if (format?.type === "json_object") out.grammar = { kind: "json" }
  else if (format?.type === "json_schema") {
    const schema = format.json_schema.schema
    out.grammar = schema === undefined ? { kind: "json" } : { kind: "json_schema", schema: JSON.stringify(schema) }
  }
  return out
}

const controls = (r: Common, maxTokens: number | null | undefined): Omit<GenerateRequest, "input"> => ({
  sampling: sampling(r),
  ...(maxTokens == null ? {} : { maxTokens }),
  ...(r.stop == null ? {} : { stop: typeof r.stop === "string" ? [r.stop] : r.stop }),
  ...(r.ignore_eos === undefined ? {} : { ignoreEos: r.ignore_eos }),
  ...(r.priority === undefined ? {} : { priority: r.priority })
})

interface Collected {
  readonly text: string
  readonly finishReason: string
  readonly usage: Usage
}

const collect = (events: Stream.Stream<GenerationEvent, EngineError>) =>
  Stream.runFold(events, () => ({ text: "", finishReason: "stop", usage: { promptTokens: 0, completionTokens: 0 } }) as Collected, (acc, e) => {
    switch (e._tag) {
      case "Token":
        return { ...acc, text: acc.text + e.text }
      case "Finished":
        return { text: acc.text + e.text, finishReason: e.finishReason, usage: e.usage }
      default:
        return acc
    }
  })

const usageOf = (u: Usage) => ({ prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, total_tokens: u.promptTokens + u.completionTokens })

const frame = (chunk: unknown) => `data: ${JSON.stringify(chunk)}\n\n`

/**
 * An SSE response from a stream of ready-made frames (each `data: ...\n\n`, possibly several per element), cut
 * when its client stops reading. At the end of the shutdown grace period the stream stops and ends like any failed
 * one: an error event, then [DONE].
 */
const sse = (frames: Stream.Stream<string, EngineError>) =>
  Effect.gen(function*() {
    const serving = yield* Serving
    return streamResponse(yield* serving.slowReader.guard(frames), serving.shutdown)
  })

const streamResponse = (frames: Stream.Stream<string, EngineError>, shutdown: Effect.Effect<never, ShutDown>) =>
  HttpServerResponse.stream(
    frames.pipe(
      // Checked before each pull, not raced with it (a race per token would cost a fiber hop per token): a stream
      // stops at its next frame, which comes within a step for a running sequence.
      Stream.haltWhen(shutdown),
      // An error after the first byte can no longer change the status: it becomes an SSE error event.
      Stream.catch((e: EngineError | ShutDown) => Stream.succeed(frame(toOpenAiError(e).body))),
      Stream.concat(Stream.succeed("data: [DONE]\n\n")),
      Stream.encodeText
    ),
    { contentType: "text/event-stream", headers: { "cache-control": "no-cache", "x-accel-buffering": "no" } }
  )

/**
 * The SSE frames of one generation: one chunk per token (the first carries the role), a final chunk with the
 * finish reason, and the usage chunk when asked for. Plain functions, no per-event streams: this runs per token.
 */
const streamFrames = (
  events: Stream.Stream<GenerationEvent, EngineError>,
  head: Record<string, unknown>,
  choice: (text: string, first: boolean, finish: string | null) => Record<string, unknown>,
  includeUsage: boolean
): Stream.Stream<string, EngineError> => {
  let first = true
  const toFrame = (e: GenerationEvent): string => {
    switch (e._tag) {
      case "Token": {
        if (e.text === "" && !first) return ""
        const out = frame({ ...head, choices: [choice(e.text, first, null)] })
        first = false
        return out
      }
      case "Finished": {
        const done = frame({ ...head, choices: [choice(e.text, first, e.finishReason)] })
        return includeUsage ? done + frame({ ...head, choices: [], usage: usageOf(e.usage) }) : done
      }
      default:
        return ""
    }
  }
  return events.pipe(
    // Events that arrived together (a slow reader, a burst) become one write: fewer syscalls under load, and no
    // added latency when the reader keeps up (then each pull holds one event).
    Stream.mapArray((batch) => [batch.map(toFrame).join("")] as const),
    Stream.filter((f) => f.length > 0)
  )
}

const chatCompletions = Effect.gen(function*() {
  yield* authorize
  const req = yield* decodeJson(ChatCompletionRequest, yield* readJsonBody)
  const engine = yield* engineFor(req.model)
  const events = yield* engine.submit({ input: { type: "chat", messages: flattenMessages(req.messages) }, ...controls(req, req.max_completion_tokens ?? req.max_tokens) })
  const head = { id: `chatcmpl-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: engine.model.id }
  if (req.stream === true) {
    return yield* sse(
      streamFrames(events, { ...head, object: "chat.completion.chunk" }, (text, first, finish) => ({
        index: 0,
        delta: finish !== null && text === "" ? {} : first ? { role: "assistant", content: text } : { content: text },
        logprobs: null,
        finish_reason: finish
      }), req.stream_options?.include_usage === true)
    )
  }
  const { shutdown } = yield* Serving
  const done = yield* Effect.raceFirst(collect(events), shutdown)
  return HttpServerResponse.jsonUnsafe({
    ...head,
    object: "chat.completion",
    choices: [{ index: 0, message: { role: "assistant", content: done.text }, logprobs: null, finish_reason: done.finishReason }],
    usage: usageOf(done.usage)
  })
})

const completions = Effect.gen(function*() {
  yield* authorize
  const req = yield* decodeJson(CompletionRequest, yield* readJsonBody)
  const engine = yield* engineFor(req.model)
  const prompt = req.prompt
  const input: GenerateRequest["input"] = typeof prompt === "string"
    ? { type: "text", text: prompt }
    : typeof prompt[0] === "string"
    ? { type: "text", text: prompt[0] }
    : { type: "tokens", tokenIds: prompt as ReadonlyArray<number> }
  // OpenAI's legacy default is 16 tokens.
  const events = yield* engine.submit({ input, ...controls(req, req.max_tokens ?? 16) })
  const head = { id: `cmpl-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: engine.model.id }
  if (req.stream === true) {
    return yield* sse(
      streamFrames(events, { ...head, object: "text_completion" }, (text, _first, finish) => ({ index: 0, text, logprobs: null, finish_reason: finish }), req.stream_options?.include_usage === true)
    )
  }
  const { shutdown } = yield* Serving
  const done = yield* Effect.raceFirst(collect(events), shutdown)
  return HttpServerResponse.jsonUnsafe({
    ...head,
    object: "text_completion",
    choices: [{ index: 0, text: done.text, logprobs: null, finish_reason: done.finishReason }],
    usage: usageOf(done.usage)
  })
})

const models = Effect.gen(function*() {
  yield* authorize
  const serving = yield* Serving
  const engine = yield* serving.loadedEngine
  return HttpServerResponse.jsonUnsafe({
    object: "list",
    data: [{ id: engine.model.id, object: "model", created: 0, owned_by: "chorus", max_model_len: engine.model.contextLength }]
  })
})

const handle = <R>(effect: Effect.Effect<HttpServerResponse.HttpServerResponse, OpenAiError, R>) =>
  effect.pipe(Effect.catch((e: OpenAiError) => Effect.succeed(errorResponse(e))))

export const OpenAiRoutes = HttpRouter.use(Effect.fn(function*(router) {
  yield* router.add("POST", "/v1/chat/completions", handle(chatCompletions))
  yield* router.add("POST", "/v1/completions", handle(completions))
  yield* router.add("GET", "/v1/models", handle(models))
}))
