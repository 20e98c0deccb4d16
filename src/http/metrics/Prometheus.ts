/**
 * A minimal Prometheus metrics registry: counters, gauges (set or read from a callback at scrape time) and
 * histograms, rendered in the text exposition format 0.0.4. No dependencies.
 *
 * The engine records per-token latencies at tens of thousands of tokens/s, so the label-less paths
 * (`inc(n)`, `set(v)`, `observe(v)`) touch only preallocated numbers: no allocation, and a histogram
 * observation is a binary search over its bucket bounds. Labelled calls look the series up by a key built
 * from the label values; hot labelled paths should keep the handle from `child(labels)` instead.
 *
 * Misuse (bad names, wrong label sets, decreasing a counter) is a programming error and throws.
 *
 * @since 0.1.0
 */

/** Label name -> value for one series. Keys must be exactly the metric's label names. */
export type Labels = Readonly<Record<string, string>>

/** The `Content-Type` of `Registry.render()`'s output. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/

/** Prometheus renders floats the way Go parses them: `+Inf`, `-Inf`, `NaN`; JS `String` is fine otherwise. */
export const formatValue = (v: number): string =>
  v === Infinity ? "+Inf" : v === -Infinity ? "-Inf" : Number.isNaN(v) ? "NaN" : String(v)

/** Label values escape `\`, `"` and newline. */
export const escapeLabelValue = (s: string): string =>
  s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")

/** HELP text escapes `\` and newline (quotes stay as they are). */
const escapeHelp = (s: string): string => s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")

const checkName = (name: string, labelNames: ReadonlyArray<string>, reserved: ReadonlyArray<string>): void => {
  if (!METRIC_NAME.test(name)) throw new Error(`metric name ${JSON.stringify(name)}: expected [a-zA-Z_:][a-zA-Z0-9_:]*`)
  const seen = new Set<string>()
  for (const l of labelNames) {
    if (!LABEL_NAME.test(l) || l.startsWith("__") || reserved.includes(l)) {
      throw new Error(`metric ${name}: label name ${JSON.stringify(l)} is invalid or reserved`)
    }
    if (seen.has(l)) throw new Error(`metric ${name}: label name ${JSON.stringify(l)} appears twice`)
    seen.add(l)
  }
}

interface Metric {
  readonly name: string
  render(out: Array<string>): void
}

/** Series lookup shared by the three metric kinds: one series per distinct label-value tuple, in first-use order. */
abstract class Family<S> implements Metric {
  readonly name: string
  readonly help: string
  readonly labelNames: ReadonlyArray<string>
  abstract readonly type: "counter" | "gauge" | "histogram"
  protected readonly series = new Map<string, { readonly labelText: string; readonly s: S }>()
  /** The only series of a label-less metric; created up front so it renders as 0 before first use. */
  protected readonly unlabelled: S | undefined
  private readonly make: () => S

  constructor(name: string, help: string, labelNames: ReadonlyArray<string>, make: () => S) {
    this.name = name
    this.help = help
    this.labelNames = [...labelNames]
    this.make = make
    if (labelNames.length === 0) {
      this.unlabelled = make()
      this.series.set("", { labelText: "", s: this.unlabelled })
    } else {
      this.unlabelled = undefined
    }
  }

  /** The series for these labels (created on first use); keep it for hot labelled paths. */
  child(labels: Labels): S {
    const names = this.labelNames
    if (names.length === 0 && this.unlabelled !== undefined) {
      for (const _ in labels) throw this.labelError(labels)
      return this.unlabelled
    }
    let count = 0
    for (const _ in labels) count++
    if (count !== names.length) throw this.labelError(labels)
    let key: string
    if (names.length === 1) {
      const v = labels[names[0]]
      if (typeof v !== "string") throw this.labelError(labels)
      key = v
    } else {
      const values = names.map((n) => labels[n])
      if (values.some((v) => typeof v !== "string")) throw this.labelError(labels)
      // JSON keeps ("a,b", "c") apart from ("a", "b,c")
      key = JSON.stringify(values)
    }
    const found = this.series.get(key)
    if (found !== undefined) return found.s
    const labelText = names.map((n) => `${n}="${escapeLabelValue(labels[n])}"`).join(",")
    const s = this.make()
    this.series.set(key, { labelText, s })
    return s
  }

  protected only(): S {
    if (this.unlabelled === undefined) {
      throw new Error(`metric ${this.name}: labels {${this.labelNames.join(", ")}} are required`)
    }
    return this.unlabelled
  }

  private labelError(labels: Labels): Error {
    return new Error(
      `metric ${this.name}: expected labels {${this.labelNames.join(", ")}}, found {${Object.keys(labels).join(", ")}}`
    )
  }

