import { describe, expect, it } from "vitest"
import { escapeLabelValue, formatValue, Registry } from "../../../src/http/metrics/Prometheus.ts"

describe("Registry.render", () => {
  it("renders counters, gauges and histograms in the text format 0.0.4, exactly", () => {
    const r = new Registry()
    const req = r.counter("chorus:requests_total", "Requests by route.", ["route", "code"])
    req.inc({ route: "/v1/chat", code: "200" })
    req.inc({ route: "/v1/chat", code: "200" }, 2)
    req.inc({ code: "500", route: 'a"b\\c\nd' })
    const g = r.gauge("temperature_celsius", "Help with \\ and\nnewline.")
    g.set(21.5)
    g.dec(0.5)
    const h = r.histogram("lat_seconds", "Latency.", [0.1, 1, 10], ["op"])
    h.observe({ op: "x" }, 0.05)
    h.observe({ op: "x" }, 0.1) // on a bound: counted in that bucket (le is inclusive)
    h.observe({ op: "x" }, 5)
    h.observe({ op: "x" }, 100)
    expect(r.render()).toBe(
      [
        "# HELP chorus:requests_total Requests by route.",
        "# TYPE chorus:requests_total counter",
        'chorus:requests_total{route="/v1/chat",code="200"} 3',
        'chorus:requests_total{route="a\\"b\\\\c\\nd",code="500"} 1',
        "# HELP temperature_celsius Help with \\\\ and\\nnewline.",
        "# TYPE temperature_celsius gauge",
        "temperature_celsius 21",
        "# HELP lat_seconds Latency.",
        "# TYPE lat_seconds histogram",
        'lat_seconds_bucket{op="x",le="0.1"} 2',
        'lat_seconds_bucket{op="x",le="1"} 2',
        'lat_seconds_bucket{op="x",le="10"} 3',
        'lat_seconds_bucket{op="x",le="+Inf"} 4',
        'lat_seconds_sum{op="x"} 105.15',
        'lat_seconds_count{op="x"} 4',
        ""
      ].join("\n")
    )
  })

  it("renders a label-less histogram with cumulative buckets ending in +Inf = count", () => {
    const r = new Registry()
    const h = r.histogram("h", "h.", [1, 2, 4, 8])
    for (const v of [0.5, 1, 1.5, 3, 3, 7, 9, -1]) h.observe(v)
    expect(r.render()).toBe(
      [
        "# HELP h h.",
        "# TYPE h histogram",
        'h_bucket{le="1"} 3',
        'h_bucket{le="2"} 4',
        'h_bucket{le="4"} 6',
        'h_bucket{le="8"} 7',
        'h_bucket{le="+Inf"} 8',
        "h_sum 24",
        "h_count 8",
        ""
      ].join("\n")
    )
    expect(h.get()).toEqual({ cumulative: [3, 4, 6, 7, 8], sum: 24, count: 8 })
  })

  it("renders label-less metrics as 0 before first use and labelled ones with no series as HELP/TYPE only", () => {
    const r = new Registry()
    r.counter("c_total", "c.")
    r.counter("l_total", "l.", ["k"])
    r.histogram("h", "h.", [0.5])
    expect(r.render()).toBe(
      [
        "# HELP c_total c.",
        "# TYPE c_total counter",
        "c_total 0",
        "# HELP l_total l.",
        "# TYPE l_total counter",
        "# HELP h h.",
        "# TYPE h histogram",
        'h_bucket{le="0.5"} 0',
        'h_bucket{le="+Inf"} 0',
        "h_sum 0",
        "h_count 0",
        ""
      ].join("\n")
    )
    expect(new Registry().render()).toBe("")
  })

  it("reads callback gauges at render time, and renders NaN when the callback throws", () => {
    const r = new Registry()
    let depth = 1
    r.gaugeFn("queue_depth", "Queue depth.", () => depth)
    r.gaugeFn("broken", "Broken.", () => {
      throw new Error("boom")
    })
    expect(r.render()).toContain("\nqueue_depth 1\n")
    depth = 7
    expect(r.render()).toContain("\nqueue_depth 7\n")
    expect(r.render()).toContain("\nbroken NaN\n")
  })

  it("shares one series between labelled calls and child handles, keeps label tuples apart", () => {
    const r = new Registry()
    const c = r.counter("c_total", "c.", ["a", "b"])
    const child = c.child({ a: "x", b: "y" })
    child.inc(4)
    c.inc({ b: "y", a: "x" })
    expect(c.get({ a: "x", b: "y" })).toBe(5)
    c.inc({ a: "x,y", b: "" })
    c.inc({ a: "x", b: ",y" })
    expect(c.get({ a: "x,y", b: "" })).toBe(1)
    expect(c.get({ a: "x", b: ",y" })).toBe(1)
    const single = r.counter("s_total", "s.")
    single.child({}).inc(2)
    single.inc()
    expect(single.get()).toBe(3)
    expect(r.render()).toContain("\ns_total 3\n")
  })

  it("formats special floats and escapes label values", () => {
    expect([Infinity, -Infinity, NaN, 0.25, 1e21, -3].map(formatValue)).toEqual(["+Inf", "-Inf", "NaN", "0.25", "1e+21", "-3"])
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd')
    const r = new Registry()
    const g = r.gauge("g", "g.")
    g.set(Infinity)
    expect(r.render()).toContain("\ng +Inf\n")
  })

  it("drops NaN observations instead of poisoning the sum", () => {
    const h = new Registry().histogram("h", "h.", [1])
    h.observe(NaN)
    h.observe(0.5)
    expect(h.get()).toEqual({ cumulative: [1, 1], sum: 0.5, count: 1 })
  })

  it("treats a trailing +Inf bucket as implicit", () => {
    const r = new Registry()
    r.histogram("h", "h.", [1, Infinity]).observe(2)
    expect(r.render().match(/le="\+Inf"/g)).toHaveLength(1)
  })

  it("rejects misuse: bad names, duplicates, wrong labels, bad buckets, negative counter increments", () => {
    const r = new Registry()
    expect(() => r.counter("1bad", "x")).toThrow(/metric name/)
    expect(() => r.counter("ok_total", "x", ["bad-label"])).toThrow(/label name/)
    expect(() => r.counter("ok_total", "x", ["__reserved"])).toThrow(/label name/)
    expect(() => r.histogram("h", "x", [1], ["le"])).toThrow(/reserved/)
    expect(() => r.histogram("h", "x", [2, 1])).toThrow(/strictly increasing/)
    expect(() => r.histogram("h", "x", [1, 1])).toThrow(/strictly increasing/)
    expect(() => r.histogram("h", "x", [NaN])).toThrow(/strictly increasing/)
    const c = r.counter("c_total", "x", ["k"])
    expect(() => r.counter("c_total", "x")).toThrow(/already registered/)
    expect(() => c.inc()).toThrow(/labels \{k\} are required/)
    expect(() => c.inc({ j: "v" })).toThrow(/expected labels \{k\}, found \{j\}/)
    expect(() => c.inc({ k: "v", j: "w" })).toThrow(/expected labels/)
    expect(() => c.inc({ k: "v" }, -1)).toThrow(/>= 0/)
    const plain = r.counter("p_total", "x")
    expect(() => plain.child({ k: "v" })).toThrow(/expected labels \{\}/)
  })
})

describe("Histogram.observe cost", () => {
  it("takes 1e6 label-less observations well under a second (guard against O(n) work per call)", () => {
    const buckets = Array.from({ length: 30 }, (_, i) => 0.0001 * 2 ** i)
    const h = new Registry().histogram("h", "h.", buckets)
    const t0 = performance.now()
    for (let i = 0; i < 1e6; i++) h.observe((i % 1000) * 0.001)
    const ms = performance.now() - t0
    expect(h.get().count).toBe(1e6)
    expect(ms).toBeLessThan(1000)
  })
})
