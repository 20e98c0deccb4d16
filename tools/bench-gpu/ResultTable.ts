/**
 * The GPU benchmark's results: the shapes of the PyTorch and Chorus result files, and the one markdown table that
 * puts each row's Chorus, PyTorch (eager and CUDA graphs) and roofline numbers side by side.
 *
 * Ratios are speed ratios (above 1: Chorus is faster). Against PyTorch the ratio uses the faster of eager and
 * graphs, the stronger baseline. For time to first token, a time, the ratios are inverted (other time / Chorus time).
 */
import { decodeRoofline, type ModelShape, prefillRooflineMs, weightBytesPerStep } from "./Roofline.ts"

/** A measurement that failed carries its error instead. */
export interface Failed {
  readonly error: string
}

export interface DecodeStats {
  readonly tokensPerSecond: number
  readonly itlMeanMs?: number
  readonly itlP50Ms?: number
  readonly itlP99Ms?: number
  readonly prefillMs?: number
}

/** torch_baseline.py's output (only the fields read here). */
export interface TorchResults {
  readonly device: string
  readonly torch: string
  readonly dtype: string
  readonly date: string
  readonly implementation: string
  readonly copyBandwidth?: { readonly bytesPerSecond: number } | Failed
  readonly matmul?: { readonly flopsPerSecond: number } | Failed
  readonly weightBytes?: number
  readonly singleStream?: { readonly context: number; readonly eager: DecodeStats | Failed; readonly graphs?: DecodeStats | Failed }
  readonly batches: ReadonlyArray<{ readonly batch: number; readonly prefillMs?: number; readonly eager?: DecodeStats | Failed; readonly graphs?: DecodeStats | Failed } | (Failed & { readonly batch: number })>
  readonly ttft?: { readonly eager: { readonly promptLen: number; readonly medianMs: number } | Failed }
}

/** ChorusBench's output. */
export interface ChorusResults {
  readonly device: string
  readonly model: string
  readonly dtype: string
  /** Weight quantization (`describeQuant`), absent for float weights. */
  readonly quantize?: string
  /** Chorus's kernel choices on CUDA (`--decode-attention`, `--linear-kernels` and what `auto` found), absent on the CPU. */
  readonly kernels?: string
  readonly loadSeconds: number
  readonly singleStream?: (DecodeStats & { readonly context: number }) | Failed
  readonly batches: ReadonlyArray<
    | {
      readonly batch: number
      readonly tokensPerSecond: number
      readonly overallTokensPerSecond: number
      readonly prefillMs: number
      readonly steadyTokens: number
    }
    | (Failed & { readonly batch: number })
  >
  readonly ttft?: { readonly promptLen: number; readonly medianMs: number; readonly samplesMs?: ReadonlyArray<number> } | Failed
}

export interface Workloads {
  readonly context: number
  readonly decodeSteps: number
  readonly promptLen: number
  readonly genLen: number
  readonly batches: ReadonlyArray<number>
}

export interface Row {
  readonly label: string
  readonly unit: "tok/s" | "ms"
  readonly chorus?: number | undefined
  readonly torchEager?: number | undefined
  readonly torchGraphs?: number | undefined
  readonly roofline?: number | undefined
  /** Speed ratio against the faster PyTorch number. */
  readonly chorusVsTorch?: number | undefined
  /** Fraction of the roofline speed reached. */
  readonly chorusVsRoofline?: number | undefined
}

const ok = <T extends object>(x: T | Failed | undefined): T | undefined =>
  x === undefined || "error" in x ? undefined : (x as T)

/** Speed ratio a / b for rates, b / a for times; undefined when either is missing. */
const speedRatio = (unit: Row["unit"], chorus: number | undefined, other: number | undefined): number | undefined =>
  chorus === undefined || other === undefined || !(chorus > 0) || !(other > 0) ? undefined : unit === "tok/s" ? chorus / other : other / chorus

const best = (unit: Row["unit"], a: number | undefined, b: number | undefined): number | undefined => {
  const xs = [a, b].filter((x): x is number => x !== undefined)
  if (xs.length === 0) return undefined
  return unit === "tok/s" ? Math.max(...xs) : Math.min(...xs)
}

const row = (label: string, unit: Row["unit"], chorus?: number, torchEager?: number, torchGraphs?: number, roofline?: number): Row => ({
  label,
  unit,
  chorus,
  torchEager,
  torchGraphs,
  roofline,
  chorusVsTorch: speedRatio(unit, chorus, best(unit, torchEager, torchGraphs)),
  chorusVsRoofline: speedRatio(unit, chorus, roofline)
})

export interface Ceilings {
  readonly bandwidthBytesPerSecond?: number | undefined
  readonly flopsPerSecond?: number | undefined
}

/** The measured ceilings in a PyTorch result file, when it has them. */
export const ceilingsOf = (torch: TorchResults | undefined): Ceilings => ({
  bandwidthBytesPerSecond: ok(torch?.copyBandwidth)?.bytesPerSecond,
  flopsPerSecond: ok(torch?.matmul)?.flopsPerSecond
})

