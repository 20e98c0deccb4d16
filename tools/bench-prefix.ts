/**
 * Prefix caching on the CPU default model, through the server: time to first token of a chat's second turn (which
 * repeats the first turn, its answer and a new question) against the first turn, and against a cold prompt of the
 * second turn's length on a server without prefix caching.
 *
 *   node tools/bench-prefix.ts [--history 2000] [--repeats 3]
 */
import { parseArgs } from "node:util"
import { Llama3Adapter } from "../src/adapters/llama3/Llama3Adapter.ts"
import { type RunningServer, startServer } from "../src/http/Server.ts"

const { values } = parseArgs({ options: { history: { type: "string", default: "2000" }, repeats: { type: "string", default: "3" } } })
const historyWords = Number(values.history)
const repeats = Number(values.repeats)
const WORDS = ["river", "stone", "light", "paper", "garden", "window", "market", "signal", "winter", "engine", "harbor", "forest"]
const words = (n: number, seed: number) => Array.from({ length: n }, (_, i) => WORDS[(i * 7 + seed * 13 + (i >> 3)) % WORDS.length]).join(" ")

const ttft = async (server: RunningServer, messages: ReadonlyArray<{ role: string; content: string }>) => {
  const t0 = performance.now()
  const r = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages, max_tokens: 1, temperature: 0 })
  })
  const body = (await r.json()) as { usage: { prompt_tokens: number } }
  return { ms: performance.now() - t0, promptTokens: body.usage.prompt_tokens }
}
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const cached = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, engine: { maxNumSeqs: 4 } })
const uncached = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, engine: { maxNumSeqs: 4, enablePrefixCaching: false } })
const t1: Array<number> = [], t2: Array<number> = [], cold: Array<number> = []
let tokens = [0, 0]
for (let i = 0; i < repeats; i++) {
  const turn1 = [{ role: "system", content: "You are a helpful assistant." }, { role: "user", content: `My notes: ${words(historyWords, i)}. Summarize them.` }]
  const turn2 = [...turn1, { role: "assistant", content: "They are about places and things." }, { role: "user", content: "Which word comes up most?" }]
  const a = await ttft(cached, turn1)
  const b = await ttft(cached, turn2)
  const c = await ttft(uncached, turn2)
  t1.push(a.ms), t2.push(b.ms), cold.push(c.ms)
  tokens = [a.promptTokens, b.promptTokens]
}
await Promise.all([cached.close(), uncached.close()])
const m = { turn1: median(t1), turn2: median(t2), cold: median(cold) }
console.log(JSON.stringify({ historyWords, repeats, promptTokens: { turn1: tokens[0], turn2: tokens[1] }, medianMs: m, turn2OverTurn1: m.turn2 / m.turn1, turn2OverCold: m.turn2 / m.cold }))
