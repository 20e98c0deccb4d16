/**
 * The OpenAI-compatible target: streamed `/v1/chat/completions` with `stream_options.include_usage`. Each non-empty
 * `content` delta is one streamed output (its arrival time is that of the TCP read that brought it); the token
 * counts come from the final usage chunk where the server sends one, else from counting outputs. An error event,
 * a dropped connection or a stream without `[DONE]` fails the request with its reason.
 */
import type { IncomingMessage } from "node:http"
import { errorText, type LoadClient, makeTransport, networkReason, probe, type Transport, urlOf } from "./LoadClient.ts"
import type { RequestOutcome, Samples } from "./Metrics.ts"
import type { Prompt } from "./Prompts.ts"
import { SseScanner, valueAfterKey } from "./SseScanner.ts"

export interface OpenAiTarget {
  readonly url: URL
  readonly apiKey: string | undefined
  /** Sent as `model`; when absent, the first model of `/v1/models`. */
  readonly model: string | undefined
  readonly temperature: number
  readonly maxSockets: number
  readonly timeoutMs: number
}

const CONTENT = Buffer.from('"content"')
const USAGE = Buffer.from('"usage"')
const ERROR = Buffer.from('"error"')
const QUOTE = 34
const BRACE = 123

const isDone = (buf: Buffer, s: number, e: number) => e - s === 6 && buf[s] === 91 && buf.toString("latin1", s, e) === "[DONE]"

const headersOf = (apiKey: string | undefined): Record<string, string> => (apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` })

const streamOne = (t: Transport, headers: Record<string, string>, model: string | undefined, temperature: number, prompt: Prompt, o: RequestOutcome, itl: Samples) =>
  new Promise<void>((resolve) => {
    const body = JSON.stringify({
      ...(model === undefined ? {} : { model }),
      messages: prompt.messages,
      max_tokens: prompt.maxTokens,
      temperature,
      stream: true,
      stream_options: { include_usage: true },
      ...(prompt.ignoreEos ? { ignore_eos: true } : {})
    })
    let chunkAt = 0
    let last = 0
    let done = false
    let settled = false
    const sink = {
      data(buf: Buffer, s: number, e: number) {
        if (isDone(buf, s, e)) {
          done = true
          return
        }
        const c = valueAfterKey(buf, s, e, CONTENT)
        if (c !== -1 && buf[c] === QUOTE && buf[c + 1] !== QUOTE) {
          if (o.outputs === 0) o.firstMs = chunkAt
          else itl.push(chunkAt - last)
          last = chunkAt
          o.outputs++
          return
        }
        // Rare chunks (usage, errors): parse them in full.
        const u = valueAfterKey(buf, s, e, USAGE)
        const err = valueAfterKey(buf, s, e, ERROR)
        if ((u !== -1 && buf[u] === BRACE) || (err !== -1 && (buf[err] === BRACE || buf[err] === QUOTE))) {
          let json: { usage?: { prompt_tokens?: unknown; completion_tokens?: unknown }; error?: unknown }
          try {
            json = JSON.parse(buf.toString("utf8", s, e))
          } catch {
            return
          }
          if (json.error !== undefined && json.error !== null) {
            o.fail(`stream error: ${errorText({ status: 200, body: json, text: "" })}`)
          } else if (json.usage !== undefined && typeof json.usage.completion_tokens === "number") {
            o.outputTokens = json.usage.completion_tokens
            if (typeof json.usage.prompt_tokens === "number") o.promptTokens = json.usage.prompt_tokens
            o.fromServer = true
          }
        }
      }
    }
    const scanner = new SseScanner(sink)
    const finish = () => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      o.endMs = performance.now()
      if (o.error === undefined) {
        if (!done) o.fail(o.outputs > 0 ? "stream ended before [DONE]" : "stream ended without output")
        else o.ok = true
      }
      if (!o.fromServer) o.outputTokens = o.outputs
      resolve()
    }
    const lost = (e: unknown) => {
      o.fail(o.outputs > 0 ? `connection lost mid-stream (${networkReason(e)})` : `connection failed (${networkReason(e)})`)
      finish()
    }
    o.startMs = performance.now()
    const req = t.request(urlOf(t, "v1/chat/completions"), {
      method: "POST",
      agent: t.agent,
      headers: { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(body), accept: "text/event-stream" }
    })
    const timer = setTimeout(() => {
      o.fail(`timeout after ${t.timeoutMs / 1000} s`)
      req.destroy()
      finish()
    }, t.timeoutMs)
    req.on("response", (res: IncomingMessage) => {
      if (res.statusCode !== 200) {
        const chunks: Array<Buffer> = []
        res.on("data", (c: Buffer) => chunks.push(c))
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8")
          let parsed: unknown
          try {
            parsed = JSON.parse(text)
          } catch {
            parsed = undefined
          }
          o.fail(`HTTP ${res.statusCode}: ${errorText({ status: res.statusCode ?? 0, body: parsed, text })}`)
          finish()
        })
        res.on("error", lost)
        return
      }
      res.on("data", (chunk: Buffer) => {
        chunkAt = performance.now()
        scanner.feed(chunk)
      })
      res.on("end", finish)
      res.on("error", lost)
      // A reset after the headers shows up as 'aborted'/'close' without 'end'.
      res.on("close", () => {
        if (!res.complete) lost(new Error("ECONNRESET"))
      })
    })
    req.on("error", lost)
    req.end(body)
  })

/** Checks that the server answers and learns its model; throws ValidationError if it cannot be reached. */
export const openAiClient = async (target: OpenAiTarget): Promise<LoadClient> => {
  const t = makeTransport(target.url, target.maxSockets, target.timeoutMs)
  const headers = headersOf(target.apiKey)
  const answer = await probe(t, "v1/models", headers)
  const listed = (answer.body as { data?: Array<{ id?: unknown }> } | undefined)?.data?.[0]?.id
  const model = target.model ?? (typeof listed === "string" ? listed : undefined)
  return {
    model,
    send: (prompt, outcome, itl) => streamOne(t, headers, model, target.temperature, prompt, outcome, itl),
    close: () => t.agent.destroy()
  }
}
