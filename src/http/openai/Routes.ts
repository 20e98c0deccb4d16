/**
 * OpenAI-compatible routes: `POST /v1/chat/completions`, `POST /v1/completions` (streamed as SSE or not, `n`
 * choices, logprobs, echo), `POST /v1/responses` (the stateless subset), `GET /v1/models[/{id}]`, and vLLM's
 * `POST /tokenize`, `POST /detokenize` and `GET /version`. Thin: decode the wire shape, submit to the engine, encode
 * its events.
 */
import { Effect, type Schema, Stream } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { randomUUID } from "node:crypto"
import { createRequire } from "node:module"
import type { Engine, EngineError } from "../../core/Engine.ts"
import { ValidationError } from "../../core/Errors.ts"
import type { GenerateRequest, GenerationEvent, TokenLogprobs, Usage } from "../../core/Request.ts"
import type { SamplingParams } from "../../core/sampling/SamplingParams.ts"
import type { ChatMessage, ToolCall, ToolDefinition } from "../../core/text/ChatMessage.ts"
import { bearerKey } from "../ApiKeys.ts"
import { flattenContent } from "../ChatInput.ts"
import { decodeJsonLenient, readJsonBody } from "../JsonBody.ts"
import { type ShutDown, UnknownModel } from "../ServerErrors.ts"
import { Serving } from "../Serving.ts"
import { type OpenAiError, toOpenAiError } from "./Errors.ts"
import { type CallPiece, ForcedCallStream, forcedCall, type ParsedCall, type ToolSetup, ToolStream, toolGrammar, toolSetup } from "./Tools.ts"
import { chatLogprob, type CompletionLogprobs, CompletionLogprobsBuilder, promptLogprobs } from "./Logprobs.ts"
import {
  ChatCompletionRequest,
  type ChatMessageIn,
  type ChatTool,
  type ChatToolChoice,
  CompletionRequest,
  DetokenizeRequest,
  type ResponseInputItem,
  ResponsesRequest,
  type ResponseFormat,
  type ResponsesTool,
  type ResponsesToolChoice,
  type TextFormat,
  TokenizeRequest,
  type ToolCallIn
} from "./Schemas.ts"

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
const engineFor = (model: string | null | undefined) =>
  Effect.gen(function*() {
    const serving = yield* Serving
    const engine = yield* serving.engine
    if (model != null && model !== engine.model.id) {
      return yield* Effect.fail(new UnknownModel({ model, message: `the model '${model}' does not exist; this server serves '${engine.model.id}'` }))
    }
    return engine
  })

