/**
 * The server path on a GPU: the real `chorus serve` on a checkpoint, measured by the real `chorus bench` over HTTP,
 * plus a prefix-reuse check (time to first token of a chat's second turn, which repeats the first turn and its answer,
 * against the first turn and against a cold prompt of the second turn's length).
 *
 *   node tools/bench-gpu/server-sweep.ts --checkpoint DIR --out DIR [--device cuda:0] [--dtype float16]
 *     [--max-batch 256] [--context-length 4096] [--no-cuda-graphs] [--attention paged|fused]
 *     [--concurrency 1,16,64,128,256] [--input-len 512] [--output-len 256] [--requests N]
 *     [--prefix-history 2000] [--prefix-repeats 3] [--serve-arg=--flag=value ...] [--skip-weights] [--python python3]
 *     [--ready-timeout-s 1800] [--bench-timeout-s 3000]
 *
 * Steps: make_weights.py writes the Llama-3-8B-shaped random checkpoint when --checkpoint lacks it (as `run.ts`
 * does; --skip-weights to not), the server starts on a free port with its log in `--out/server.log`, `/ready` is
 * polled, `chorus bench` writes `--out/bench.json` and `bench.svg`, the prefix check runs, then the server gets SIGTERM
 * (SIGKILL after 30 s). Results: `--out/server-sweep.json` and `--out/server-sweep.md` (also printed). Exits 1 when
 * a step failed (what was measured is still written). To run after the PyTorch baseline in the same device call:
 *
 *   node tools/bench-gpu/run.ts --checkpoint /tmp/ckpt --out $OUT/gpu --skip-chorus && \
 *   node tools/bench-gpu/server-sweep.ts --checkpoint /tmp/ckpt --out $OUT/server --skip-weights
 */
import { spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { readResult, writeResult } from "../../src/bench/ResultFile.ts"
import { renderSweepChart } from "../../src/bench/SweepChart.ts"
import { parseToolFlags, toolFail } from "../ToolFlags.ts"

const here = path.dirname(fileURLToPath(import.meta.url))
const repoRoot = path.resolve(here, "../..")
const cli = path.join(repoRoot, "src/cli/main.ts")

const flagSpecs = {
  checkpoint: { kind: "string", description: "checkpoint folder (made with make_weights.py when missing)" },
  out: { kind: "string", description: "folder for server.log, bench.json, server-sweep.json, server-sweep.md" },
  device: { kind: "string", description: "serve --device (default cuda:0)" },
  dtype: { kind: "string", description: "serve --dtype (default float16)" },
  "max-batch": { kind: "integer", description: "serve --max-batch (default 256)" },
  "context-length": { kind: "integer", description: "serve --context-length (default: the server's)" },
  "no-cuda-graphs": { kind: "boolean", description: "serve without --cuda-graphs" },
  attention: { kind: "string", description: "serve --attention paged|fused (default: the server's choice)" },
  "serve-arg": { kind: "string", repeatable: true, description: "one more serve flag, e.g. --serve-arg=--gpu-memory-utilization=0.9" },
  concurrency: { kind: "list", description: "bench concurrencies (default 1,16,64,128,256)" },
  "input-len": { kind: "integer", description: "bench random prompt words (default 512)" },
  "output-len": { kind: "integer", description: "bench tokens per request (default 256)" },
  requests: { kind: "integer", description: "bench requests per level (default: bench's, 4 x concurrency)" },
  "prefix-history": { kind: "integer", description: "prefix check: words of chat history (about tokens; default 2000; 0 skips the check)" },
  "prefix-repeats": { kind: "integer", description: "prefix check: chats measured, median reported (default 3)" },
  "skip-weights": { kind: "boolean", description: "do not run make_weights.py" },
  python: { kind: "string", description: "Python with torch, for make_weights.py (default python3)" },
  "ready-timeout-s": { kind: "integer", description: "seconds to wait for /ready (conversion included; default 1800)" },
  "bench-timeout-s": { kind: "integer", description: "time limit of chorus bench (default 3000)" },
} as const

const tool = { name: "server-sweep", run: "node tools/bench-gpu/server-sweep.ts" }
// Annotated so that a call narrows like a `never` function declaration.
const fail: (message: string) => never = toolFail(tool)
const flags = parseToolFlags(tool, "--checkpoint DIR --out DIR [options]", flagSpecs)

const checkpoint = path.resolve(flags.checkpoint ?? fail("--checkpoint DIR is required"))
const out = path.resolve(flags.out ?? fail("--out DIR is required"))
const concurrency = flags.concurrency ?? [1, 16, 64, 128, 256]
const inputLen = flags["input-len"] ?? 512
const outputLen = flags["output-len"] ?? 256
const historyWords = flags["prefix-history"] ?? 2000
const prefixRepeats = flags["prefix-repeats"] ?? 3
const serveArgs = [
  "serve",
  "--model", checkpoint,
  "--device", flags.device ?? "cuda:0",
  "--dtype", flags.dtype ?? "float16",
  "--max-batch", String(flags["max-batch"] ?? 256),
  ...(flags["context-length"] === undefined ? [] : ["--context-length", String(flags["context-length"])]),
  ...(flags["no-cuda-graphs"] === true ? [] : ["--cuda-graphs"]),
  ...(flags.attention === undefined ? [] : ["--attention", flags.attention]),
  "--host", "127.0.0.1",
  ...(flags["serve-arg"] ?? [])
]

const log = (line: string) => process.stdout.write(`[server-sweep ${new Date().toISOString().slice(11, 19)}] ${line}\n`)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const median = (xs: ReadonlyArray<number>): number | null => {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once("error", reject)
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port
      srv.close(() => resolve(port))
    })
  })

