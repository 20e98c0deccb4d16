/**
 * The `--json` result: every figure of every level with the settings that produced it, in snake_case like
 * `vllm bench serve --save-result`. Latencies in milliseconds, throughputs per second; a figure that does not
 * exist (TPOT of one-token answers, TTFT of a level where all failed) is null. `readResult` checks a file
 * before `compare` or a chart uses it.
 */
import { Schema } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import { ValidationError } from "../core/Errors.ts"
import type { BenchSettings } from "./BenchFlags.ts"
import type { Distribution } from "./Metrics.ts"
import type { LevelResult } from "./RunLoop.ts"

const Num = Schema.NullOr(Schema.Number)
const Dist = Schema.Struct({ mean: Num, median: Num, p90: Num, p99: Num, std: Num })

export const BenchLevel = Schema.Struct({
  concurrency: Schema.NullOr(Schema.Number),
  rate: Schema.NullOr(Schema.Number),
  requests: Schema.Number,
  completed: Schema.Number,
  failed: Schema.Number,
  failures: Schema.Record(Schema.String, Schema.Number),
  duration_s: Schema.Number,
  input_tokens: Schema.Number,
  output_tokens: Schema.Number,
  tokens_from_server: Schema.Number,
  request_throughput: Schema.Number,
  output_throughput: Schema.Number,
  total_token_throughput: Schema.Number,
  tokens_per_session: Schema.Number,
  peak_in_flight: Schema.Number,
  ttft_ms: Dist,
  tpot_ms: Dist,
  itl_ms: Dist,
  e2el_ms: Dist,
  warmup: Schema.Struct({ requests: Schema.Number, completed: Schema.Number, failed: Schema.Number, input_tokens: Schema.Number, output_tokens: Schema.Number }),
  client: Schema.Struct({ cpu_s: Schema.Number, cpu_percent: Schema.Number, event_loop_p99_ms: Schema.Number })
})
export type BenchLevel = typeof BenchLevel.Type

export const BenchResult = Schema.Struct({
  tool: Schema.Literal("chorus bench"),
  format: Schema.Literal(1),
  label: Schema.String,
  date: Schema.String,
  server: Schema.Struct({ url: Schema.String, api: Schema.String, endpoint: Schema.NullOr(Schema.String), model: Schema.NullOr(Schema.String) }),
  settings: Schema.Record(Schema.String, Schema.Unknown),
  client: Schema.Record(Schema.String, Schema.Unknown),
  levels: Schema.Array(BenchLevel)
})
export type BenchResult = typeof BenchResult.Type

const finite = (n: number): number | null => (Number.isFinite(n) ? n : null)
const dist = (d: Distribution) => ({ mean: finite(d.mean), median: finite(d.median), p90: finite(d.p90), p99: finite(d.p99), std: finite(d.std) })

export const levelRecord = (concurrency: number | undefined, rate: number | undefined, requests: number, r: LevelResult): BenchLevel => {
  const m = r.metrics
  return {
    concurrency: concurrency ?? null,
    rate: rate ?? null,
    requests,
    completed: m.completed,
    failed: m.failed,
    failures: m.failures,
    duration_s: m.durationS,
    input_tokens: m.inputTokens,
    output_tokens: m.outputTokens,
    tokens_from_server: m.tokensFromServer,
    request_throughput: m.requestThroughput,
    output_throughput: m.outputThroughput,
    total_token_throughput: m.totalTokenThroughput,
    tokens_per_session: m.tokensPerSession,
    peak_in_flight: m.peakInFlight,
    ttft_ms: dist(m.ttftMs),
    tpot_ms: dist(m.tpotMs),
    itl_ms: dist(m.itlMs),
    e2el_ms: dist(m.e2elMs),
    warmup: {
      requests: r.warmup.requests,
      completed: r.warmup.completed,
      failed: r.warmup.failed,
      input_tokens: r.warmup.inputTokens,
      output_tokens: r.warmup.outputTokens
    },
    client: { cpu_s: r.client.cpuS, cpu_percent: r.client.cpuPercent, event_loop_p99_ms: r.client.eventLoopP99Ms }
  }
}

export const resultRecord = (s: BenchSettings, label: string, model: string | undefined, levels: ReadonlyArray<BenchLevel>): BenchResult => ({
  tool: "chorus bench",
  format: 1,
  label,
  date: new Date().toISOString(),
  server: { url: s.url, api: s.api, endpoint: s.api === "aime" ? s.endpoint : null, model: model ?? null },
  settings: {
    dataset: s.dataset,
    jsonl: s.jsonl ?? null,
    input_len: s.dataset === "random" ? s.inputLen : null,
    output_len: s.outputLen,
    ignore_eos: s.ignoreEos,
    requests: s.requests ?? null,
    concurrency: s.concurrency,
    rate: s.rate ?? null,
    warmup: s.warmup ?? null,
    seed: s.seed,
    temperature: s.temperature,
    poll_interval_ms: s.api === "aime" ? s.pollIntervalMs : null,
    timeout_s: s.timeoutS,
    api_key: s.apiKey === undefined ? null : "(set)"
  },
  client: { node: process.version, platform: `${os.platform()} ${os.arch()}`, cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model ?? "unknown", hostname: os.hostname() },
  levels
})

export const writeResult = (file: string, result: BenchResult): void => {
  try {
    fs.writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`)
  } catch (e) {
    throw new ValidationError({ field: "--json", message: `cannot write ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` })
  }
}

/** Reads and checks a result file; ValidationError naming the file otherwise. */
export const readResult = (file: string): BenchResult => {
  let json: unknown
  try {
    json = JSON.parse(fs.readFileSync(file, "utf8"))
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    throw new ValidationError({ field: file, message: code === "ENOENT" ? `no such result file: ${file}` : `cannot read ${file}: ${code ?? (e instanceof Error ? e.message : String(e))}` })
  }
  try {
    return Schema.decodeUnknownSync(BenchResult)(json)
  } catch (e) {
    const first = (e instanceof Error ? e.message : String(e)).split("\n").slice(0, 2).join(" ")
    throw new ValidationError({ field: file, message: `${file} is not a chorus bench result (${first})` })
  }
}