const sampling = (r: SamplingFields): Partial<SamplingParams> => {
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

/** The sampling fields both routes share with the Responses API (a subset). */
interface SamplingFields {
  readonly temperature?: number | null | undefined
  readonly top_p?: number | null | undefined
  readonly top_k?: number | null | undefined
  readonly min_p?: number | null | undefined
  readonly repetition_penalty?: number | null | undefined
  readonly presence_penalty?: number | null | undefined
  readonly frequency_penalty?: number | null | undefined
  readonly seed?: number | null | undefined
  readonly response_format?: ResponseFormat | null | undefined
}

const controls = (r: Common, maxTokens: number | null | undefined): Omit<GenerateRequest, "input"> => ({
  sampling: sampling(r),
  ...(maxTokens == null ? {} : { maxTokens }),
  ...(r.stop == null ? {} : { stop: typeof r.stop === "string" ? [r.stop] : r.stop }),
  ...(r.ignore_eos == null ? {} : { ignoreEos: r.ignore_eos }),
  ...(r.priority == null ? {} : { priority: r.priority })
})

/**
 * Submits `n` independent samples of one request (all validated and queued before any is streamed, so a full queue
 * refuses the whole request). With a seed, sample i uses seed + i: sample 0 is what `n: 1` gives, and the whole
 * answer is reproducible. Prefix caching lets later samples reuse the first one's prompt blocks.
 */
const submitN = (engine: Engine["Service"], request: GenerateRequest, n: number) =>
  Effect.forEach(Array.from({ length: n }, (_, i) => i), (i) => {
    const seed = request.sampling?.seed
    return engine.submit(i === 0 || seed === undefined ? request : { ...request, sampling: { ...request.sampling, seed: seed + i } })
  })

/** Every OpenAI field Chorus lacks: refused when given a value, so no client silently loses a feature. */
const REFUSED = ["functions", "function_call", "logit_bias", "prediction", "audio", "modalities", "previous_response_id", "conversation", "background"]

const decodeBody = <S extends Schema.Top & { readonly DecodingServices: never; readonly fields: Schema.Struct.Fields }>(schema: S) =>
  Effect.flatMap(readJsonBody, (body) => decodeJsonLenient(schema, body, { known: Object.keys(schema.fields), refused: REFUSED }))

const toolCallIn = (c: ToolCallIn): ToolCall => ({ ...(c.id == null ? {} : { id: c.id }), name: c.function.name, arguments: c.function.arguments })

/** Chat messages as the engine takes them: null content is empty, tool calls and tool results kept as such. */
export const chatMessages = (messages: ReadonlyArray<ChatMessageIn>): Array<ChatMessage> =>
  messages.map((m): ChatMessage => {
    const content = m.content == null ? "" : flattenContent(m.content)
    if (m.role === "tool") return { role: "tool", content, ...(m.tool_call_id == null ? {} : { toolCallId: m.tool_call_id }) }
    if (m.role === "assistant" && m.tool_calls != null && m.tool_calls.length > 0) {
      return { role: "assistant", content, toolCalls: m.tool_calls.map(toolCallIn) }
    }
    return { role: m.role === "developer" ? "system" : m.role, content }
  })

/** A wire function definition as the engine takes it. */
const toolDefinition = (f: { readonly name: string; readonly description?: string | null | undefined; readonly parameters?: Record<string, unknown> | null | undefined }): ToolDefinition => ({
  name: f.name,
  ...(f.description == null ? {} : { description: f.description }),
  ...(f.parameters == null ? {} : { parameters: f.parameters })
})

const chatToolChoice = (c: ChatToolChoice | null | undefined) => c == null || typeof c === "string" ? c : { name: c.function.name }
const responsesToolChoice = (c: ResponsesToolChoice | null | undefined) => c == null || typeof c === "string" ? c : { name: c.name }

/** The request to submit: tools in the chat input, and the grammar of a forced call in place of response_format. */
const withTools = (request: GenerateRequest, setup: ToolSetup | undefined): GenerateRequest => {
  if (setup === undefined || request.input.type !== "chat") return request
  const grammar = toolGrammar(setup)
  return {
    ...request,
    input: { ...request.input, tools: setup.tools },
    ...(grammar === undefined ? {} : { sampling: { ...request.sampling, grammar } })
  }
}

/** The calls in a whole answer, or undefined when it is text (a forced call's arguments are its text verbatim). */
const answerCalls = (setup: ToolSetup | undefined, text: string): ReadonlyArray<ParsedCall> | undefined => {
  if (setup === undefined) return undefined
  if (setup.mode.kind === "auto") return new ToolStream(setup).finish(text).calls
  const call = forcedCall(text, setup)
  return call === undefined ? undefined : [call]
}

/** Calls as chat completions' `tool_calls`. */
const chatToolCalls = (calls: ReadonlyArray<ParsedCall>) =>
  calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }))

interface Collected {
  text: string
  finishReason: string
  usage: Usage
  /** Generated tokens that came with logprobs. */
  readonly tokens: Array<{ readonly tokenId: number; readonly logprobs: TokenLogprobs }>
  prompt: { readonly ids: Int32Array; readonly logits: Float32Array } | undefined
}

const collect = (events: Stream.Stream<GenerationEvent, EngineError>) =>
  Effect.suspend(() => {
    const acc: Collected = { text: "", finishReason: "stop", usage: { promptTokens: 0, completionTokens: 0 }, tokens: [], prompt: undefined }
    return Stream.runForEach(events, (e) =>
      Effect.sync(() => {
        switch (e._tag) {
          case "Started":
            if (e.promptLogits !== undefined && e.promptTokenIds !== undefined) acc.prompt = { ids: e.promptTokenIds, logits: e.promptLogits }
            break
          case "Token":
            acc.text += e.text
            if (e.logprobs !== undefined) acc.tokens.push({ tokenId: e.tokenId, logprobs: e.logprobs })
            break
          case "Finished":
            acc.text += e.text
            acc.finishReason = e.finishReason
            acc.usage = e.usage
            break
        }
      })).pipe(Effect.as(acc))
  })

/** All choices collected, or the shutdown. */
const collectAll = (choices: ReadonlyArray<Stream.Stream<GenerationEvent, EngineError>>) =>
  Effect.gen(function*() {
    const { shutdown } = yield* Serving
    return yield* Effect.raceFirst(Effect.all(choices.map(collect), { concurrency: "unbounded" }), shutdown)
  })

/** Usage of one response: the prompt once, every choice's completion tokens. */
const usageOf = (usages: ReadonlyArray<Usage>) => {
  const prompt = usages[0]?.promptTokens ?? 0
  const completion = usages.reduce((n, u) => n + u.completionTokens, 0)
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
}

const frame = (chunk: unknown) => `data: ${JSON.stringify(chunk)}\n\n`

/**
 * An SSE response from a stream of ready-made frames (each `data: ...\n\n`, possibly several per element), cut
 * when its client stops reading. At the end of the shutdown grace period the stream stops and ends like any failed
 * one: an error event, then [DONE] (chat and completions) or the Responses API's `error` event.
 */
