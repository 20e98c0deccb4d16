// `npm run bench:gpu --dry-run-cpu`: the whole orchestration (stages as child processes, result files, the table)
// with Chorus on the CPU over the tiny fixture and made-up PyTorch numbers; the flags' refusals. (`--decode-attention`
// and `--linear-kernels` reach the engine only on CUDA: their runs are the GPU hosts'.)
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import type { GpuBenchReport } from "../../../tools/bench-gpu/ResultTable.ts"

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..")
const script = path.join(repoRoot, "tools/bench-gpu/run.ts")
const small = ["--batches", "1,3", "--prompt-len", "24", "--gen-len", "10", "--context", "40", "--decode-steps", "6", "--ttft-repeats", "3", "--repeat", "1"]

const run = (args: ReadonlyArray<string>, cache: string) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [script, ...args], { cwd: repoRoot, env: { ...process.env, CHORUS_CACHE: cache }, timeout: 120_000 }, (error, stdout, stderr) =>
      resolve({ code: error === null ? 0 : typeof error.code === "number" ? error.code : -1, stdout, stderr }))
  })

describe("bench:gpu dry run", () => {
  it("runs Chorus in a child stage, then an int4 one, writes every result file and prints the tables", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-benchgpu-"))
    const out = path.join(dir, "out")
    const r = await run(["--dry-run-cpu", "--out", out, "--int4", "b32-zp", "--int4-batch", "3", ...small], path.join(dir, "cache"))
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    for (const f of ["torch.json", "chorus.json", "chorus-int4-b32-zp.json", "bench-gpu.json", "bench-gpu.md"]) expect(fs.existsSync(path.join(out, f))).toBe(true)
    const report = JSON.parse(fs.readFileSync(path.join(out, "bench-gpu.json"), "utf8")) as GpuBenchReport
    expect(report.stages.map((s) => [s.name, s.ok])).toEqual([["chorus", true], ["int4 b32-zp", true]])
    expect(report.quantized).toHaveLength(1)
    expect(report.quantized![0]).toMatchObject({ device: "cpu", dtype: "float32", quantize: "int4 b32 zp" })
    expect(report.quantized![0].batches.map((b) => b.batch)).toEqual([3])
    expect(report.rows.map((row) => row.label)).toEqual([
      "single stream, 40-token context",
      "1 concurrent, 24+10 tokens",
      "3 concurrent, 24+10 tokens",
      "time to first token, 24-token prompt"
    ])
    for (const row of report.rows) {
      expect(row.chorus).toBeGreaterThan(0)
      expect(row.roofline).toBeGreaterThan(0)
      expect(row.chorusVsTorch).toBeGreaterThan(0)
    }
    expect(report.chorus).toMatchObject({ device: "cpu", dtype: "float32", model: "tiny-llama3-b" })
    expect(report.shape).toMatchObject({ numLayers: 3, tiedEmbeddings: true, bytesPerElement: 4 })
    const md = fs.readFileSync(path.join(out, "bench-gpu.md"), "utf8")
    expect(md).toContain("| workload | unit | Chorus | PyTorch eager | PyTorch CUDA graphs | roofline |")
    expect(md).toContain("| weights | load s | single stream tok/s | x float | 3 sequences tok/s | x float |")
    expect(md).toMatch(/\| float32, int4 b32 zp \| \d+ \| \d+ \| [\d.]+x \| \d+ \| [\d.]+x \|/)
    expect(r.stdout).toContain(md.trim())
    fs.rmSync(dir, { recursive: true, force: true })
  }, 150_000)

  it("fails loudly when a stage fails, still writing the table with what there is", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-benchgpu-"))
    const out = path.join(dir, "out")
    const r = await run(["--dry-run-cpu", "--checkpoint", path.join(dir, "no-model"), "--out", out, "--int4", "none", ...small], path.join(dir, "cache"))
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/bench:gpu: 1 stage\(s\) failed: chorus \(exit 1\)/)
    const md = fs.readFileSync(path.join(out, "bench-gpu.md"), "utf8")
    expect(md).toContain("stage chorus: exit 1")
    expect(md).toMatch(/\| single stream, 40-token context \| tok\/s \| – \| 100 \|/)
    fs.rmSync(dir, { recursive: true, force: true })
  }, 150_000)

  it("rejects a bad flag with one line and exit code 2", async () => {
    const r = await run(["--out", "/tmp/x", "--batches", "1,x"], os.tmpdir())
    expect(r.code).toBe(2)
    expect(r.stderr.trim()).toBe("bench:gpu: --batches expects a number, got 'x'")
  })

  it.each([
    [["--checkpoint", "/tmp/x", "--decode-attention", "fast"], "bench:gpu: --decode-attention must be xqa, flash, chorus, got 'fast'"],
    [["--checkpoint", "/tmp/x", "--linear-kernels", "cublas"], "bench:gpu: --linear-kernels must be auto, ort, chorus, got 'cublas'"],
    [["--dry-run-cpu", "--decode-attention", "chorus"], "bench:gpu: --decode-attention needs a CUDA device"],
    [["--dry-run-cpu", "--linear-kernels", "chorus"], "bench:gpu: --linear-kernels needs a CUDA device"]
  ])("refuses Chorus's kernel choices that cannot apply: %j", async (args, message) => {
    const r = await run(["--out", "/tmp/x", ...args], os.tmpdir())
    expect(r.code).toBe(2)
    expect(r.stderr.trim()).toBe(message)
  })
})