interface Step {
  readonly name: string
  readonly ok: boolean
  readonly detail: string
  readonly seconds: number
}

// ------------------------------------------------------------------------------------------------ prefix reuse

/** Seeded words (mulberry32 over a small vocabulary): about one token each, different per seed. */
const words = (n: number, seed: number): string => {
  const vocab = ["time", "river", "stone", "light", "house", "music", "garden", "paper", "window", "forest", "market", "engine",
    "winter", "letter", "orange", "silver", "bridge", "island", "doctor", "mirror", "planet", "story", "summer", "number"]
  let s = seed | 0
  const next = () => {
    s = (s + 0x6d2b79f5) | 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return Array.from({ length: n }, () => vocab[Math.floor(next() * vocab.length)]!).join(" ")
}

interface Message {
  readonly role: "system" | "user" | "assistant"
  readonly content: string
}

/** One streamed chat completion: time to the first content delta, and the whole answer. */
const chat = async (base: string, model: string, messages: ReadonlyArray<Message>, maxTokens: number): Promise<{ ttftMs: number; text: string; promptTokens: number | null }> => {
  const t0 = performance.now()
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages, max_tokens: maxTokens, temperature: 0, stream: true, ignore_eos: true, stream_options: { include_usage: true } })
  })
  if (!res.ok || res.body === null) throw new Error(`chat completion: HTTP ${res.status} ${await res.text().catch(() => "")}`.trim())
  let ttftMs: number | undefined
  let text = ""
  let promptTokens: number | null = null
  let buffer = ""
  const decoder = new TextDecoder()
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true })
    let nl: number
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim()
      buffer = buffer.slice(nl + 1)
      if (!line.startsWith("data:")) continue
      const data = line.slice(5).trim()
      if (data === "[DONE]") continue
      const event = JSON.parse(data) as { choices?: Array<{ delta?: { content?: string } }>; usage?: { prompt_tokens?: number } }
      const delta = event.choices?.[0]?.delta?.content
      if (delta !== undefined && delta !== "") {
        ttftMs ??= performance.now() - t0
        text += delta
      }
      if (event.usage?.prompt_tokens !== undefined) promptTokens = event.usage.prompt_tokens
    }
  }
  return { ttftMs: ttftMs ?? performance.now() - t0, text, promptTokens }
}