const sse = (frames: Stream.Stream<string, EngineError>, ending: Ending = chatEnding) =>
  Effect.gen(function*() {
    const serving = yield* Serving
    return streamResponse(yield* serving.slowReader.guard(frames), serving.shutdown, ending)
  })

interface Ending {
  readonly error: (e: EngineError | ShutDown) => string
  readonly done: string
}

const chatEnding: Ending = { error: (e) => frame(toOpenAiError(e).body), done: "data: [DONE]\n\n" }

const streamResponse = (frames: Stream.Stream<string, EngineError>, shutdown: Effect.Effect<never, ShutDown>, ending: Ending) =>
  HttpServerResponse.stream(
    frames.pipe(
      // Checked before each pull, not raced with it (a race per token would cost a fiber hop per token): a stream
      // stops at its next frame, which comes within a step for a running sequence.
      Stream.haltWhen(shutdown),
      // An error after the first byte can no longer change the status: it becomes an SSE error event.
      Stream.catch((e: EngineError | ShutDown) => Stream.succeed(ending.error(e))),
      Stream.concat(ending.done === "" ? Stream.empty : Stream.succeed(ending.done)),
      Stream.encodeText
    ),
    { contentType: "text/event-stream", headers: { "cache-control": "no-cache", "x-accel-buffering": "no" } }
  )

/**
 * One choice's SSE frames: `toFrame` per event, events that arrived together (a slow reader, a burst) joined into
 * one write: fewer syscalls under load, and no added latency when the reader keeps up (then each pull holds one
 * event). Plain functions, no per-event streams: this runs per token.
 */
const framesOf = (events: Stream.Stream<GenerationEvent, EngineError>, toFrame: (e: GenerationEvent) => string): Stream.Stream<string, EngineError> =>
  events.pipe(
    Stream.mapArray((batch) => [batch.map(toFrame).join("")] as const),
    Stream.filter((f) => f.length > 0)
  )

/** The choices' frames interleaved as they come, then the usage chunk when asked for (after every choice ended). */
const mergeChoices = (
  choices: ReadonlyArray<Stream.Stream<string, EngineError>>,
  usages: Array<Usage>,
  head: Record<string, unknown>,
  includeUsage: boolean
): Stream.Stream<string, EngineError> => {
  const merged = choices.length === 1 ? choices[0]! : Stream.mergeAll(choices, { concurrency: "unbounded" })
  return includeUsage ? Stream.concat(merged, Stream.suspend(() => Stream.succeed(frame({ ...head, choices: [], usage: usageOf(usages) })))) : merged
}

