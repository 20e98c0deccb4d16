/**
 * What `chorus bench` shows on the terminal: a progress bar on stderr while a level runs (only on a TTY, so pipes
 * and logs stay clean) and, at the end, one table on stdout with a column per level and the failure reasons below.
 */
import type { WriteStream } from "node:tty"
import type { BenchLevel, BenchResult } from "./ResultFile.ts"
import type { LiveProgress } from "./RunLoop.ts"

const fmt = (v: number | null, digits: number): string => (v === null || !Number.isFinite(v) ? "-" : v.toFixed(digits))

type Row = readonly [label: string, value: (l: BenchLevel) => string]

const latencyRows = (name: string, key: "ttft_ms" | "tpot_ms" | "itl_ms" | "e2el_ms"): Array<Row> =>
  (["mean", "median", "p90", "p99"] as const).map((stat) => [`${name} ${stat} (ms)`, (l: BenchLevel) => fmt(l[key][stat], 2)] as const)

const ROWS: ReadonlyArray<Row> = [
  ["successful requests", (l) => String(l.completed)],
  ["failed requests", (l) => String(l.failed)],
  ["duration (s)", (l) => fmt(l.duration_s, 2)],
  ["input tokens", (l) => String(l.input_tokens)],
  ["output tokens", (l) => String(l.output_tokens)],
  ["requests/s", (l) => fmt(l.request_throughput, 2)],
  ["output tokens/s", (l) => fmt(l.output_throughput, 1)],
  ["total tokens/s", (l) => fmt(l.total_token_throughput, 1)],
  ["tokens/s per session", (l) => fmt(l.tokens_per_session, 1)],
  ["peak in flight", (l) => String(l.peak_in_flight)],
  ...latencyRows("TTFT", "ttft_ms"),
  ...latencyRows("TPOT", "tpot_ms"),
  ...latencyRows("ITL", "itl_ms"),
  ...latencyRows("E2EL", "e2el_ms"),
  ["client CPU (% of a core)", (l) => fmt(l.client.cpu_percent, 0)],
  ["client event-loop p99 (ms)", (l) => fmt(l.client.event_loop_p99_ms, 1)]
]

export const levelName = (l: BenchLevel): string =>
  l.rate !== null ? `rate ${l.rate}/s${l.concurrency === null ? "" : ` max ${l.concurrency}`}` : `concurrency ${l.concurrency}`

/** The final report: header, one column per level, then failure reasons and token provenance. */
export const renderTable = (r: BenchResult): string => {
  const headers = r.levels.map(levelName)
  const width = Math.max(...ROWS.map(([label]) => label.length)) + 2
  const col = Math.max(12, ...headers.map((h) => h.length + 2))
  const title = ` chorus bench: ${r.label} `
  const rule = "=".repeat(width + col * r.levels.length)
  const pad = Math.max(0, rule.length - title.length)
  const lines = [
    `${"=".repeat(Math.floor(pad / 2))}${title}${"=".repeat(Math.ceil(pad / 2))}`,
    `server: ${r.server.url} (${r.server.api}${r.server.endpoint === null ? "" : ` /${r.server.endpoint}`}), model: ${r.server.model ?? "unknown"}`,
    `prompts: ${String(r.settings["dataset"])}${r.settings["input_len"] === null ? "" : `, ${String(r.settings["input_len"])} words`}, up to ${String(r.settings["output_len"])} output tokens${r.settings["ignore_eos"] === true ? " (ignore EOS)" : ""}`,
    rule,
    `${"".padEnd(width)}${headers.map((h) => h.padStart(col)).join("")}`,
    ...ROWS.map(([label, value]) => `${label.padEnd(width)}${r.levels.map((l) => value(l).padStart(col)).join("")}`),
    rule
  ]
  for (const l of r.levels) {
    for (const [reason, count] of Object.entries(l.failures)) lines.push(`failed (${levelName(l)}): ${count} x ${reason}`)
    if (l.completed > 0 && l.tokens_from_server < l.completed) {
      lines.push(`note (${levelName(l)}): ${l.completed - l.tokens_from_server} of ${l.completed} requests had no server usage; output tokens counted from the stream, input tokens unknown`)
    }
  }
  return `${lines.join("\n")}\n`
}

/** One line: `concurrency 16 [#####-----] 40/64  2 failed  16 in flight  1234 tok/s`. */
export const renderProgress = (name: string, p: LiveProgress, columns = 80): string => {
  const ratio = p.total > 0 ? Math.min(1, p.done / p.total) : 1
  const rate = p.elapsedMs > 0 ? (p.outputTokens * 1000) / p.elapsedMs : 0
  const stats = ` ${p.done}/${p.total}${p.failed > 0 ? ` ${p.failed} failed` : ""} ${p.inFlight} in flight ${rate.toFixed(0)} tok/s`
  const label = `${name}${p.warmup ? " warm-up" : ""}`
  const width = Math.max(10, Math.min(30, columns - label.length - stats.length - 4))
  const filled = Math.round(ratio * width)
  return `${label} [${"#".repeat(filled)}${"-".repeat(width - filled)}]${stats}`
}

export class LiveBar {
  private drawn = false
  private readonly stream: NodeJS.WriteStream

  constructor(stream: NodeJS.WriteStream = process.stderr) {
    this.stream = stream
  }

  update(name: string, p: LiveProgress): void {
    if (this.stream.isTTY !== true) return
    this.stream.write(`\r\x1b[2K${renderProgress(name, p, (this.stream as WriteStream).columns ?? 80)}`)
    this.drawn = true
  }

  done(): void {
    if (this.drawn) this.stream.write("\r\x1b[2K")
    this.drawn = false
  }
}
