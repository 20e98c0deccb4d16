/**
 * `chorus bench` flags and their checked form. Every mistake is a ValidationError naming the flag (exit 2) before
 * any request is sent.
 */
import { ValidationError } from "../core/Errors.ts"
import type { FlagSpecs, ParsedFlags } from "../cli/Args.ts"

export const benchFlags = {
  url: { kind: "string", description: "base URL of the server (default http://127.0.0.1:8080)" },
  api: { kind: "string", description: "openai (default: streamed /v1/chat/completions) | aime (job + progress polling)" },
  endpoint: { kind: "string", description: "AIME endpoint name (default llama3_chat)" },
  "api-key": { kind: "string", description: "API key (OpenAI: Bearer header; AIME: the key parameter)" },
  model: { kind: "string", description: "OpenAI model name (default: the first of /v1/models)" },
  dataset: { kind: "string", description: "story (default: AIME's 'Once upon a time' prompt) | random (--input-len words)" },
  jsonl: { kind: "string", description: "a JSONL file of chats to send instead (one {\"messages\": [...]} per line)" },
  "input-len": { kind: "integer", description: "random prompts: words (about tokens) per prompt (default 128)" },
  "output-len": { kind: "integer", description: "max tokens to generate per request (default 128)" },
  "ignore-eos": { kind: "boolean", description: "ask the server to ignore EOS (OpenAI ignore_eos; default for random prompts)" },
  eos: { kind: "boolean", description: "let random prompts stop at EOS too" },
  requests: { kind: "integer", description: "measured requests per concurrency level (default 4 x concurrency, at least 16)" },
  concurrency: { kind: "list", description: "concurrent sessions; a list sweeps (1,4,16,64; default 1)" },
  rate: { kind: "number", description: "open loop: Poisson arrivals per second (--concurrency then caps in-flight)" },
  warmup: { kind: "integer", description: "warm-up requests sent at once before each level, not counted (default: concurrency)" },
  seed: { kind: "integer", description: "seed of random prompts and arrival times (default 0)" },
  temperature: { kind: "number", description: "sampling temperature (default 0: greedy; AIME: 0 to 1, sent with top_k 1)" },
  "poll-interval": { kind: "integer", description: "AIME: milliseconds between progress polls (default 300, as AIME's benchmark)" },
  timeout: { kind: "number", description: "seconds a request may take before it counts as failed (default 600)" },
  json: { kind: "string", description: "write every figure and the settings to this JSON file" },
  chart: { kind: "string", description: "write an SVG chart (total and per-session tokens/s per concurrency)" },
  label: { kind: "string", description: "name of this run in reports and compare charts (default: model @ host)" }
} as const satisfies FlagSpecs

export type BenchFlags = ParsedFlags<typeof benchFlags>

export interface BenchSettings {
  readonly url: string
  readonly api: "openai" | "aime"
  readonly endpoint: string
  readonly apiKey: string | undefined
  readonly model: string | undefined
  readonly dataset: "story" | "random" | "jsonl"
  readonly jsonl: string | undefined
  readonly inputLen: number
  readonly outputLen: number
  readonly ignoreEos: boolean
  /** Per level; undefined: 4 x concurrency, at least 16. */
  readonly requests: number | undefined
  /** One level per value; empty only with a rate (no in-flight cap). */
  readonly concurrency: ReadonlyArray<number>
  readonly rate: number | undefined
  /** Per level; undefined: the level's concurrency. */
  readonly warmup: number | undefined
  readonly seed: number
  readonly temperature: number
  readonly pollIntervalMs: number
  readonly timeoutS: number
  readonly json: string | undefined
  readonly chart: string | undefined
  readonly label: string | undefined
}

const bad = (field: string, message: string): never => {
  throw new ValidationError({ field, message })
}

const positive = (flag: string, v: number | undefined, integer: boolean): void => {
  if (v !== undefined && !(v > 0)) bad(flag, `${flag} must be ${integer ? "a positive integer" : "greater than 0"}, got ${v}`)
}

/** Checks and completes the flags; throws ValidationError naming the first bad one. */
export const settingsFromFlags = (f: BenchFlags): BenchSettings => {
  const api = f.api ?? "openai"
  if (api !== "openai" && api !== "aime") return bad("--api", `--api must be openai or aime, got '${api}'`)
  if (f.dataset !== undefined && f.dataset !== "story" && f.dataset !== "random") bad("--dataset", `--dataset must be story or random, got '${f.dataset}'`)
  if (f.dataset !== undefined && f.jsonl !== undefined) bad("--jsonl", "--jsonl replaces --dataset: give one of them")
  const endpoint = f.endpoint ?? "llama3_chat"
  if (!/^[A-Za-z0-9_-]+$/.test(endpoint)) bad("--endpoint", `--endpoint must be letters, digits, '_' or '-', got '${endpoint}'`)
  positive("--input-len", f["input-len"], true)
  positive("--output-len", f["output-len"], true)
  positive("--requests", f.requests, true)
  positive("--rate", f.rate, false)
  positive("--poll-interval", f["poll-interval"], true)
  positive("--timeout", f.timeout, false)
  if (f.warmup !== undefined && f.warmup < 0) bad("--warmup", `--warmup must be 0 or more, got ${f.warmup}`)
  if (f.temperature !== undefined && !(f.temperature >= 0)) bad("--temperature", `--temperature must be 0 or more, got ${f.temperature}`)
  if (api === "aime" && f.temperature !== undefined && f.temperature > 1) bad("--temperature", `--temperature must be at most 1 for the AIME API, got ${f.temperature}`)
  // With a rate and no --concurrency, nothing caps the requests in flight.
  const concurrency = f.concurrency ?? (f.rate === undefined ? [1] : [])
  for (const c of concurrency) if (!(c >= 1)) bad("--concurrency", `--concurrency values must be positive integers, got ${c}`)
  if (f.rate !== undefined && concurrency.length > 1) bad("--rate", "--rate runs one level: give one --concurrency cap or none")
  if (f.eos === true && f["ignore-eos"] === true) bad("--eos", "--eos and --ignore-eos contradict each other")
  const dataset = f.jsonl !== undefined ? "jsonl" : f.dataset === "random" ? "random" : "story"
  if (f.chart !== undefined && !f.chart.endsWith(".svg")) bad("--chart", `--chart writes SVG: the file name must end in .svg, got '${f.chart}'`)
  return {
    url: f.url ?? "http://127.0.0.1:8080",
    api,
    endpoint,
    apiKey: f["api-key"],
    model: f.model,
    dataset,
    jsonl: f.jsonl,
    inputLen: f["input-len"] ?? 128,
    outputLen: f["output-len"] ?? 128,
    ignoreEos: f["ignore-eos"] === true || (dataset === "random" && f.eos !== true),
    requests: f.requests,
    concurrency,
    rate: f.rate,
    warmup: f.warmup,
    seed: f.seed ?? 0,
    temperature: f.temperature ?? 0,
    pollIntervalMs: f["poll-interval"] ?? 300,
    timeoutS: f.timeout ?? 600,
    json: f.json,
    chart: f.chart,
    label: f.label
  }
}

/** The requests and warm-up of one level under these settings. */
export const levelSize = (s: BenchSettings, concurrency: number | undefined): { readonly requests: number; readonly warmup: number } => {
  const c = concurrency ?? 1
  return { requests: s.requests ?? Math.max(16, 4 * c), warmup: s.warmup ?? (concurrency ?? Math.min(16, Math.ceil(s.rate ?? 1))) }
}