const chatCompletions = Effect.gen(function*() {
  yield* authorize
  const req = yield* decodeBody(ChatCompletionRequest)
  const top = req.top_logprobs ?? 0
  if (top > 0 && req.logprobs !== true) {
    return yield* Effect.fail(new ValidationError({ field: "top_logprobs", message: "top_logprobs needs logprobs: true" }))
  }
  const wantLogprobs = req.logprobs === true
  const setup = yield* toolSetup(req.tools?.map((t: ChatTool) => toolDefinition(t.function)), chatToolChoice(req.tool_choice), req.parallel_tool_calls)
  const engine = yield* engineFor(req.model)
  const codec = engine.codec
  const n = req.n ?? 1
  const choices = yield* submitN(engine, withTools({
    input: { type: "chat", messages: chatMessages(req.messages) },
    ...controls(req, req.max_completion_tokens ?? req.max_tokens),
    ...(wantLogprobs ? { logprobs: top } : {})
  }, setup), n)
  const head = { id: `chatcmpl-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: engine.model.id }
  if (req.stream === true) {
    const chunk = { ...head, object: "chat.completion.chunk" }
    const usages: Array<Usage> = []
    const frames = choices.map((events, index) => {
      let first = true
      if (setup !== undefined && setup.mode.kind !== "auto") {
        // A forced call: its head, then its arguments as they are generated.
        const call = new ForcedCallStream()
        const piece = (p: CallPiece) => {
          let out = ""
          if (p.start !== undefined) {
            const role = first ? { role: "assistant", content: null } : {}
            first = false
            const delta = { ...role, tool_calls: [{ index: 0, id: p.start.id, type: "function", function: { name: p.start.name, arguments: "" } }] }
            out += frame({ ...chunk, choices: [{ index, delta, logprobs: null, finish_reason: null }] })
          }
          if (p.args !== "") out += frame({ ...chunk, choices: [{ index, delta: { tool_calls: [{ index: 0, function: { arguments: p.args } }] }, logprobs: null, finish_reason: null }] })
          return out
        }
        return framesOf(events, (e) => {
          switch (e._tag) {
            case "Token":
              return piece(call.push(e.text))
            case "Finished": {
              usages[index] = e.usage
              const end = call.finish(e.text, setup)
              if (end.text !== undefined) {
                const delta = end.text === "" ? {} : { role: "assistant", content: end.text }
                return frame({ ...chunk, choices: [{ index, delta, logprobs: null, finish_reason: e.finishReason }] })
              }
              return piece(end) + frame({ ...chunk, choices: [{ index, delta: {}, logprobs: null, finish_reason: end.call === undefined ? e.finishReason : "tool_calls" }] })
            }
            default:
              return ""
          }
        })
      }
      const tools = setup === undefined ? undefined : new ToolStream(setup)
      const heldLogprobs: Array<ReturnType<typeof chatLogprob>> = []
      return framesOf(events, (e) => {
        switch (e._tag) {
          case "Token": {
            // Text that may be a tool call is held (with its logprobs) until its start or the end shows what it is.
            const text = tools === undefined ? e.text : tools.push(e.text)
            if (wantLogprobs && e.logprobs !== undefined) heldLogprobs.push(chatLogprob(codec, e.tokenId, e.logprobs))
            if (tools !== undefined && text === "") return ""
            if (text === "" && !first && e.logprobs === undefined) return ""
            const delta = first ? { role: "assistant", content: text } : { content: text }
            first = false
            const logprobs = wantLogprobs ? { content: heldLogprobs.splice(0) } : null
            return frame({ ...chunk, choices: [{ index, delta, logprobs, finish_reason: null }] })
          }
          case "Finished": {
            usages[index] = e.usage
            const end = tools === undefined ? { text: e.text } : tools.finish(e.text)
            if (end.calls !== undefined) {
              const role = first ? { role: "assistant", content: null } : {}
              const calls = end.calls.map((c, i) =>
                frame({ ...chunk, choices: [{ index, delta: { ...(i === 0 ? role : {}), tool_calls: [{ index: i, id: c.id, type: "function", function: { name: c.name, arguments: "" } }] }, logprobs: null, finish_reason: null }] }) +
                frame({ ...chunk, choices: [{ index, delta: { tool_calls: [{ index: i, function: { arguments: c.arguments } }] }, logprobs: null, finish_reason: null }] })
              )
              return calls.join("") + frame({ ...chunk, choices: [{ index, delta: {}, logprobs: null, finish_reason: "tool_calls" }] })
            }
            const delta = end.text === "" ? {} : first ? { role: "assistant", content: end.text } : { content: end.text }
            const logprobs = wantLogprobs && heldLogprobs.length > 0 ? { content: heldLogprobs.splice(0) } : null
            return frame({ ...chunk, choices: [{ index, delta, logprobs, finish_reason: e.finishReason }] })
          }
          default:
            return ""
        }
      })
    })
    return yield* sse(mergeChoices(frames, usages, chunk, req.stream_options?.include_usage === true))
  }
  const done = yield* collectAll(choices)
  return HttpServerResponse.jsonUnsafe({
    ...head,
    object: "chat.completion",
    choices: done.map((c, index) => {
      const calls = answerCalls(setup, c.text)
      return {
        index,
        message: calls === undefined
          ? { role: "assistant", content: c.text }
          : { role: "assistant", content: null, tool_calls: chatToolCalls(calls) },
        logprobs: wantLogprobs ? { content: c.tokens.map((t) => chatLogprob(codec, t.tokenId, t.logprobs)) } : null,
        finish_reason: calls === undefined ? c.finishReason : "tool_calls"
      }
    }),
    usage: usageOf(done.map((c) => c.usage))
  })
})

/** The most prompt logits (bytes) an echo with logprobs may bring to the main thread. */
const MAX_ECHO_LOGITS_BYTES = 256 * 1024 * 1024

const completions = Effect.gen(function*() {
  yield* authorize
  const req = yield* decodeBody(CompletionRequest)
  const n = req.n ?? 1
  if (req.best_of != null && req.best_of !== n) {
    return yield* Effect.fail(new ValidationError({ field: "best_of", message: `best_of must equal n (${n}): ranking extra samples is not supported, got ${req.best_of}` }))
  }
  const engine = yield* engineFor(req.model)
  const codec = engine.codec
  const prompt = req.prompt
  const input: GenerateRequest["input"] = typeof prompt === "string"
    ? { type: "text", text: prompt }
    : typeof prompt[0] === "string"
    ? { type: "text", text: prompt[0] }
    : { type: "tokens", tokenIds: prompt as ReadonlyArray<number> }
  const echo = req.echo === true
  const logprobs = req.logprobs ?? undefined
  const echoText = !echo ? "" : input.type === "text" ? input.text : input.type === "tokens" ? codec.decode(input.tokenIds) : ""
  if (echo && logprobs !== undefined) {
    // The prompt's logprobs come from its logits, all of them ([positions, vocab] float32) on the main thread: bounded.
    const promptTokens = (yield* engine.tokenize(input)).length
    const most = Math.floor(MAX_ECHO_LOGITS_BYTES / (4 * engine.model.vocabSize))
    if (promptTokens > most) {
      return yield* Effect.fail(new ValidationError({ field: "echo", message: `echo with logprobs takes prompts of at most ${most} tokens, got ${promptTokens}` }))
    }
  }
  const choices = yield* submitN(engine, {
    input,
    // OpenAI's legacy default is 16 tokens.
    ...controls(req, req.max_tokens ?? 16),
    ...(logprobs === undefined ? {} : { logprobs }),
    // Echoed prompt logprobs come from the prompt's logits (the engine then skips prefix caching for it).
    ...(echo && logprobs !== undefined ? { promptLogits: "all" as const } : {})
  }, n)
  /** The echoed prompt's logprobs, from the prompt logits of the Started event. */
  const echoed = (builder: CompletionLogprobsBuilder, into: CompletionLogprobs, ids: Int32Array, logits: Float32Array) => {
    const lps = promptLogprobs(ids, logits, engine.model.vocabSize, logprobs ?? 0)
    ids.forEach((id, i) => builder.add(into, id, lps[i]))
  }
  const head = { id: `cmpl-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: engine.model.id }
  if (req.stream === true) {
    const chunk = { ...head, object: "text_completion" }
    const usages: Array<Usage> = []
    const frames = choices.map((events, index) => {
      const builder = new CompletionLogprobsBuilder(codec)
      return framesOf(events, (e) => {
        switch (e._tag) {
          case "Started": {
            if (!echo) return ""
            let lp: CompletionLogprobs | null = null
            if (logprobs !== undefined && e.promptTokenIds !== undefined && e.promptLogits !== undefined) {
              lp = CompletionLogprobsBuilder.empty()
              echoed(builder, lp, e.promptTokenIds, e.promptLogits)
            }
            return frame({ ...chunk, choices: [{ index, text: echoText, logprobs: lp, finish_reason: null }] })
          }
          case "Token": {
            if (e.text === "" && e.logprobs === undefined) return ""
            let lp: CompletionLogprobs | null = null
            if (logprobs !== undefined) {
              lp = CompletionLogprobsBuilder.empty()
              if (e.logprobs !== undefined) builder.add(lp, e.tokenId, e.logprobs)
            }
            return frame({ ...chunk, choices: [{ index, text: e.text, logprobs: lp, finish_reason: null }] })
          }
          case "Finished":
            usages[index] = e.usage
            return frame({ ...chunk, choices: [{ index, text: e.text, logprobs: null, finish_reason: e.finishReason }] })
          default:
            return ""
        }
      })
    })
    return yield* sse(mergeChoices(frames, usages, chunk, req.stream_options?.include_usage === true))
  }
  const done = yield* collectAll(choices)
  return HttpServerResponse.jsonUnsafe({
    ...head,
    object: "text_completion",
    choices: done.map((c, index) => {
      let lp: CompletionLogprobs | null = null
      if (logprobs !== undefined) {
        const builder = new CompletionLogprobsBuilder(codec)
        lp = CompletionLogprobsBuilder.empty()
        if (echo && c.prompt !== undefined) echoed(builder, lp, c.prompt.ids, c.prompt.logits)
        for (const t of c.tokens) builder.add(lp, t.tokenId, t.logprobs)
      }
      return { index, text: echoText + c.text, logprobs: lp, finish_reason: c.finishReason }
    }),
    usage: usageOf(done.map((c) => c.usage))
  })
})