interface PrefixResult {
  readonly historyWords: number
  readonly repeats: number
  readonly turn1TtftMs: ReadonlyArray<number>
  readonly turn2TtftMs: ReadonlyArray<number>
  /** The second turn's messages with a history never sent before: the same prompt length, nothing to reuse. */
  readonly coldTtftMs: ReadonlyArray<number>
  readonly turn1PromptTokens: ReadonlyArray<number | null>
  readonly turn2PromptTokens: ReadonlyArray<number | null>
  readonly median: { readonly turn1: number | null; readonly turn2: number | null; readonly cold: number | null }
  /** cold / turn 2: how much faster the repeated prefix makes the first token. */
  readonly speedup: number | null
}

const prefixCheck = async (base: string, model: string): Promise<PrefixResult> => {
  const turn1: Array<number> = [], turn2: Array<number> = [], cold: Array<number> = []
  const p1: Array<number | null> = [], p2: Array<number | null> = []
  const conversation = (seed: number, answer: string | undefined): Array<Message> => {
    const first: Array<Message> = [
      { role: "system", content: "You are a helpful assistant." },
      { role: "user", content: `Here are my notes: ${words(historyWords, seed)}\n\nSummarize them in one sentence.` }
    ]
    // Random weights may answer with tokens that have no text (reserved special tokens): a message cannot be empty.
    const said = answer === undefined || answer.trim() === "" ? "(no answer)" : answer
    return answer === undefined ? first : [...first, { role: "assistant", content: said }, { role: "user", content: "Which word comes up most often?" }]
  }
  for (let i = 0; i < prefixRepeats; i++) {
    const seed = 1000 + i
    const a = await chat(base, model, conversation(seed, undefined), 64)
    const b = await chat(base, model, conversation(seed, a.text), 16)
    // The same shape with a history the server has never seen: a prompt of turn 2's length, no reuse possible.
    const c = await chat(base, model, conversation(seed + 500, a.text), 16)
    turn1.push(a.ttftMs), turn2.push(b.ttftMs), cold.push(c.ttftMs)
    p1.push(a.promptTokens), p2.push(b.promptTokens)
    log(`prefix chat ${i + 1}/${prefixRepeats}: turn 1 ${a.ttftMs.toFixed(1)} ms, turn 2 ${b.ttftMs.toFixed(1)} ms, cold ${c.ttftMs.toFixed(1)} ms`)
  }
  const m = { turn1: median(turn1), turn2: median(turn2), cold: median(cold) }
  return {
    historyWords, repeats: prefixRepeats, turn1TtftMs: turn1, turn2TtftMs: turn2, coldTtftMs: cold,
    turn1PromptTokens: p1, turn2PromptTokens: p2, median: m,
    speedup: m.cold !== null && m.turn2 !== null && m.turn2 > 0 ? m.cold / m.turn2 : null
  }
}

// ------------------------------------------------------------------------------------------------ step profile

/** The engine's step counters, read from `/metrics` before and after a level. */
interface StepCounters {
  readonly steps: number
  readonly tokens: number
  readonly shards: number
  readonly run: number
  readonly between: number
  readonly decodeSteps: number
  readonly decodeSeqs: number
}

const scrapeSteps = async (base: string): Promise<StepCounters> => {
  const text = await (await fetch(`${base}/metrics`)).text()
  const value = (name: string, label?: string): number => {
    let sum = 0
    for (const line of text.split("\n")) {
      if (!line.startsWith(name) || (line[name.length] !== "{" && line[name.length] !== " ")) continue
      if (label !== undefined && !line.includes(label)) continue
      sum += Number(line.slice(line.lastIndexOf(" ") + 1))
    }
    return sum
  }
  return {
    steps: value("chorus:iteration_tokens_total_count"),
    tokens: value("chorus:iteration_tokens_total_sum"),
    shards: value("chorus:engine_step_seconds_total", 'part="shards"'),
    run: value("chorus:engine_step_seconds_total", 'part="run"'),
    between: value("chorus:engine_step_seconds_total", 'part="between"'),
    decodeSteps: value("chorus:engine_decode_step_sequences_count"),
    decodeSeqs: value("chorus:engine_decode_step_sequences_sum")
  }
}