  render(out: Array<string>): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`)
    for (const { labelText, s } of this.series.values()) this.renderSeries(out, labelText, s)
  }

  protected abstract renderSeries(out: Array<string>, labelText: string, s: S): void
}

const braced = (labelText: string): string => (labelText === "" ? "" : `{${labelText}}`)

/** One counter series. */
export class CounterChild {
  value = 0
  /** Adds `n` (default 1); `n` must be >= 0. */
  inc(n = 1): void {
    if (!(n >= 0)) throw new Error(`counter increment: expected a number >= 0, found ${n}`)
    this.value += n
  }
}

/** A monotonically increasing total. */
export class Counter extends Family<CounterChild> {
  readonly type = "counter"
  constructor(name: string, help: string, labelNames: ReadonlyArray<string> = []) {
    checkName(name, labelNames, [])
    super(name, help, labelNames, () => new CounterChild())
  }
  inc(n?: number): void
  inc(labels: Labels, n?: number): void
  inc(a?: Labels | number, n = 1): void {
    if (a === undefined || typeof a === "number") this.only().inc(a ?? 1)
    else this.child(a).inc(n)
  }
  /** Current value (0 for a series never touched). */
  get(labels?: Labels): number {
    return labels === undefined ? this.only().value : this.child(labels).value
  }
  protected renderSeries(out: Array<string>, labelText: string, s: CounterChild): void {
    out.push(`${this.name}${braced(labelText)} ${formatValue(s.value)}`)
  }
}

/** One gauge series. */
export class GaugeChild {
  value = 0
  set(v: number): void {
    this.value = v
  }
  inc(n = 1): void {
    this.value += n
  }
  dec(n = 1): void {
    this.value -= n
  }
}

/** A value that goes up and down, set by the caller. */
export class Gauge extends Family<GaugeChild> {
  readonly type = "gauge"
  constructor(name: string, help: string, labelNames: ReadonlyArray<string> = []) {
    checkName(name, labelNames, [])
    super(name, help, labelNames, () => new GaugeChild())
  }
  set(v: number): void
  set(labels: Labels, v: number): void
  set(a: Labels | number, v?: number): void {
    if (typeof a === "number") this.only().set(a)
    else this.child(a).set(v ?? Number.NaN)
  }
  inc(n?: number): void
  inc(labels: Labels, n?: number): void
  inc(a?: Labels | number, n = 1): void {
    if (a === undefined || typeof a === "number") this.only().inc(a ?? 1)
    else this.child(a).inc(n)
  }
  dec(n?: number): void
  dec(labels: Labels, n?: number): void
  dec(a?: Labels | number, n = 1): void {
    if (a === undefined || typeof a === "number") this.only().dec(a ?? 1)
    else this.child(a).dec(n)
  }
  get(labels?: Labels): number {
    return labels === undefined ? this.only().value : this.child(labels).value
  }
  protected renderSeries(out: Array<string>, labelText: string, s: GaugeChild): void {
    out.push(`${this.name}${braced(labelText)} ${formatValue(s.value)}`)
  }
}

/**
 * One series whose value is read from `read` at every scrape, with fixed labels (such as the served model's name);
 * a gauge, or a counter for totals kept elsewhere (CPU seconds). A throwing callback renders NaN.
 */
export class CallbackGauge implements Metric {
  readonly name: string
  readonly help: string
  readonly type: "gauge" | "counter"
  private readonly labelText: string
  private readonly read: () => number
  constructor(name: string, help: string, read: () => number, labels: Labels = {}, type: "gauge" | "counter" = "gauge") {
    const names = Object.keys(labels)
    checkName(name, names, [])
    this.name = name
    this.help = help
    this.read = read
    this.type = type
    this.labelText = names.map((n) => `${n}="${escapeLabelValue(labels[n])}"`).join(",")
  }
  get(): number {
    try {
      return this.read()
    } catch {
      // a scrape must not fail because one source is broken; NaN is Prometheus's "unknown"
      return Number.NaN
    }
  }
  render(out: Array<string>): void {
    out.push(
      `# HELP ${this.name} ${escapeHelp(this.help)}`,
      `# TYPE ${this.name} ${this.type}`,
      `${this.name}${braced(this.labelText)} ${formatValue(this.get())}`
    )
  }
}