const modelCard = (engine: Engine["Service"]) => ({ id: engine.model.id, object: "model", created: 0, owned_by: "chorus", max_model_len: engine.model.contextLength })

/** `GET /v1/models` and `GET /v1/models/{id}`. */
const models = Effect.gen(function*() {
  yield* authorize
  const serving = yield* Serving
  const engine = yield* serving.loadedEngine
  const request = yield* HttpServerRequest.HttpServerRequest
  const path = request.url.split("?")[0]!.replace(/^\/v1\/models\/?/, "")
  if (path !== "") return yield* model(engine, path)
  return HttpServerResponse.jsonUnsafe({ object: "list", data: [modelCard(engine)] })
})

/** `GET /v1/models/{id}`: the rest of the path is the id (model ids often hold a slash). */
const model = (engine: Engine["Service"], path: string) =>
  Effect.gen(function*() {
    let id = path
    try {
      id = decodeURIComponent(path)
    } catch {
      // Not valid percent-encoding: compared as given.
    }
    if (id !== engine.model.id) {
      return yield* Effect.fail(new UnknownModel({ model: id, message: `the model '${id}' does not exist; this server serves '${engine.model.id}'` }))
    }
    return HttpServerResponse.jsonUnsafe(modelCard(engine))
  })

/** vLLM's `POST /tokenize`: the prompt's token ids, chat template applied for messages. */
const tokenize = Effect.gen(function*() {
  yield* authorize
  const body = yield* readJsonBody
  const req = yield* decodeJsonLenient(TokenizeRequest, body, { known: ["model", "prompt", "messages", "tools", "add_special_tokens", "add_generation_prompt"], refused: [] })
  const engine = yield* engineFor(req.model)
  const tools = "messages" in req && req.tools != null && req.tools.length > 0 ? req.tools.map((t) => toolDefinition(t.function)) : undefined
  const ids = yield* engine.tokenize("prompt" in req ? { type: "text", text: req.prompt } : { type: "chat", messages: chatMessages(req.messages), ...(tools === undefined ? {} : { tools }) })
  return HttpServerResponse.jsonUnsafe({ count: ids.length, max_model_len: engine.model.contextLength, tokens: Array.from(ids), token_strs: null })
})