/** Every row of the table: single stream, each concurrency, time to first token. */
export const buildRows = (
  w: Workloads,
  shape: ModelShape | undefined,
  ceilings: Ceilings,
  chorus: ChorusResults | undefined,
  torch: TorchResults | undefined
): Array<Row> => {
  const bw = ceilings.bandwidthBytesPerSecond
  const decodeFloor = (batch: number, startPosition: number, steps: number) =>
    shape === undefined || bw === undefined ? undefined : decodeRoofline(shape, { batch, startPosition, steps }, bw).tokensPerSecond
  const rows: Array<Row> = []
  rows.push(row(
    `single stream, ${w.context}-token context`,
    "tok/s",
    ok(chorus?.singleStream)?.tokensPerSecond,
    ok(torch?.singleStream?.eager)?.tokensPerSecond,
    ok(torch?.singleStream?.graphs)?.tokensPerSecond,
    decodeFloor(1, w.context, w.decodeSteps)
  ))
  for (const batch of w.batches) {
    const c = ok(chorus?.batches.find((r) => r.batch === batch))
    const t = torch?.batches.find((r) => r.batch === batch)
    const tr = t === undefined || "error" in t ? undefined : t
    rows.push(row(
      `${batch} concurrent, ${w.promptLen}+${w.genLen} tokens`,
      "tok/s",
      c !== undefined && "tokensPerSecond" in c ? c.tokensPerSecond : undefined,
      ok(tr?.eager)?.tokensPerSecond,
      ok(tr?.graphs)?.tokensPerSecond,
      decodeFloor(batch, w.promptLen, w.genLen - 1)
    ))
  }
  rows.push(row(
    `time to first token, ${w.promptLen}-token prompt`,
    "ms",
    ok(chorus?.ttft)?.medianMs,
    ok(torch?.ttft?.eager)?.medianMs,
    undefined,
    shape === undefined || bw === undefined || ceilings.flopsPerSecond === undefined
      ? undefined
      : prefillRooflineMs(shape, w.promptLen, bw, ceilings.flopsPerSecond)
  ))
  return rows
}

/** A number for a table cell: 3 significant digits at most, thousands without decimals; a dash when missing. */
export const formatNumber = (x: number | undefined): string => {
  if (x === undefined || !Number.isFinite(x)) return "–"
  const abs = Math.abs(x)
  if (abs >= 100) return Math.round(x).toLocaleString("en-US")
  if (abs >= 10) return x.toFixed(1)
  return x.toFixed(2)
}

const formatRatio = (x: number | undefined, percent: boolean): string =>
  x === undefined || !Number.isFinite(x) ? "–" : percent ? `${(100 * x).toFixed(0)}%` : `${x.toFixed(2)}x`

export interface TableHeader {
  readonly card: string
  readonly date: string
}

/** The markdown table, one row per workload, with a one-line heading naming the card and the date. */
export const renderTable = (header: TableHeader, rows: ReadonlyArray<Row>): string => {
  const lines = [
    `**${header.card}**, ${header.date}`,
    "",
    "| workload | unit | Chorus | PyTorch eager | PyTorch CUDA graphs | roofline | Chorus / PyTorch | Chorus / roofline |",
    "|---|---|--:|--:|--:|--:|--:|--:|"
  ]
  for (const r of rows) {
    lines.push(
      `| ${r.label} | ${r.unit} | ${formatNumber(r.chorus)} | ${formatNumber(r.torchEager)} | ${formatNumber(r.torchGraphs)} | ${formatNumber(r.roofline)} | ${
        formatRatio(r.chorusVsTorch, false)
      } | ${formatRatio(r.chorusVsRoofline, true)} |`
    )
  }
  return lines.join("\n") + "\n"
}

/** How one stage of the run ended. */
export interface StageStatus {
  readonly name: string
  readonly ok: boolean
  readonly detail: string
  readonly seconds: number
}

/** Everything `bench-gpu.json` holds. */
export interface GpuBenchReport {
  readonly card: string
  readonly date: string
  readonly checkpoint: string
  readonly workloads: Workloads
  readonly shape?: ModelShape | undefined
  readonly ceilings: Ceilings
  readonly rows: ReadonlyArray<Row>
  readonly stages: ReadonlyArray<StageStatus>
  readonly torch?: TorchResults | undefined
  readonly chorus?: ChorusResults | undefined
  /** Chorus runs with 4-bit weights (single stream and `quantBatch` sequences), against `chorus`'s float rows. */
  readonly quantized?: ReadonlyArray<ChorusResults> | undefined
  readonly quantBatch?: number | undefined
}

const errorsOf = (name: string, value: unknown, out: Array<string>): void => {
  if (value === null || typeof value !== "object") return
  if ("error" in value && typeof value.error === "string") {
    out.push(`${name}: ${value.error}`)
    return
  }
  for (const [k, v] of Object.entries(value)) {
    const label = Array.isArray(value) && v !== null && typeof v === "object" && "batch" in v ? `${name} batch ${String(v.batch)}` : `${name} ${k}`
    errorsOf(label, v, out)
  }
}

