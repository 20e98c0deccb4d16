/**
 * SVG charts of bench results, readable in any browser: a sweep (total output tokens/s on the left axis and
 * tokens/s per session on the right, against the concurrency levels) and a comparison of several results
 * (side-by-side bars per level, one colour per result, like AIME's per-GPU charts), built on SvgChart's bars.
 */
import { renderBarChart } from "./SvgChart.ts"
import { levelName } from "./ConsoleReport.ts"
import type { BenchResult } from "./ResultFile.ts"

const escape = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")

const niceMax = (max: number): number => {
  if (!(max > 0)) return 1
  const p = 10 ** Math.floor(Math.log10(max))
  return [1, 2, 5, 10].map((m) => m * p).find((v) => v >= max)!
}

const short = (v: number) => (v >= 10000 ? `${(v / 1000).toFixed(0)}k` : v >= 1000 ? `${(v / 1000).toFixed(1)}k` : v >= 10 ? v.toFixed(0) : v.toFixed(1))

const xLabelOf = (r: BenchResult) => (r.levels.some((l) => l.rate !== null) ? "request rate (Poisson arrivals)" : "concurrent sessions")

const TOTAL = "#3b6fb6"
const SINGLE = "#e07b39"

/** Total and per-session output tokens/s of one result's levels, two y axes. */
export const renderSweepChart = (r: BenchResult, width = 720, height = 400): string => {
  const m = { top: 48, right: 80, bottom: 64, left: 80 }
  const w = width - m.left - m.right
  const h = height - m.top - m.bottom
  const levels = r.levels
  const totals = levels.map((l) => l.output_throughput)
  const singles = levels.map((l) => l.tokens_per_session)
  const topL = niceMax(Math.max(0, ...totals))
  const topR = niceMax(Math.max(0, ...singles))
  const x = (i: number) => m.left + (levels.length === 1 ? w / 2 : (i * w) / (levels.length - 1))
  const yL = (v: number) => m.top + h - (v / topL) * h
  const yR = (v: number) => m.top + h - (v / topR) * h
  const p: Array<string> = []
  p.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`)
  p.push(`<rect width="${width}" height="${height}" fill="white"/>`)
  p.push(`<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escape(`chorus bench: ${r.label}`)}</text>`)
  p.push(`<text x="${width / 2}" y="38" text-anchor="middle" font-size="11" fill="#555">${escape(`${r.server.api} ${r.server.url} · ${r.server.model ?? "unknown model"} · ${String(r.settings["dataset"])} prompts, ${String(r.settings["output_len"])} output tokens`)}</text>`)
  for (let i = 0; i <= 5; i++) {
    const y = m.top + h - (i * h) / 5
    p.push(`<line x1="${m.left}" x2="${m.left + w}" y1="${y}" y2="${y}" stroke="#e4e4e4"/>`)
    p.push(`<text x="${m.left - 6}" y="${y + 4}" text-anchor="end" fill="${TOTAL}">${short((topL * i) / 5)}</text>`)
    p.push(`<text x="${m.left + w + 6}" y="${y + 4}" text-anchor="start" fill="${SINGLE}">${short((topR * i) / 5)}</text>`)
  }
  p.push(`<line x1="${m.left}" x2="${m.left + w}" y1="${m.top + h}" y2="${m.top + h}" stroke="#333"/>`)
  p.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + h}" stroke="#333"/>`)
  p.push(`<line x1="${m.left + w}" x2="${m.left + w}" y1="${m.top}" y2="${m.top + h}" stroke="#333"/>`)
  const series = (values: ReadonlyArray<number>, y: (v: number) => number, color: string, name: string) => {
    p.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}"/>`)
    values.forEach((v, i) => {
      p.push(`<circle cx="${x(i).toFixed(1)}" cy="${y(v).toFixed(1)}" r="4" fill="${color}"><title>${escape(`${name}, ${levelName(levels[i]!)}: ${v.toFixed(1)}`)}</title></circle>`)
      p.push(`<text x="${x(i).toFixed(1)}" y="${(y(v) - 8).toFixed(1)}" text-anchor="middle" font-size="10" fill="${color}">${short(v)}</text>`)
    })
  }
  series(totals, yL, TOTAL, "total output tokens/s")
  series(singles, yR, SINGLE, "tokens/s per session")
  levels.forEach((l, i) => {
    p.push(`<text x="${x(i).toFixed(1)}" y="${m.top + h + 18}" text-anchor="middle">${escape(l.rate !== null ? `${l.rate}/s` : String(l.concurrency))}</text>`)
  })
  p.push(`<text x="${m.left + w / 2}" y="${m.top + h + 38}" text-anchor="middle">${escape(xLabelOf(r))}</text>`)
  p.push(`<text transform="translate(20 ${m.top + h / 2}) rotate(-90)" text-anchor="middle" fill="${TOTAL}">total output tokens/s</text>`)
  p.push(`<text transform="translate(${width - 16} ${m.top + h / 2}) rotate(90)" text-anchor="middle" fill="${SINGLE}">tokens/s per session</text>`)
  p.push(`<rect x="${m.left}" y="${height - 16}" width="10" height="10" fill="${TOTAL}"/><text x="${m.left + 14}" y="${height - 7}">total output tokens/s (left axis)</text>`)
  p.push(`<rect x="${m.left + 260}" y="${height - 16}" width="10" height="10" fill="${SINGLE}"/><text x="${m.left + 274}" y="${height - 7}">tokens/s per session (right axis)</text>`)
  p.push("</svg>")
  return p.join("\n")
}

/** Several results side by side: total output tokens/s (top) and tokens/s per session (bottom) per level. */
export const renderCompareChart = (results: ReadonlyArray<BenchResult>, width = 720): string => {
  const groups = [...new Set(results.flatMap((r) => r.levels.map(levelName)))]
  const values = (r: BenchResult, pick: "output_throughput" | "tokens_per_session") =>
    groups.map((g) => r.levels.find((l) => levelName(l) === g)?.[pick] ?? 0)
  const xLabel = results.some((r) => r.levels.some((l) => l.rate !== null)) ? "load level" : "concurrent sessions"
  const panel = (title: string, yLabel: string, pick: "output_throughput" | "tokens_per_session") =>
    renderBarChart({
      title,
      groups: groups.map((g) => g.replace(/^concurrency /, "")),
      xLabel,
      yLabel,
      series: results.map((r) => ({ name: r.label, values: values(r, pick) }))
    }, width, 360)
  const top = panel("chorus bench: total output tokens/s", "total output tokens/s", "output_throughput")
  const bottom = panel("chorus bench: tokens/s per session", "tokens/s per session", "tokens_per_session")
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="720" viewBox="0 0 ${width} 720">`,
    `<g>${top}</g>`,
    `<g transform="translate(0 360)">${bottom}</g>`,
    "</svg>"
  ].join("\n")
}