/** vLLM's `POST /detokenize`. */
const detokenize = Effect.gen(function*() {
  yield* authorize
  const req = yield* decodeBody(DetokenizeRequest)
  const engine = yield* engineFor(req.model)
  const bad = req.tokens.find((t) => t < 0 || t >= engine.model.vocabSize)
  if (bad !== undefined) {
    return yield* Effect.fail(new ValidationError({ field: "tokens", message: `token id ${bad} is outside the vocabulary [0, ${engine.model.vocabSize})` }))
  }
  return HttpServerResponse.jsonUnsafe({ prompt: engine.codec.decode(req.tokens) })
})


/** The Responses API's `text.format` as chat's `response_format`: both ask for the same grammar. */
const responseFormatOf = (format: TextFormat | null | undefined): ResponseFormat | undefined => {
  if (format == null) return undefined
  if (format.type !== "json_schema") return format
  return { type: "json_schema", json_schema: { name: format.name, ...(format.schema === undefined ? {} : { schema: format.schema }) } }
}

/** A refused grammar named as the Responses API names it (`text.format.schema`, not `response_format.json_schema.schema`). */
const asTextFormatError = <E>(e: E): E | ValidationError => {
  if (!(e instanceof ValidationError) || !e.field.startsWith("response_format")) return e
  const rename = (s: string) => s.replace(/^response_format(\.json_schema)?/, "text.format")
  return new ValidationError({ field: rename(e.field), message: rename(e.message) })
}

/** A Responses API input message's text: a string, or its text parts joined as OpenAI joins them. */
const responseText = (content: string | ReadonlyArray<{ readonly text: string }>) => typeof content === "string" ? content : content.map((p) => p.text).join("")

/** The stateless Response object (`store` and `previous_response_id` play no part: nothing is kept). */
const responseObject = (
  req: ResponsesRequest,
  at: { readonly id: string; readonly createdAt: number; readonly model: string },
  state: {
    readonly status: "in_progress" | "completed" | "incomplete"
    readonly output: ReadonlyArray<unknown>
    readonly usage?: Usage | undefined
  }
) => ({
  id: at.id,
  object: "response",
  created_at: at.createdAt,
  status: state.status,
  ...(state.status === "in_progress" ? {} : { completed_at: Math.floor(Date.now() / 1000) }),
  error: null,
  incomplete_details: state.status === "incomplete" ? { reason: "max_output_tokens" } : null,
  instructions: req.instructions ?? null,
  max_output_tokens: req.max_output_tokens ?? null,
  model: at.model,
  output: state.output,
  parallel_tool_calls: req.parallel_tool_calls ?? true,
  previous_response_id: null,
  reasoning: null,
  store: false,
  temperature: req.temperature ?? null,
  text: { format: req.text?.format ?? { type: "text" } },
  tool_choice: req.tool_choice ?? (req.tools != null && req.tools.length > 0 ? "auto" : "none"),
  tools: (req.tools ?? []).map((t) => ({ type: "function", name: t.name, description: t.description ?? null, parameters: t.parameters ?? null, strict: t.strict ?? false })),
  top_p: req.top_p ?? null,
  truncation: "disabled",
  metadata: req.metadata ?? {},
  usage: state.usage === undefined ? null : {
    input_tokens: state.usage.promptTokens,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: state.usage.completionTokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: state.usage.promptTokens + state.usage.completionTokens
  }
})

const outputMessage = (id: string, text: string, status: "in_progress" | "completed" | "incomplete") => ({
  id,
  type: "message",
  role: "assistant",
  status,
  content: [{ type: "output_text", text, annotations: [], logprobs: [] }]
})

