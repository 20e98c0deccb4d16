// `--quantize int4` as users run it: generate and serve the embedded default model with 4-bit weights, convert a
// fixture, and one-line refusals (exit 2) of bad quantization flags.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { fixtureDir, repoRoot } from "../support/fixtures.ts"
import { startServeProcess } from "../support/serveProcess.ts"

const cache = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-quantize-cache-"))
afterAll(() => fs.rmSync(cache, { recursive: true, force: true }))
const chorus = (...args: Array<string>) =>
  spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), ...args], {
    env: { ...process.env, CHORUS_CACHE: cache },
    encoding: "utf8",
    timeout: 180_000
  })

const emptyFile = path.join(cache, "empty.txt")
fs.writeFileSync(emptyFile, " \n")
const missingFile = path.join(cache, "missing.txt")

/** Manifests in the cache, by their quantization (`none` for float). */
const cachedQuantizations = () =>
  fs.readdirSync(path.join(cache, "converted")).filter((k) => !k.includes(".")).map((k) => {
    const manifest = JSON.parse(fs.readFileSync(path.join(cache, "converted", k, "chorus-model.json"), "utf8"))
    return manifest.quantize === undefined ? "none" : `${manifest.quantize.blockSize}-${manifest.quantize.symmetric}`
  }).sort()

describe("chorus generate --quantize int4", () => {
  it("generates from the default model with MatMulNBits weights, deterministically, next to the float conversion", () => {
    const run = (...extra: Array<string>) => chorus("generate", "--prompt", "Once upon a time", "--max-tokens", "12", "--seed", "7", "--json", ...extra)
    const a = run("--quantize", "int4")
    expect(a.stderr).toBe("")
    expect(a.status).toBe(0)
    const first = JSON.parse(a.stdout)
    expect(first.token_ids).toHaveLength(12)
    expect(JSON.parse(run("--quantize", "int4").stdout)).toEqual(first)
    expect(run().status).toBe(0)
    expect(cachedQuantizations()).toEqual(["32-false", "none"])
    const graph = fs.readdirSync(path.join(cache, "converted")).map((k) => path.join(cache, "converted", k, "shard-0.onnx"))
      .map((f) => fs.readFileSync(f).toString("latin1"))
    expect(graph.filter((g) => g.includes("MatMulNBits"))).toHaveLength(1)
  })

  it("serves the int4 default model over HTTP", async () => {
    const server = await startServeProcess(["--quantize", "int4", "--quant-block-size", "128", "--quant-symmetric"], { CHORUS_CACHE: cache })
    try {
      const r = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "Hello", max_tokens: 5, temperature: 0 })
      })
      expect(r.status).toBe(200)
      const body = (await r.json()) as { choices: Array<{ text: string; finish_reason: string }>; usage: { completion_tokens: number } }
      expect(body.usage.completion_tokens).toBe(5)
      expect(body.choices[0].finish_reason).toBe("length")
    } finally {
      await server.stop()
    }
    expect(cachedQuantizations()).toContain("128-true")
  })

  it("chorus convert --quantize int4 writes a quantized manifest and says so", () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "chorus-convert-int4-")), "onnx")
    const r = chorus("convert", "--model", fixtureDir("tiny-llama3-a"), "--out", out, "--quantize", "int4", "--quant-lm-head", "off")
    expect(r.stderr).toBe("")
    expect(r.stdout).toMatch(/\(1 shard\(s\), float32, int4 b32 zp head-float, [\d.]+ s\)\n$/)
    expect(JSON.parse(fs.readFileSync(path.join(out, "chorus-model.json"), "utf8")).quantize).toMatchObject({ blockSize: 32, symmetric: false, lmHead: false })
  })

  it("chorus convert --quant-search activation-clip --quant-calibration FILE calibrates on the file and records it", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-convert-actclip-"))
    const text = path.join(dir, "calibration.txt")
    fs.writeFileSync(text, "Calibration text for a test: the quick brown fox jumps over the lazy dog, 1, 2, 3.\n")
    const r = chorus("convert", "--model", fixtureDir("tiny-llama3-a"), "--out", path.join(dir, "onnx"), "--quantize", "int4", "--quant-search", "activation-clip", "--quant-calibration", text)
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/\(1 shard\(s\), float32, int4 b32 zp act-clip, [\d.]+ s\)\n$/)
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, "onnx", "chorus-model.json"), "utf8"))
    expect(manifest.quantize.search).toBe("activation-clip")
    // one sequence: BOS and the file's twenty-odd tokens (the built-in text has over 500)
    expect(manifest.calibration.tokens).toBeGreaterThan(10)
    expect(manifest.calibration.tokens).toBeLessThan(40)
  })

  it.each([
    [["--quantize", "int8"], "--quantize must be int4, got 'int8'"],
    [["--quantize", "int4", "--quant-block-size", "64"], "--quant-block-size must be 32 or 128, got 64"],
    [["--quant-symmetric"], "--quant-symmetric needs --quantize int4"],
    [["--quantize", "int4", "--quant-lm-head", "maybe"], "--quant-lm-head must be on or off, got 'maybe'"],
    [["--quantize", "int4", "--quant-search", "awq"], "--quant-search must be none or activation-clip, got 'awq'"],
    [["--quant-search", "activation-clip"], "--quant-search needs --quantize int4"],
    [["--quantize", "int4", "--quant-calibration", emptyFile], "--quant-calibration needs --quant-search activation-clip"],
    [["--quantize", "int4", "--quant-search", "activation-clip", "--quant-calibration", emptyFile], `--quant-calibration: ${emptyFile} is empty (the calibration needs text)`],
    [
      ["--quantize", "int4", "--quant-search", "activation-clip", "--quant-calibration", missingFile],
      `--quant-calibration: cannot read ${missingFile}: ENOENT: no such file or directory, open '${missingFile}'`
    ]
  ])("refuses %j with one line and exit 2", (flags, message) => {
    const r = chorus("generate", "--prompt", "x", ...flags)
    expect(r.status).toBe(2)
    expect(r.stderr).toBe(`chorus: ${message}\n`)
  })
})