/** Means per step over one level: where the engine's time went (ms), and how full its steps were. */
export interface StepProfile {
  readonly steps: number
  readonly tokensPerStep: number
  readonly decodeSeqsPerStep: number
  readonly shardsMs: number
  readonly runMs: number
  readonly betweenMs: number
}

const stepProfile = (a: StepCounters, b: StepCounters): StepProfile => {
  const steps = Math.max(1, b.steps - a.steps)
  return {
    steps: b.steps - a.steps,
    tokensPerStep: (b.tokens - a.tokens) / steps,
    decodeSeqsPerStep: (b.decodeSeqs - a.decodeSeqs) / Math.max(1, b.decodeSteps - a.decodeSteps),
    shardsMs: ((b.shards - a.shards) * 1000) / steps,
    runMs: ((b.run - a.run) * 1000) / steps,
    betweenMs: ((b.between - a.between) * 1000) / steps
  }
}

// ------------------------------------------------------------------------------------------------ report

interface BenchLevelLike {
  readonly concurrency: number | null
  readonly completed: number
  readonly failed: number
  readonly request_throughput: number
  readonly output_throughput: number
  readonly tokens_per_session: number
  readonly ttft_ms: { readonly median: number | null; readonly p99: number | null }
  readonly tpot_ms: { readonly median: number | null }
  readonly itl_ms: { readonly median: number | null; readonly p99: number | null }
  /** The engine's steps during the level (from /metrics). */
  readonly profile?: StepProfile
}

const fmt = (n: number | null | undefined, digits = 1): string => (n === null || n === undefined || !Number.isFinite(n) ? "-" : n.toFixed(digits))

const renderMarkdown = (r: SweepReport): string => {
  const lines = [
    `## chorus serve sweep (${r.date})`,
    "",
    `\`chorus ${r.serveArgs.join(" ")}\``,
    "",
    `bench: --api openai --dataset random --input-len ${r.inputLen} --output-len ${r.outputLen}; load ${fmt(r.readySeconds)} s to /ready`,
    ""
  ]
  if (r.levels.length > 0) {
    lines.push(
      "| concurrency | done / failed | req/s | output tok/s | tok/s per session | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | ITL p50 ms | ITL p99 ms |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for (const l of r.levels) {
      lines.push(
        `| ${l.concurrency ?? "-"} | ${l.completed} / ${l.failed} | ${fmt(l.request_throughput, 2)} | ${fmt(l.output_throughput)} | ${fmt(l.tokens_per_session)} | ` +
          `${fmt(l.ttft_ms.median)} | ${fmt(l.ttft_ms.p99)} | ${fmt(l.tpot_ms.median, 2)} | ${fmt(l.itl_ms.median, 2)} | ${fmt(l.itl_ms.p99, 2)} |`
      )
    }
    lines.push("")
    lines.push(
      "Engine steps per level (means per step, from /metrics: `shards` = hand-off to answer, `run` = of that in ORT's run, `between` = the engine loop between steps):",
      "",
      "| concurrency | steps | tokens / step | decode seqs / step | shards ms | run ms | between ms |",
      "|---:|---:|---:|---:|---:|---:|---:|"
    )
    for (const l of r.levels) {
      const p = l.profile
      if (p === undefined) continue
      lines.push(`| ${l.concurrency ?? "-"} | ${p.steps} | ${fmt(p.tokensPerStep)} | ${fmt(p.decodeSeqsPerStep)} | ${fmt(p.shardsMs, 2)} | ${fmt(p.runMs, 2)} | ${fmt(p.betweenMs, 2)} |`)
    }
    lines.push("")
  }
  if (r.prefix !== undefined) {
    const p = r.prefix
    lines.push(
      `Prefix reuse (${p.historyWords}-word history, median of ${p.repeats}; prompt tokens turn 1 ${p.turn1PromptTokens.join("/")}, turn 2 ${p.turn2PromptTokens.join("/")}):`,
      "",
      "| turn 1 TTFT ms | turn 2 TTFT ms (repeats turn 1) | cold TTFT ms (turn 2's length, new history) | cold / turn 2 |",
      "|---:|---:|---:|---:|",
      `| ${fmt(p.median.turn1)} | ${fmt(p.median.turn2)} | ${fmt(p.median.cold)} | ${fmt(p.speedup, 2)}x |`,
      ""
    )
  }
  lines.push("| step | ok | detail | s |", "|---|---|---|---:|")
  for (const s of r.steps) lines.push(`| ${s.name} | ${s.ok ? "yes" : "**no**"} | ${s.detail.replace(/\|/g, "/")} | ${fmt(s.seconds)} |`)
  return lines.join("\n") + "\n"
}

