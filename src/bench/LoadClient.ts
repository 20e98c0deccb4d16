/**
 * What the run loop needs of a target server (one request at a time, outcome filled in, never throwing), and the
 * plain `node:http` transport both API clients share: one keep-alive agent per target, small JSON exchanges for
 * probes and AIME polling, and the check that a URL answers at all.
 */
import * as http from "node:http"
import * as https from "node:https"
import { ValidationError } from "../core/Errors.ts"
import type { RequestOutcome, Samples } from "./Metrics.ts"
import type { Prompt } from "./Prompts.ts"

export interface LoadClient {
  /** The model the server says it serves (or the one asked for), for the report. */
  readonly model: string | undefined
  /** Sends one request; fills `outcome` (and pushes inter-token gaps to `itl`); resolves when it ended either way. */
  readonly send: (prompt: Prompt, outcome: RequestOutcome, itl: Samples) => Promise<void>
  readonly close: () => void
}

export interface Transport {
  readonly base: URL
  readonly agent: http.Agent
  readonly request: typeof http.request
  readonly timeoutMs: number
}

/** Parses `--url`; throws ValidationError for anything but an absolute http(s) URL. */
export const parseBase = (raw: string): URL => {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new ValidationError({ field: "--url", message: `--url must be an http:// or https:// URL, got '${raw}'` })
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ValidationError({ field: "--url", message: `--url must be an http:// or https:// URL, got '${raw}'` })
  }
  if (!url.pathname.endsWith("/")) url.pathname += "/"
  return url
}

export const makeTransport = (base: URL, maxSockets: number, timeoutMs: number): Transport => {
  const secure = base.protocol === "https:"
  const options = { keepAlive: true, maxSockets, maxFreeSockets: maxSockets, scheduling: "lifo" as const }
  return {
    base,
    agent: secure ? new https.Agent(options) : new http.Agent(options),
    request: secure ? https.request : http.request,
    timeoutMs
  }
}

/** `path` relative to the base URL (a base with a path prefix such as `/api/` keeps it). */
export const urlOf = (t: Transport, path: string): URL => new URL(path.replace(/^\//, ""), t.base)

export interface JsonAnswer {
  readonly status: number
  readonly body: unknown
  readonly text: string
}

/** One small JSON exchange. Rejects with the socket error's code (ECONNREFUSED, ...) or "timeout". */
export const exchangeJson = (t: Transport, method: "GET" | "POST", path: string, body: unknown, headers: Readonly<Record<string, string>>): Promise<JsonAnswer> =>
  new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = t.request(urlOf(t, path), {
      method,
      agent: t.agent,
      headers: { accept: "application/json", ...headers, ...(payload === undefined ? {} : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) }) }
    })
    const timer = setTimeout(() => req.destroy(new Error(`timeout after ${t.timeoutMs / 1000} s`)), t.timeoutMs)
    req.on("response", (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (c: Buffer) => chunks.push(c))
      res.on("error", (e) => {
        clearTimeout(timer)
        reject(e)
      })
      res.on("end", () => {
        clearTimeout(timer)
        const text = Buffer.concat(chunks).toString("utf8")
        let parsed: unknown = undefined
        try {
          parsed = JSON.parse(text)
        } catch {
          // Not JSON: callers report the status and the text.
        }
        resolve({ status: res.statusCode ?? 0, body: parsed, text })
      })
    })
    req.on("error", (e) => {
      clearTimeout(timer)
      reject(e)
    })
    req.end(payload)
  })

/** A socket error as one short reason: its code where it has one. */
export const networkReason = (e: unknown): string => {
  const err = e as NodeJS.ErrnoException
  return err?.code ?? (err instanceof Error ? err.message : String(e))
}

/** Any HTTP answer to `path` proves the server is there; a socket error is bad input (exit 2). */
export const probe = async (t: Transport, path: string, headers: Readonly<Record<string, string>>): Promise<JsonAnswer> => {
  try {
    return await exchangeJson(t, "GET", path, undefined, headers)
  } catch (e) {
    throw new ValidationError({ field: "--url", message: `cannot reach --url ${t.base.href}: ${networkReason(e)}` })
  }
}

/** The message of an error body (OpenAI `{error: {message}}`, AIME `{error: string | string[]}`), one line. */
export const errorText = (answer: JsonAnswer): string => {
  const body = answer.body as { error?: unknown; message?: unknown } | undefined
  const e = body?.error ?? body?.message
  const text = typeof e === "string" ? e
    : Array.isArray(e) ? e.join("; ")
    : e !== null && typeof e === "object" && typeof (e as { message?: unknown }).message === "string" ? (e as { message: string }).message
    : answer.text
  return text.replace(/\s+/g, " ").trim().slice(0, 160)
}
