/**
 * Dependency-free SVG bar charts for benchmark results: grouped bars with a labelled value axis, readable in any
 * browser and in GitHub's Markdown preview. No plotting service, no fonts beyond the viewer's sans-serif.
 */

export interface BarSeries {
  readonly name: string
  readonly values: ReadonlyArray<number>
}

export interface BarChart {
  readonly title: string
  /** One label per group on the x axis (e.g. batch sizes). */
  readonly groups: ReadonlyArray<string>
  readonly xLabel: string
  readonly yLabel: string
  readonly series: ReadonlyArray<BarSeries>
}

const COLORS = ["#3b6fb6", "#e07b39", "#4a9d5b", "#9b59b6", "#c0392b", "#7f8c8d"]

const escape = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

/** A "nice" axis maximum: 1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten at or above `max`. */
const niceMax = (max: number): number => {
  if (max <= 0) return 1
  const p = 10 ** Math.floor(Math.log10(max))
  return [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * p).find((v) => v >= max)!
}

const format = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k` : v >= 10 ? v.toFixed(0) : v.toFixed(1))

export const renderBarChart = (chart: BarChart, width = 640, height = 360): string => {
  const margin = { top: 40, right: 20, bottom: 60, left: 70 }
  const plotW = width - margin.left - margin.right
  const plotH = height - margin.top - margin.bottom
  const top = niceMax(Math.max(0, ...chart.series.flatMap((s) => s.values)))
  const groupW = plotW / Math.max(1, chart.groups.length)
  const barW = (groupW * 0.8) / Math.max(1, chart.series.length)
  const y = (v: number) => margin.top + plotH - (v / top) * plotH
  const parts: Array<string> = []
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`)
  parts.push(`<rect width="${width}" height="${height}" fill="white"/>`)
  parts.push(`<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escape(chart.title)}</text>`)
  for (let i = 0; i <= 5; i++) {
    const v = (top * i) / 5
    parts.push(`<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`)
    parts.push(`<text x="${margin.left - 6}" y="${y(v) + 4}" text-anchor="end">${format(v)}</text>`)
  }
  chart.groups.forEach((g, gi) => {
    chart.series.forEach((s, si) => {
      const v = s.values[gi] ?? 0
      const x = margin.left + gi * groupW + groupW * 0.1 + si * barW
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${(margin.top + plotH - y(v)).toFixed(1)}" fill="${COLORS[si % COLORS.length]}"><title>${escape(s.name)} ${escape(g)}: ${v.toFixed(1)}</title></rect>`)
      parts.push(`<text x="${(x + barW / 2).toFixed(1)}" y="${(y(v) - 4).toFixed(1)}" text-anchor="middle" font-size="10">${format(v)}</text>`)
    })
    parts.push(`<text x="${margin.left + gi * groupW + groupW / 2}" y="${margin.top + plotH + 18}" text-anchor="middle">${escape(g)}</text>`)
  })
  parts.push(`<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${margin.top + plotH}" y2="${margin.top + plotH}" stroke="#333"/>`)
  parts.push(`<line x1="${margin.left}" x2="${margin.left}" y1="${margin.top}" y2="${margin.top + plotH}" stroke="#333"/>`)
  parts.push(`<text x="${margin.left + plotW / 2}" y="${height - 22}" text-anchor="middle">${escape(chart.xLabel)}</text>`)
  parts.push(`<text transform="translate(16 ${margin.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escape(chart.yLabel)}</text>`)
  chart.series.forEach((s, si) => {
    const x = margin.left + 10 + si * 170
    parts.push(`<rect x="${x}" y="${height - 14}" width="10" height="10" fill="${COLORS[si % COLORS.length]}"/>`)
    parts.push(`<text x="${x + 14}" y="${height - 5}">${escape(s.name)}</text>`)
  })
  parts.push("</svg>")
  return parts.join("\n")
}