interface SweepReport {
  readonly date: string
  readonly checkpoint: string
  readonly serveArgs: ReadonlyArray<string>
  readonly inputLen: number
  readonly outputLen: number
  readonly concurrency: ReadonlyArray<number>
  readonly readySeconds: number | null
  readonly levels: ReadonlyArray<BenchLevelLike>
  readonly prefix: PrefixResult | undefined
  readonly steps: ReadonlyArray<Step>
}

// ------------------------------------------------------------------------------------------------ main

const main = async (): Promise<void> => {
  fs.mkdirSync(out, { recursive: true })
  const steps: Array<Step> = []
  const timed = async <A>(name: string, f: () => Promise<A>): Promise<A | undefined> => {
    const t0 = performance.now()
    try {
      const a = await f()
      steps.push({ name, ok: true, detail: "ok", seconds: (performance.now() - t0) / 1000 })
      return a
    } catch (e) {
      const detail = (e instanceof Error ? e.message : String(e)).split("\n")[0]!
      log(`${name}: FAILED: ${detail}`)
      steps.push({ name, ok: false, detail, seconds: (performance.now() - t0) / 1000 })
      return undefined
    }
  }

  if (flags["skip-weights"] !== true && !fs.existsSync(path.join(checkpoint, "model.safetensors.index.json"))) {
    await timed("weights", async () => {
      const r = spawnSync(flags.python ?? "python3", [path.join(here, "make_weights.py"), checkpoint], { stdio: "inherit", cwd: repoRoot, timeout: 900_000 })
      if (r.status !== 0) throw new Error(`make_weights.py exit ${r.status ?? r.signal ?? r.error?.message}`)
    })
  }

  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const args = [...serveArgs, "--port", String(port)]
  const serverLog = fs.openSync(path.join(out, "server.log"), "w")
  log(`starting: node src/cli/main.ts ${args.join(" ")} (log: ${path.join(out, "server.log")})`)
  const server = spawn(process.execPath, [cli, ...args], { cwd: repoRoot, stdio: ["ignore", serverLog, serverLog] })
  let exited: string | undefined
  server.on("exit", (code, signal) => (exited = `server exited (${code ?? signal})`))
  const stopServer = async () => {
    if (exited !== undefined) return
    server.kill("SIGTERM")
    for (let i = 0; i < 300 && exited === undefined; i++) await sleep(100)
    if (exited === undefined) server.kill("SIGKILL")
  }
  process.on("SIGINT", () => void stopServer().then(() => process.exit(130)))
  process.on("SIGTERM", () => void stopServer().then(() => process.exit(143)))
  // Whatever ends this process (an exception included) ends the server too.
  process.on("exit", () => {
    if (exited === undefined) server.kill("SIGKILL")
  })

  let readySeconds: number | null = null
  const ready = await timed("ready", async () => {
    const t0 = performance.now()
    const limit = (flags["ready-timeout-s"] ?? 1800) * 1000
    while (performance.now() - t0 < limit) {
      if (exited !== undefined) throw new Error(`${exited} before /ready; last lines: ${tail(path.join(out, "server.log"))}`)
      const status = await fetch(`${base}/ready`).then((r) => r.status, () => 0)
      if (status === 200) {
        readySeconds = (performance.now() - t0) / 1000
        log(`ready after ${readySeconds.toFixed(1)} s`)
        return true
      }
      await sleep(1000)
    }
    throw new Error(`not ready after ${limit / 1000} s; last lines: ${tail(path.join(out, "server.log"))}`)
  })

  let levels: ReadonlyArray<BenchLevelLike> = []
  let prefix: PrefixResult | undefined
  if (ready === true) {
    // One bench run per level, with the engine's step counters read around it.
    const benchJson = path.join(out, "bench.json")
    const measured: Array<BenchLevelLike> = []
    let merged: ReturnType<typeof readResult> | undefined
    for (const c of concurrency) {
      const levelJson = path.join(out, `bench-c${c}.json`)
      const benchArgs = [
        cli, "bench", "--url", base, "--api", "openai", "--dataset", "random",
        "--input-len", String(inputLen), "--output-len", String(outputLen), "--concurrency", String(c),
        ...(flags.requests === undefined ? [] : ["--requests", String(flags.requests)]),
        "--json", levelJson, "--label", `chorus ${flags.dtype ?? "float16"} max-batch ${flags["max-batch"] ?? 256}`
      ]
      // Tried twice: after a level longer than the server's keep-alive, the first fetch can meet the closed socket
      // ("fetch failed", seen after every one-stream level on the GPU hosts). A second failure leaves the level
      // without its step figures, the reason in the log.
      const scrape = () =>
        scrapeSteps(base)
          .catch(() => scrapeSteps(base))
          .catch((e: unknown) => void log(`/metrics scrape failed: ${e instanceof Error ? e.message : String(e)}`))
      const before = await scrape()
      await timed(`bench c=${c}`, async () => {
        log(`bench: node ${benchArgs.slice(1).join(" ")}`)
        const r = spawnSync(process.execPath, benchArgs, { stdio: "inherit", cwd: repoRoot, timeout: (flags["bench-timeout-s"] ?? 3000) * 1000 })
        if (r.status !== 0) throw new Error(`chorus bench exit ${r.status ?? r.signal ?? r.error?.message}`)
      })
      const after = await scrape()
      if (!fs.existsSync(levelJson)) continue
      const result = readResult(levelJson)
      merged = merged === undefined ? result : { ...merged, levels: [...merged.levels, ...result.levels] }
      for (const l of result.levels as ReadonlyArray<BenchLevelLike>) {
        measured.push(before !== undefined && after !== undefined ? { ...l, profile: stepProfile(before, after) } : l)
      }
    }
    if (merged !== undefined) {
      writeResult(benchJson, merged)
      fs.writeFileSync(path.join(out, "bench.svg"), renderSweepChart(merged))
    }
    levels = measured
    const empty = levels.filter((l) => l.completed === 0).map((l) => l.concurrency)
    if (empty.length > 0) steps.push({ name: "bench levels", ok: false, detail: `no request completed at concurrency ${empty.join(", ")} (see the bench output)`, seconds: 0 })
    if (historyWords > 0) {
      prefix = await timed("prefix", async () => {
        const models = (await (await fetch(`${base}/v1/models`)).json()) as { data: Array<{ id: string }> }
        return prefixCheck(base, models.data[0]?.id ?? "default")
      })
    }
  }
  await stopServer()
  fs.closeSync(serverLog)

  const report: SweepReport = {
    date: new Date().toISOString(),
    checkpoint,
    serveArgs: args,
    inputLen,
    outputLen,
    concurrency,
    readySeconds,
    levels,
    prefix,
    steps
  }
  fs.writeFileSync(path.join(out, "server-sweep.json"), JSON.stringify(report, null, 2))
  const md = renderMarkdown(report)
  fs.writeFileSync(path.join(out, "server-sweep.md"), md)
  process.stdout.write(`\n${md}`)
  if (steps.some((s) => !s.ok)) process.exitCode = 1
}

const tail = (file: string): string => {
  try {
    return fs.readFileSync(file, "utf8").trim().split("\n").slice(-5).join(" | ")
  } catch {
    return "(no log)"
  }
}

await main()
