// Rows, ratios and the markdown of the GPU benchmark's table, from hand-made result files.
import { describe, expect, it } from "vitest"
import { buildRows, ceilingsOf, type ChorusResults, formatNumber, type GpuBenchReport, renderReport, renderTable, type TorchResults } from "../../../tools/bench-gpu/ResultTable.ts"
import { decodeRoofline, type ModelShape, prefillRooflineMs } from "../../../tools/bench-gpu/Roofline.ts"

const shape: ModelShape = {
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  hiddenSize: 4096,
  intermediateSize: 14336,
  vocabSize: 128256,
  tiedEmbeddings: false,
  totalElements: 8_030_261_248,
  embeddingElements: 128256 * 4096,
  bytesPerElement: 2
}
const workloads = { context: 1024, decodeSteps: 128, promptLen: 512, genLen: 256, batches: [1, 64] }

const torch: TorchResults = {
  device: "NVIDIA H200",
  torch: "2.11.0",
  dtype: "float16",
  date: "2026-11-26T00:00:00Z",
  implementation: "llama_torch.py",
  copyBandwidth: { bytesPerSecond: 4e12 },
  matmul: { flopsPerSecond: 700e12 },
  singleStream: { context: 1024, eager: { tokensPerSecond: 80, itlMeanMs: 12.5, itlP50Ms: 12, itlP99Ms: 15 }, graphs: { tokensPerSecond: 200 } },
  batches: [
    { batch: 1, prefillMs: 20, eager: { tokensPerSecond: 85 }, graphs: { error: "OutOfMemoryError: capture" } },
    { batch: 64, error: "OutOfMemoryError: CUDA out of memory" }
  ],
  ttft: { eager: { promptLen: 512, medianMs: 30 } }
}
const chorus: ChorusResults = {
  device: "cuda:0",
  model: "llama3-8b-random",
  dtype: "float16",
  loadSeconds: 12,
  singleStream: { context: 1024, tokensPerSecond: 180, itlMeanMs: 5.5, itlP50Ms: 5.4, itlP99Ms: 7 },
  batches: [
    { batch: 1, tokensPerSecond: 170, overallTokensPerSecond: 168, prefillMs: 25, steadyTokens: 254 },
    { batch: 64, tokensPerSecond: 6000, overallTokensPerSecond: 5500, prefillMs: 900, steadyTokens: 15000 }
  ],
  ttft: { promptLen: 512, medianMs: 40 }
}

describe("ResultTable", () => {
  it("builds one row per workload with speed ratios against the faster PyTorch number and the roofline", () => {
    const ceilings = ceilingsOf(torch)
    expect(ceilings).toEqual({ bandwidthBytesPerSecond: 4e12, flopsPerSecond: 700e12 })
    const rows = buildRows(workloads, shape, ceilings, chorus, torch)
    expect(rows.map((r) => r.label)).toEqual([
      "single stream, 1024-token context",
      "1 concurrent, 512+256 tokens",
      "64 concurrent, 512+256 tokens",
      "time to first token, 512-token prompt"
    ])
    const [single, one, many, ttft] = rows
    const floor = decodeRoofline(shape, { batch: 1, startPosition: 1024, steps: 128 }, 4e12).tokensPerSecond
    expect(single).toMatchObject({ chorus: 180, torchEager: 80, torchGraphs: 200, unit: "tok/s" })
    expect(single!.roofline).toBeCloseTo(floor, 9)
    expect(single!.chorusVsTorch).toBeCloseTo(180 / 200, 12) // against graphs, the faster
    expect(single!.chorusVsRoofline).toBeCloseTo(180 / floor, 12)
    // A failed graph capture leaves eager as the baseline.
    expect(one).toMatchObject({ torchEager: 85, torchGraphs: undefined })
    expect(one!.chorusVsTorch).toBeCloseTo(170 / 85, 12)
    expect(one!.roofline).toBeCloseTo(decodeRoofline(shape, { batch: 1, startPosition: 512, steps: 255 }, 4e12).tokensPerSecond, 9)
    // A failed PyTorch row has no ratio.
    expect(many).toMatchObject({ chorus: 6000, torchEager: undefined, chorusVsTorch: undefined })
    // Time to first token: ratios of times are inverted.
    expect(ttft).toMatchObject({ unit: "ms", chorus: 40, torchEager: 30 })
    expect(ttft!.chorusVsTorch).toBeCloseTo(30 / 40, 12)
    expect(ttft!.roofline).toBeCloseTo(prefillRooflineMs(shape, 512, 4e12, 700e12), 12)
  })

  it("leaves roofline and ratios empty when a side or a ceiling is missing", () => {
    const rows = buildRows(workloads, shape, ceilingsOf(undefined), chorus, undefined)
    expect(rows.every((r) => r.roofline === undefined && r.torchEager === undefined && r.chorusVsTorch === undefined)).toBe(true)
    const noChorus = buildRows(workloads, undefined, ceilingsOf(torch), undefined, torch)
    expect(noChorus[0]).toMatchObject({ chorus: undefined, torchEager: 80, roofline: undefined, chorusVsRoofline: undefined })
  })

  it("renders numbers and the markdown table", () => {
    expect([formatNumber(12345.6), formatNumber(123.4), formatNumber(12.34), formatNumber(1.234), formatNumber(undefined), formatNumber(Number.NaN)])
      .toEqual(["12,346", "123", "12.3", "1.23", "–", "–"])
    const table = renderTable({ card: "NVIDIA H200", date: "2026-11-26" }, buildRows(workloads, shape, ceilingsOf(torch), chorus, torch))
    const lines = table.trimEnd().split("\n")
    expect(lines[0]).toBe("**NVIDIA H200**, 2026-11-26")
    expect(lines[2]).toBe("| workload | unit | Chorus | PyTorch eager | PyTorch CUDA graphs | roofline | Chorus / PyTorch | Chorus / roofline |")
    expect(lines).toHaveLength(4 + 4)
    expect(lines[4]).toMatch(/^\| single stream, 1024-token context \| tok\/s \| 180 \| 80\.0 \| 200 \| \d+ \| 0\.90x \| \d+% \|$/)
    expect(lines[6]).toContain("| 6,000 | – | – |")
    expect(lines[7]).toMatch(/^\| time to first token, 512-token prompt \| ms \| 40\.0 \| 30\.0 \| – \| [\d.]+ \| 0\.75x \| \d+% \|$/)
  })

  it("reports every failure and the latencies behind the rates under the table", () => {
    const report: GpuBenchReport = {
      card: "NVIDIA H200",
      date: "2026-11-26",
      checkpoint: "/tmp/x",
      workloads,
      shape,
      ceilings: ceilingsOf(torch),
      rows: buildRows(workloads, shape, ceilingsOf(torch), chorus, torch),
      stages: [{ name: "chorus", ok: false, detail: "timed out after 480 s", seconds: 480 }],
      torch,
      chorus
    }
    const md = renderReport(report)
    expect(md).toContain("copy bandwidth 4.00 TB/s")
    expect(md).toContain("matmul rate 700 TFLOP/s")
    expect(md).toContain("Chorus mean 5.50 ms, p50 5.40 ms, p99 7.00 ms; PyTorch eager mean 12.5 ms")
    expect(md).toContain("64: Chorus 900 ms, PyTorch –")
    expect(md).toContain("PyTorch batches batch 1 graphs: OutOfMemoryError: capture")
    expect(md).toContain("PyTorch batches batch 64: OutOfMemoryError: CUDA out of memory")
    expect(md).toContain("stage chorus: timed out after 480 s")
  })
})
