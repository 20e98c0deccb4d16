/**
 * `chorus bench`: load-test an OpenAI- or AIME-compatible chat server and report vLLM's latency figures and
 * AIME's tokens/s, with `--json` and `--chart` outputs; `chorus bench compare A.json B.json ...` compares results.
 * The flag parser takes only `--flags`, so this command reads its own positional `compare` subcommand.
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import { ValidationError } from "../core/Errors.ts"
import { aimeClient } from "../bench/AimeClient.ts"
import { type BenchSettings, benchFlags, levelSize, settingsFromFlags } from "../bench/BenchFlags.ts"
import { renderCompare } from "../bench/Compare.ts"
import { LiveBar, renderTable } from "../bench/ConsoleReport.ts"
import type { LoadClient } from "../bench/LoadClient.ts"
import { parseBase } from "../bench/LoadClient.ts"
import { openAiClient } from "../bench/OpenAiClient.ts"
import { type Prompt, randomPrompts, readJsonl, storyPrompts } from "../bench/Prompts.ts"
import { type BenchLevel, levelRecord, readResult, resultRecord, writeResult } from "../bench/ResultFile.ts"
import { type PromptSource, runLevel } from "../bench/RunLoop.ts"
import { renderCompareChart, renderSweepChart } from "../bench/SweepChart.ts"
import { parseFlags } from "./Args.ts"

const writeChart = (file: string, svg: string) => {
  try {
    fs.writeFileSync(file, `${svg}\n`)
  } catch (e) {
    throw new ValidationError({ field: "--chart", message: `cannot write ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` })
  }
}

/** The prompts of level `level`: warm-up and measured requests, different per level for random prompts. */
const promptSource = (s: BenchSettings, file: ReadonlyArray<Prompt> | undefined, level: number, count: number): PromptSource => {
  if (file !== undefined) return (i) => file[i % file.length]!
  if (s.dataset === "random") {
    const prompts = randomPrompts(count, s.inputLen, s.outputLen, s.seed + level * 1_000_003, s.ignoreEos)
    return (i) => prompts[i]!
  }
  const [story] = storyPrompts(1, s.outputLen, s.ignoreEos)
  return () => story!
}

const connect = (s: BenchSettings): Promise<LoadClient> => {
  const url = parseBase(s.url)
  const maxSockets = Math.max(...s.concurrency, s.warmup ?? 0, 64) * 2
  const timeoutMs = s.timeoutS * 1000
  return s.api === "openai"
    ? openAiClient({ url, apiKey: s.apiKey, model: s.model, temperature: s.temperature, maxSockets, timeoutMs })
    : aimeClient({ url, endpoint: s.endpoint, apiKey: s.apiKey, pollIntervalMs: s.pollIntervalMs, temperature: s.temperature, maxSockets, timeoutMs })
}

/** Runs every level of the settings and writes the outputs; resolves with the result. */
export const bench = async (s: BenchSettings, out: NodeJS.WritableStream = process.stdout) => {
  // Read the prompt file before contacting the server: a missing file is bad input either way.
  const file = s.jsonl === undefined ? undefined : readJsonl(s.jsonl, s.outputLen, s.ignoreEos)
  const client = await connect(s)
  const bar = new LiveBar()
  const levels: Array<BenchLevel> = []
  try {
    const caps: ReadonlyArray<number | undefined> = s.concurrency.length === 0 ? [undefined] : s.concurrency
    for (const [index, cap] of caps.entries()) {
      const size = levelSize(s, cap)
      const name = s.rate === undefined ? `concurrency ${cap}` : `rate ${s.rate}/s`
      const result = await runLevel(
        client,
        promptSource(s, file, index, size.warmup + size.requests),
        { requests: size.requests, concurrency: cap, rate: s.rate, warmup: size.warmup, seed: s.seed + index },
        (p) => bar.update(name, p)
      )
      bar.done()
      levels.push(levelRecord(cap, s.rate, size.requests, result))
    }
  } finally {
    bar.done()
    client.close()
  }
  const label = s.label ?? `${client.model ?? "unknown model"} @ ${new URL(s.url).host}`
  const result = resultRecord(s, label, client.model, levels)
  out.write(renderTable(result))
  if (s.json !== undefined) writeResult(s.json, result)
  if (s.chart !== undefined) writeChart(s.chart, renderSweepChart(result))
  return result
}

/** `compare A.json B.json ... [--chart FILE.svg]` */
const compare = (argv: ReadonlyArray<string>) => {
  const files: Array<string> = []
  let chart: string | undefined
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === "--chart" || arg.startsWith("--chart=")) {
      chart = arg === "--chart" ? argv[++i] : arg.slice("--chart=".length)
      if (chart === undefined || chart === "") throw new ValidationError({ field: "--chart", message: "--chart needs a value" })
      if (!chart.endsWith(".svg")) throw new ValidationError({ field: "--chart", message: `--chart writes SVG: the file name must end in .svg, got '${chart}'` })
    } else if (arg.startsWith("--")) {
      throw new ValidationError({ field: arg, message: `unknown option ${arg} for 'chorus bench compare' (it takes result files and --chart FILE.svg)` })
    } else files.push(arg)
  }
  if (files.length < 2) throw new ValidationError({ field: "compare", message: `'chorus bench compare' needs at least two result files, got ${files.length}` })
  const results = files.map(readResult)
  process.stdout.write(renderCompare(results))
  if (chart !== undefined) writeChart(chart, renderCompareChart(results))
}

/** `compare` reads its own arguments; this is what its help shows. */
const compareHelp = {
  synopsis: "A.json B.json ... [--chart FILE.svg]",
  summary: "compare result files of chorus bench --json (a table, and a chart with --chart)",
  flags: { chart: { kind: "string", description: "write an SVG chart comparing the results (the name must end in .svg)" } }
} as const

export const benchCommand = {
  subcommands: new Map([["compare", compareHelp]]),
  synopsis: "[--url URL] [--api openai|aime] [--concurrency 1,4,16] [options]\n       chorus bench compare A.json B.json ... [--chart FILE.svg]",
  summary: "load-test an OpenAI or AIME server (tokens/s, TTFT, TPOT, ITL); compare results",
  flags: benchFlags,
  run: (argv: ReadonlyArray<string>): Effect.Effect<void, unknown> =>
    argv[0] === "compare"
      ? Effect.try({ try: () => compare(argv.slice(1)), catch: (e) => e })
      : Effect.try({ try: () => settingsFromFlags(parseFlags("bench", argv, benchFlags)), catch: (e) => e }).pipe(
        Effect.flatMap((s) => Effect.tryPromise({ try: () => bench(s), catch: (e) => e })),
        Effect.asVoid
      )
}
