/**
 * Prompt sets: AIME's benchmark story prompt, fixed-length random prompts (vLLM's "random" dataset, in words that
 * are one Llama 3 token each, so the length holds on any server without its tokenizer) and JSONL files of chats.
 * Random prompts are seeded and differ per request, so a server's prefix cache cannot inflate the figures.
 */
import * as fs from "node:fs"
import { ValidationError } from "../core/Errors.ts"

export interface ChatTurn {
  readonly role: "system" | "user" | "assistant"
  readonly content: string
}

export interface Prompt {
  readonly messages: ReadonlyArray<ChatTurn>
  readonly maxTokens: number
  /** Ask the server to go on past end-of-sequence (OpenAI `ignore_eos`, a vLLM/Chorus extension). */
  readonly ignoreEos: boolean
}

/** AIME's `run_api_benchmark.py` default prompt. */
export const STORY_PROMPT = "Tell a very long story with at least 500 words: Once upon a time"

// Common words that the Llama 3 tokenizer encodes as one token each when preceded by a space.
const WORDS = (
  "the of and to in is was for on that with as by at from his her they this had not are but were one all their there " +
  "been has when who will more no if out so said what up its about into than them can only other new some could time " +
  "these two may then do first any my now such like our over man me even most made after also did many before must " +
  "through back years where much your way well down should because each just those people how too little state good " +
  "very make world still own see men work long get here between both life being under never day same another know " +
  "while last might us great old year off come since against go came right used take three small house light water"
).split(" ")

/** A seeded 32-bit generator (mulberry32): the same seed gives the same prompts on every machine. */
export const makeRng = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export const storyPrompts = (count: number, outputLen: number, ignoreEos: boolean): Array<Prompt> =>
  Array.from({ length: count }, () => ({ messages: [{ role: "user", content: STORY_PROMPT }], maxTokens: outputLen, ignoreEos }))

/** `inputLen` words (about as many tokens; the chat template adds its few) of random text per request. */
export const randomPrompts = (count: number, inputLen: number, outputLen: number, seed: number, ignoreEos: boolean): Array<Prompt> => {
  const rng = makeRng(seed)
  return Array.from({ length: count }, () => {
    const words = new Array<string>(inputLen)
    for (let i = 0; i < inputLen; i++) words[i] = WORDS[Math.floor(rng() * WORDS.length)]!
    return { messages: [{ role: "user", content: words.join(" ") }], maxTokens: outputLen, ignoreEos }
  })
}

const ROLES = new Set(["system", "user", "assistant"])

const bad = (file: string, line: number, message: string): never => {
  throw new ValidationError({ field: "--jsonl", message: `${file}:${line}: ${message}` })
}

const turnsOf = (value: unknown, file: string, line: number): Array<ChatTurn> => {
  if (!Array.isArray(value) || value.length === 0) return bad(file, line, `expected a non-empty array of {role, content} messages, got ${JSON.stringify(value)?.slice(0, 60)}`)
  return value.map((m: unknown, i) => {
    const turn = m as { role?: unknown; content?: unknown } | null
    if (turn === null || typeof turn !== "object" || typeof turn.role !== "string" || !ROLES.has(turn.role) || typeof turn.content !== "string") {
      return bad(file, line, `message ${i}: expected {"role": "system"|"user"|"assistant", "content": string}, got ${JSON.stringify(m)?.slice(0, 60)}`)
    }
    return { role: turn.role as ChatTurn["role"], content: turn.content }
  })
}

/**
 * A JSONL file, one chat per line: `{"messages": [...], "max_tokens"?: N}`, a bare array of messages, or
 * `{"prompt": "text"}`. Lines without max_tokens use `outputLen`. Throws ValidationError naming file and line.
 */
export const readJsonl = (file: string, outputLen: number, ignoreEos: boolean): Array<Prompt> => {
  let text: string
  try {
    text = fs.readFileSync(file, "utf8")
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    throw new ValidationError({ field: "--jsonl", message: `cannot read the prompt file ${file}${code === "ENOENT" ? ": no such file" : code === undefined ? "" : ` (${code})`}` })
  }
  const out: Array<Prompt> = []
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim()
    if (line === "") return
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch (e) {
      return bad(file, i + 1, `not JSON (${e instanceof Error ? e.message : String(e)})`)
    }
    const obj = value as { messages?: unknown; prompt?: unknown; max_tokens?: unknown } | null
    let maxTokens = outputLen
    if (obj !== null && typeof obj === "object" && !Array.isArray(obj) && obj.max_tokens !== undefined) {
      if (typeof obj.max_tokens !== "number" || !Number.isInteger(obj.max_tokens) || obj.max_tokens < 1) {
        return bad(file, i + 1, `max_tokens must be a positive integer, got ${JSON.stringify(obj.max_tokens)}`)
      }
      maxTokens = obj.max_tokens
    }
    const messages = Array.isArray(value) ? turnsOf(value, file, i + 1)
      : obj !== null && typeof obj === "object" && typeof obj.prompt === "string" ? [{ role: "user" as const, content: obj.prompt }]
      : obj !== null && typeof obj === "object" && obj.messages !== undefined ? turnsOf(obj.messages, file, i + 1)
      : bad(file, i + 1, `expected {"messages": [...]}, {"prompt": "..."} or an array of messages`)
    out.push({ messages, maxTokens, ignoreEos })
  })
  if (out.length === 0) throw new ValidationError({ field: "--jsonl", message: `the prompt file ${file} holds no chats` })
  return out
}
