/**
 * `chorus bench compare A.json B.json ...`: the main figures of each result side by side, per load level, with
 * each result's ratio to the first (the baseline). Throughput ratios above 1 and latency ratios below 1 mean
 * faster than the baseline. Levels are matched by name (`concurrency 16`, `rate 4/s`).
 */
import { levelName } from "./ConsoleReport.ts"
import type { BenchLevel, BenchResult } from "./ResultFile.ts"

interface Figure {
  readonly name: string
  readonly pick: (l: BenchLevel) => number | null
}

export const FIGURES: ReadonlyArray<Figure> = [
  { name: "requests/s", pick: (l) => l.request_throughput },
  { name: "output tokens/s", pick: (l) => l.output_throughput },
  { name: "total tokens/s", pick: (l) => l.total_token_throughput },
  { name: "tokens/s per session", pick: (l) => l.tokens_per_session },
  { name: "TTFT median (ms)", pick: (l) => l.ttft_ms.median },
  { name: "TTFT p99 (ms)", pick: (l) => l.ttft_ms.p99 },
  { name: "TPOT median (ms)", pick: (l) => l.tpot_ms.median },
  { name: "ITL median (ms)", pick: (l) => l.itl_ms.median },
  { name: "E2EL median (ms)", pick: (l) => l.e2el_ms.median },
  { name: "failed requests", pick: (l) => l.failed }
]

/** value / baseline, or null when either is missing or the baseline is 0. */
export const ratio = (value: number | null, baseline: number | null): number | null =>
  value === null || baseline === null || baseline === 0 ? null : value / baseline

const num = (v: number | null) => (v === null ? "-" : Number.isInteger(v) || Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2))

export const renderCompare = (results: ReadonlyArray<BenchResult>): string => {
  const [base] = results
  if (base === undefined) return ""
  const labels = results.map((r, i) => `${String.fromCharCode(65 + (i % 26))}: ${r.label}`)
  const width = Math.max(...FIGURES.map((f) => f.name.length)) + 2
  const col = 12
  const head = results.map((_, i) => String.fromCharCode(65 + (i % 26)).padStart(col)).join("") +
    results.slice(1).map((_, i) => `${String.fromCharCode(66 + (i % 26))}/A`.padStart(col)).join("")
  const lines = [...labels, ""]
  const names = [...new Set(results.flatMap((r) => r.levels.map(levelName)))]
  for (const name of names) {
    const levels = results.map((r) => r.levels.find((l) => levelName(l) === name))
    lines.push(`${name.padEnd(width)}${head}`)
    for (const f of FIGURES) {
      const values = levels.map((l) => (l === undefined ? null : f.pick(l)))
      const ratios = values.slice(1).map((v) => ratio(v, values[0] ?? null))
      lines.push(`  ${f.name.padEnd(width - 2)}${values.map((v) => num(v).padStart(col)).join("")}${ratios.map((q) => (q === null ? "-" : `${q.toFixed(2)}x`).padStart(col)).join("")}`)
    }
    lines.push("")
  }
  return lines.join("\n")
}