/** `event: <type>` + `data:` frames, as the Responses API streams. */
const responseEvent = (type: string, sequence: number, body: Record<string, unknown>) =>
  `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence, ...body })}\n\n`

/** A `function_call` output item. */
const functionCallItem = (call: ParsedCall, id: string, status: "in_progress" | "completed" | "incomplete", args = call.arguments) => ({
  type: "function_call",
  id,
  call_id: call.id,
  name: call.name,
  arguments: args,
  status
})

/** Responses API input items as chat messages: function calls join the assistant turn, outputs are tool turns. */
const responseMessages = (input: ReadonlyArray<ResponseInputItem>): Array<ChatMessage> => {
  const out: Array<ChatMessage> = []
  for (const item of input) {
    if (item.type === "function_call") {
      const call: ToolCall = { id: item.call_id, name: item.name, arguments: item.arguments }
      const last = out[out.length - 1]
      if (last?.role === "assistant") out[out.length - 1] = { ...last, toolCalls: [...(last.toolCalls ?? []), call] }
      else out.push({ role: "assistant", content: "", toolCalls: [call] })
    } else if (item.type === "function_call_output") {
      out.push({ role: "tool", content: responseText(item.output), toolCallId: item.call_id })
    } else {
      out.push({ role: item.role === "developer" ? "system" : item.role, content: responseText(item.content) })
    }
  }
  return out
}

/**
 * `POST /v1/responses`, stateless: input (a string or items), instructions, function tools, sampling, structured
 * output (`text.format`, the grammar of chat's `response_format`); streamed or not.
 */