const ms = (x: number | undefined) => (x === undefined ? "–" : `${formatNumber(x)} ms`)

/** `bench-gpu.md`: the table, then what each column is, the latencies behind the rates, and every failure. */
export const renderReport = (r: GpuBenchReport): string => {
  const notes: Array<string> = []
  const bw = r.ceilings.bandwidthBytesPerSecond
  const fl = r.ceilings.flopsPerSecond
  notes.push(
    `- Chorus: ${r.chorus === undefined ? "not run" : `${r.chorus.device}, ${r.chorus.dtype}${r.chorus.kernels === undefined ? "" : `, ${r.chorus.kernels}`}, engine API, greedy, ignoreEos, timed from token events`}.`
  )
  notes.push(`- PyTorch: ${r.torch === undefined ? "not run" : `${r.torch.implementation}; torch ${r.torch.torch}`}. Eager: Python issues each kernel; CUDA graphs: the decode step captured once and replayed (the whole static cache attended with a mask).`)
  notes.push(
    `- Roofline: (weights streamed per step${
      r.shape === undefined ? "" : `, ${(weightBytesPerStep(r.shape, 1) / 1e9).toFixed(2)} GB`
    } + KV bytes of every cached position) / copy bandwidth${bw === undefined ? " (not measured)" : ` ${(bw / 1e12).toFixed(2)} TB/s`}, ` +
      `the device-to-device copy rate counting bytes read + written. Time to first token: max(weight read, prefill FLOPs / matmul rate${
        fl === undefined ? " (not measured)" : ` ${(fl / 1e12).toFixed(0)} TFLOP/s`
      }).`
  )
  notes.push(`- Ratios are speed ratios against the faster PyTorch column (above 1x: Chorus faster); for time to first token, times are inverted.`)
  const cs = r.chorus?.singleStream
  const ts = r.torch?.singleStream
  const itl = (x: DecodeStats | Failed | undefined) => {
    const s = x === undefined || "error" in x ? undefined : x
    return s === undefined ? "–" : `mean ${ms(s.itlMeanMs)}, p50 ${ms(s.itlP50Ms)}, p99 ${ms(s.itlP99Ms)}`
  }
  notes.push(`- Single-stream inter-token latency: Chorus ${itl(cs)}; PyTorch eager ${itl(ts?.eager)}; graphs ${itl(ts?.graphs)}.`)
  const prefills = r.workloads.batches.map((b) => {
    const c = r.chorus?.batches.find((x) => x.batch === b)
    const t = r.torch?.batches.find((x) => x.batch === b)
    return `${b}: Chorus ${ms(c !== undefined && "prefillMs" in c ? c.prefillMs : undefined)}, PyTorch ${ms(t !== undefined && "prefillMs" in t ? t.prefillMs : undefined)}`
  })
  notes.push(`- Prefill of all prompts per concurrency: ${prefills.join("; ")}.`)
  const errors: Array<string> = []
  errorsOf("PyTorch", r.torch, errors)
  errorsOf("Chorus", r.chorus, errors)
  for (const s of r.stages) if (!s.ok) errors.push(`stage ${s.name}: ${s.detail}`)
  if (errors.length > 0) notes.push(`- Failed: ${errors.join("; ")}.`)
  const quant = r.quantized === undefined || r.quantized.length === 0 ? "" : `\n${renderQuantTable(r.chorus, r.quantized, r.quantBatch ?? 64)}`
  return `${renderTable({ card: r.card, date: r.date }, r.rows)}\n${notes.join("\n")}\n${quant}`
}

/**
 * Decode tok/s of float and 4-bit weights side by side: single stream and `batch` concurrent sequences, with the
 * speed-up over the float run (issue 12's targets: >= 2x single stream, >= 1.5x at 64 sequences).
 */
export const renderQuantTable = (float: ChorusResults | undefined, quantized: ReadonlyArray<ChorusResults>, batch: number): string => {
  const single = (c: ChorusResults | undefined) => (c?.singleStream === undefined || "error" in c.singleStream ? undefined : c.singleStream.tokensPerSecond)
  const many = (c: ChorusResults | undefined) => {
    const row = c?.batches.find((b) => b.batch === batch)
    return row === undefined || "error" in row ? undefined : row.tokensPerSecond
  }
  const tps = (x: number | undefined) => (x === undefined ? "–" : x.toFixed(0))
  const ratio = (x: number | undefined, base: number | undefined) => (x === undefined || base === undefined ? "–" : `${(x / base).toFixed(2)}x`)
  const lines = [
    `| weights | load s | single stream tok/s | x float | ${batch} sequences tok/s | x float |`,
    "|---|--:|--:|--:|--:|--:|",
    ...[float, ...quantized].filter((c): c is ChorusResults => c !== undefined).map((c) =>
      `| ${c.dtype}${c.quantize === undefined ? "" : `, ${c.quantize}`} | ${c.loadSeconds.toFixed(0)} | ${tps(single(c))} | ${ratio(single(c), single(float))} | ${tps(many(c))} | ${ratio(many(c), many(float))} |`
    )
  ]
  return `${lines.join("\n")}\n`
}