/** One histogram series: per-bucket (not cumulative) counts, the last slot being +Inf. */
export class HistogramChild {
  readonly bounds: Float64Array
  readonly counts: Float64Array
  sum = 0
  count = 0
  constructor(bounds: Float64Array) {
    this.bounds = bounds
    this.counts = new Float64Array(bounds.length + 1)
  }
  /** Records `v`; NaN is dropped (it would poison `_sum` forever). */
  observe(v: number): void {
    if (v !== v) return
    // first bound >= v (Prometheus buckets are `le`, upper-inclusive); bounds.length means +Inf
    const b = this.bounds
    let lo = 0
    let hi = b.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (b[mid] < v) lo = mid + 1
      else hi = mid
    }
    this.counts[lo]++
    this.sum += v
    this.count++
  }
  /** Cumulative counts per bound, ending with the +Inf bucket (= count). */
  cumulative(): Array<number> {
    const out: Array<number> = []
    let acc = 0
    for (const c of this.counts) out.push((acc += c))
    return out
  }
}

/** A distribution over fixed buckets: `_bucket{le=...}` cumulative counts, `_sum`, `_count`. */
export class Histogram extends Family<HistogramChild> {
  readonly type = "histogram"
  /** Finite upper bounds, strictly increasing; +Inf is implicit. */
  readonly buckets: ReadonlyArray<number>
  private readonly leText: ReadonlyArray<string>
  constructor(name: string, help: string, buckets: ReadonlyArray<number>, labelNames: ReadonlyArray<string> = []) {
    checkName(name, labelNames, ["le"])
    const finite = buckets.length > 0 && buckets[buckets.length - 1] === Infinity ? buckets.slice(0, -1) : [...buckets]
    for (let i = 0; i < finite.length; i++) {
      if (!Number.isFinite(finite[i]) || (i > 0 && !(finite[i] > finite[i - 1]))) {
        throw new Error(`histogram ${name}: buckets must be finite and strictly increasing, found [${buckets.join(", ")}]`)
      }
    }
    const bounds = Float64Array.from(finite)
    super(name, help, labelNames, () => new HistogramChild(bounds))
    this.buckets = finite
    this.leText = [...finite.map(formatValue), "+Inf"]
  }
  observe(v: number): void
  observe(labels: Labels, v: number): void
  observe(a: Labels | number, v?: number): void {
    if (typeof a === "number") this.only().observe(a)
    else this.child(a).observe(v ?? Number.NaN)
  }
  /** Cumulative bucket counts (last = +Inf), sum and count of one series. */
  get(labels?: Labels): { readonly cumulative: ReadonlyArray<number>; readonly sum: number; readonly count: number } {
    const s = labels === undefined ? this.only() : this.child(labels)
    return { cumulative: s.cumulative(), sum: s.sum, count: s.count }
  }
  protected renderSeries(out: Array<string>, labelText: string, s: HistogramChild): void {
    const sep = labelText === "" ? "" : ","
    const cum = s.cumulative()
    for (let i = 0; i < cum.length; i++) {
      out.push(`${this.name}_bucket{${labelText}${sep}le="${this.leText[i]}"} ${formatValue(cum[i])}`)
    }
    out.push(`${this.name}_sum${braced(labelText)} ${formatValue(s.sum)}`)
    out.push(`${this.name}_count${braced(labelText)} ${formatValue(s.count)}`)
  }
}

/** Owns metrics by name and renders them, in registration order, as one scrape. */
export class Registry {
  private readonly metrics = new Map<string, Metric>()

  counter(name: string, help: string, labelNames?: ReadonlyArray<string>): Counter {
    return this.add(new Counter(name, help, labelNames))
  }
  gauge(name: string, help: string, labelNames?: ReadonlyArray<string>): Gauge {
    return this.add(new Gauge(name, help, labelNames))
  }
  /** A gauge read from `read` at each `render()`, with these fixed labels. */
  gaugeFn(name: string, help: string, read: () => number, labels?: Labels): CallbackGauge {
    return this.add(new CallbackGauge(name, help, read, labels))
  }
  /** A counter whose running total is kept elsewhere and read at each `render()`. */
  counterFn(name: string, help: string, read: () => number, labels?: Labels): CallbackGauge {
    return this.add(new CallbackGauge(name, help, read, labels, "counter"))
  }
  histogram(name: string, help: string, buckets: ReadonlyArray<number>, labelNames?: ReadonlyArray<string>): Histogram {
    return this.add(new Histogram(name, help, buckets, labelNames))
  }

  /** The text exposition format 0.0.4, newline-terminated; serve with `PROMETHEUS_CONTENT_TYPE`. */
  render(): string {
    const out: Array<string> = []
    for (const m of this.metrics.values()) m.render(out)
    return out.length === 0 ? "" : out.join("\n") + "\n"
  }

  private add<M extends Metric>(m: M): M {
    if (this.metrics.has(m.name)) throw new Error(`metric ${m.name} is already registered`)
    this.metrics.set(m.name, m)
    return m
  }
}