const responses = Effect.gen(function*() {
  yield* authorize
  const req = yield* decodeBody(ResponsesRequest)
  const setup = yield* toolSetup(req.tools?.map((t: ResponsesTool) => toolDefinition(t)), responsesToolChoice(req.tool_choice), req.parallel_tool_calls)
  const engine = yield* engineFor(req.model)
  const messages: Array<ChatMessage> = []
  if (req.instructions != null) messages.push({ role: "system", content: req.instructions })
  if (typeof req.input === "string") messages.push({ role: "user", content: req.input })
  else messages.push(...responseMessages(req.input))
  const [events] = yield* submitN(engine, withTools({
    input: { type: "chat", messages },
    sampling: sampling({ ...req, response_format: responseFormatOf(req.text?.format) }),
    ...(req.max_output_tokens == null ? {} : { maxTokens: req.max_output_tokens })
  }, setup), 1).pipe(Effect.mapError(asTextFormatError))
  const at = { id: `resp_${randomUUID().replaceAll("-", "")}`, createdAt: Math.floor(Date.now() / 1000), model: engine.model.id }
  const itemId = `msg_${randomUUID().replaceAll("-", "")}`
  const callItemIds: Array<string> = []
  const callItemId = (i: number) => (callItemIds[i] ??= `fc_${randomUUID().replaceAll("-", "")}`)
  if (req.stream === true) {
    let sequence = 0
    let text = ""
    let messageStarted = false
    const tools = setup === undefined ? undefined : new ToolStream(setup)
    const ev = (type: string, body: Record<string, unknown>) => responseEvent(type, sequence++, body)
    const where = { item_id: itemId, output_index: 0, content_index: 0 }
    // The message item opens with its first text (at once without tools: a tool call may come instead).
    const startMessage = () => {
      if (messageStarted) return ""
      messageStarted = true
      return ev("response.output_item.added", { output_index: 0, item: { ...outputMessage(itemId, "", "in_progress"), content: [] } }) +
        ev("response.content_part.added", { ...where, part: { type: "output_text", text: "", annotations: [], logprobs: [] } })
    }
    const textDelta = (delta: string) => {
      if (delta === "") return ""
      text += delta
      return startMessage() + ev("response.output_text.delta", { ...where, delta, logprobs: [] })
    }
    const start = Stream.suspend(() => {
      const created = responseObject(req, at, { status: "in_progress", output: [] })
      return Stream.succeed(
        ev("response.created", { response: created }) +
          ev("response.in_progress", { response: created }) +
          (tools === undefined ? startMessage() : "")
      )
    })
    /** The message item's end and the response's, once all its text is sent. */
    const endMessage = (finishReason: string, usage: Usage) => {
      const status = finishReason === "length" ? "incomplete" : "completed"
      const message = outputMessage(itemId, text, status)
      return startMessage() +
        ev("response.output_text.done", { ...where, text, logprobs: [] }) +
        ev("response.content_part.done", { ...where, part: message.content[0] }) +
        ev("response.output_item.done", { output_index: 0, item: message }) +
        ev(`response.${status}`, { response: responseObject(req, at, { status, output: [message], usage }) })
    }
    if (setup !== undefined && setup.mode.kind !== "auto") {
      // A forced call: its item once its name is known, then its arguments as they are generated.
      const call = new ForcedCallStream()
      const place = { item_id: callItemId(0), output_index: 0 }
      let name = ""
      let args = ""
      const piece = (p: CallPiece) => {
        let out = ""
        if (p.start !== undefined) {
          name = p.start.name
          out += ev("response.output_item.added", { output_index: 0, item: functionCallItem({ id: call.id, name, arguments: "" }, place.item_id, "in_progress") })
        }
        if (p.args !== "") {
          args += p.args
          out += ev("response.function_call_arguments.delta", { ...place, delta: p.args })
        }
        return out
      }
      const forced = framesOf(events, (e) => {
        switch (e._tag) {
          case "Token":
            return piece(call.push(e.text))
          case "Finished": {
            const end = call.finish(e.text, setup)
            if (end.text !== undefined) return textDelta(end.text) + endMessage(e.finishReason, e.usage)
            const out = piece(end)
            const status = end.call === undefined ? "incomplete" : "completed"
            const item = functionCallItem({ id: call.id, name, arguments: args }, place.item_id, status)
            return out +
              ev("response.function_call_arguments.done", { ...place, arguments: args }) +
              ev("response.output_item.done", { output_index: 0, item }) +
              ev(`response.${status}`, { response: responseObject(req, at, { status, output: [item], usage: e.usage }) })
          }
          default:
            return ""
        }
      })
      return yield* sse(Stream.concat(start, forced), {
        error: (e) => {
          const { error } = toOpenAiError(e).body
          return ev("error", { code: error.code, message: error.message, param: error.param })
        },
        done: ""
      })
    }
    const body = framesOf(events, (e) => {
      switch (e._tag) {
        case "Token":
          return textDelta(tools === undefined ? e.text : tools.push(e.text))
        case "Finished": {
          const end = tools === undefined ? { text: e.text } : tools.finish(e.text)
          if (end.calls !== undefined) {
            const items = end.calls.map((c, i) => functionCallItem(c, callItemId(i), "completed"))
            const frames = end.calls.map((c, i) => {
              const id = callItemId(i)
              const place = { item_id: id, output_index: i }
              return ev("response.output_item.added", { output_index: i, item: functionCallItem(c, id, "in_progress", "") }) +
                ev("response.function_call_arguments.delta", { ...place, delta: c.arguments }) +
                ev("response.function_call_arguments.done", { ...place, arguments: c.arguments }) +
                ev("response.output_item.done", { output_index: i, item: items[i] })
            })
            return frames.join("") + ev("response.completed", { response: responseObject(req, at, { status: "completed", output: items, usage: e.usage }) })
          }
          return textDelta(end.text) + endMessage(e.finishReason, e.usage)
        }
        default:
          return ""
      }
    })
    return yield* sse(Stream.concat(start, body), {
      error: (e) => {
        const { error } = toOpenAiError(e).body
        return ev("error", { code: error.code, message: error.message, param: error.param })
      },
      done: ""
    })
  }
  const [done] = yield* collectAll([events])
  const calls = answerCalls(setup, done!.text)
  if (calls !== undefined) {
    const output = calls.map((c, i) => functionCallItem(c, callItemId(i), "completed"))
    return HttpServerResponse.jsonUnsafe(responseObject(req, at, { status: "completed", output, usage: done!.usage }))
  }
  const status = done!.finishReason === "length" ? "incomplete" : "completed"
  return HttpServerResponse.jsonUnsafe(responseObject(req, at, { status, output: [outputMessage(itemId, done!.text, status)], usage: done!.usage }))
})

const VERSION: string = (createRequire(import.meta.url)("../../../package.json") as { version: string }).version

const version = Effect.succeed(HttpServerResponse.jsonUnsafe({ version: VERSION }))

const handle = <R>(effect: Effect.Effect<HttpServerResponse.HttpServerResponse, OpenAiError, R>) =>
  effect.pipe(Effect.catch((e: OpenAiError) => Effect.succeed(errorResponse(e))))

export const OpenAiRoutes = HttpRouter.use(Effect.fn(function*(router) {
  yield* router.add("POST", "/v1/chat/completions", handle(chatCompletions))
  yield* router.add("POST", "/v1/completions", handle(completions))
  yield* router.add("POST", "/v1/responses", handle(responses))
  yield* router.add("GET", "/v1/models", handle(models))
  // Model ids often hold one slash (`meta-llama/Meta-Llama-3-8B-Instruct`); the handler reads the id from the path.
  yield* router.add("GET", "/v1/models/:id", handle(models))
  yield* router.add("GET", "/v1/models/:org/:name", handle(models))
  yield* router.add("POST", "/tokenize", handle(tokenize))
  yield* router.add("POST", "/detokenize", handle(detokenize))
  yield* router.add("GET", "/version", version)
}))
