/**
 * Output tokens/s through the server with and without structured output (`response_format`), at a few concurrency
 * levels, on the embedded default Llama 3 model (CPU). Starts the server in-process, then per level and per mode
 * sends `--requests` chat completions (non-streamed), `concurrency` at a time, after up to 4 warm-up requests (which
 * also compile the schema). Every request generates exactly `--max-tokens` tokens: plain ones with `ignore_eos`,
 * constrained ones because the schema (an array of exactly 200 enum words) is longer than that, so they end at
 * `length` too. Modes run interleaved, `--rounds` times; the table gives each mode's median and best round (on a
 * shared machine the best round is the least disturbed one).
 *
 *   node tools/bench-structured.ts [--concurrency 1,64] [--requests N] [--max-tokens 256] [--temperature 0]
 *                                  [--rounds 3] [--modes plain,json_object,json_schema] [--json FILE] [--logits-mask]
 *
 * `--logits-mask`: constrained greedy steps fetch the logits and mask them in the sampler, as before the graph took
 * the grammar's mask (`EngineOptions.grammarMaskInGraph`), for a before/after comparison on one build.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import { Llama3Adapter } from "../src/adapters/llama3/Llama3Adapter.ts"
import { startServer } from "../src/http/Server.ts"
import { parseToolFlags, toolScript } from "./ToolFlags.ts"

const flags = parseToolFlags(toolScript("bench-structured.ts"), "[options]", {
  concurrency: { kind: "list", description: "concurrency levels (default 1,64)" },
  requests: { kind: "integer", description: "measured requests per level and mode (default max(8, 2 x concurrency))" },
  "max-tokens": { kind: "integer", description: "tokens per request (default 256)" },
  temperature: { kind: "number", description: "sampling temperature (default 0: greedy)" },
  rounds: { kind: "integer", description: "rounds of every mode, interleaved; figures are medians (default 3)" },
  modes: { kind: "string", description: "comma-separated: plain, json_object, json_schema (default all)" },
  json: { kind: "string", description: "write the results here" },
  "logits-mask": { kind: "boolean", description: "mask fetched logits in the sampler instead of in the graph (the path before)" }
})
const grammarMaskInGraph = flags["logits-mask"] !== true
const levels = flags.concurrency ?? [1, 64]
const maxTokens = flags["max-tokens"] ?? 256
const temperature = flags.temperature ?? 0
const rounds = flags.rounds ?? 3
const modes = (flags.modes ?? "plain,json_object,json_schema").split(",") as Array<Mode>
type Mode = "plain" | "json_object" | "json_schema"

const WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]
/** Longer than any `--max-tokens` up to ~600 (each item is 2-4 tokens): constrained requests end at `length`. */
const SCHEMA = {
  type: "object",
  properties: { words: { type: "array", items: { enum: WORDS }, minItems: 200, maxItems: 200 } },
  required: ["words"]
}

const formatOf = (mode: Mode) =>
  mode === "plain" ? {} : mode === "json_object"
    ? { response_format: { type: "json_object" } }
    : { response_format: { type: "json_schema", json_schema: { name: "words", schema: SCHEMA, strict: true } } }

const maxLevel = Math.max(...levels)
const server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, host: "127.0.0.1", engine: { maxNumSeqs: Math.max(64, maxLevel), grammarMaskInGraph } })

let nextSeed = 0
const one = async (mode: Mode): Promise<number> => {
  const r = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      messages: [{ role: "user", content: `List words, as JSON. (${nextSeed})` }],
      max_tokens: maxTokens,
      temperature,
      seed: nextSeed++,
      ...(mode === "plain" ? { ignore_eos: true } : {}),
      ...formatOf(mode)
    })
  })
  const body = (await r.json()) as any
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${JSON.stringify(body)}`)
  if (body.choices[0].finish_reason !== "length") throw new Error(`${mode}: finished early (${body.choices[0].finish_reason}): ${body.choices[0].message.content}`)
  return body.usage.completion_tokens as number
}

/** `count` requests, `concurrency` in flight: output tokens and seconds. */
const run = async (mode: Mode, concurrency: number, count: number) => {
  let left = count
  let tokens = 0
  const t0 = performance.now()
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (left > 0) {
      left--
      const n = await one(mode)
      tokens += n
    }
  }))
  return { tokens, seconds: (performance.now() - t0) / 1000 }
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

const results: Array<{ concurrency: number; mode: Mode; tokensPerS: number; best: number; rounds: Array<number>; requests: number }> = []
for (const concurrency of levels) {
  const count = flags.requests ?? Math.max(8, 2 * concurrency)
  const perRound = new Map<Mode, Array<number>>(modes.map((m) => [m, []]))
  const warm = Math.min(concurrency, 4)
  for (const mode of modes) await run(mode, warm, warm) // warm-up (and the schema's compilation)
  for (let round = 0; round < rounds; round++) {
    for (const mode of modes) {
      const r = await run(mode, concurrency, count)
      perRound.get(mode)!.push(r.tokens / r.seconds)
      console.error(`c=${concurrency} ${mode} round ${round + 1}: ${(r.tokens / r.seconds).toFixed(1)} tokens/s (${r.tokens} tokens, ${r.seconds.toFixed(1)} s)`)
    }
  }
  for (const mode of modes) {
    const xs = perRound.get(mode)!
    results.push({ concurrency, mode, tokensPerS: median(xs), best: Math.max(...xs), rounds: xs, requests: count })
  }
}
await server.close()

const at = (c: number, m: Mode) => results.find((r) => r.concurrency === c && r.mode === m)
console.log(`| concurrency | ${modes.map((m) => `${m} (median / best)`).join(" | ")} |`)
console.log(`|---:|${modes.map(() => "---:").join("|")}|`)
for (const c of levels) {
  const cells = modes.map((m) => {
    const r = at(c, m)!
    const base = at(c, "plain")
    const rel = (x: number, b: number | undefined) => m === "plain" || b === undefined ? "" : ` (${((x / b - 1) * 100).toFixed(0)}%)`
    return `${r.tokensPerS.toFixed(0)}${rel(r.tokensPerS, base?.tokensPerS)} / ${r.best.toFixed(0)}${rel(r.best, base?.best)}`
  })
  console.log(`| ${c} | ${cells.join(" | ")} |`)
}
const machine = `${os.cpus().length} cores (${os.cpus()[0]?.model ?? "?"}), Node ${process.versions.node}`
const masking = grammarMaskInGraph ? "grammar mask in the graph (greedy steps)" : "grammar mask on fetched logits"
const load = os.loadavg().map((x) => x.toFixed(2)).join(" ")
console.log(`\n${machine}, ${new Date().toISOString().slice(0, 10)}, max_tokens ${maxTokens}, temperature ${temperature}, ${rounds} rounds, ${masking}, load average ${load}`)
if (flags.json !== undefined) fs.writeFileSync(flags.json, JSON.stringify({ machine, date: new Date().toISOString(), maxTokens, temperature, rounds, grammarMaskInGraph, loadAverage: os.loadavg(), results }, null, 2))
