// AWQ / GPTQ checkpoints as users run them: `chorus generate`, `chorus serve` and `chorus convert --model <dir>` pick
// the quantization up from config.json; `--quantize int4` on top is refused in one line.
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ensureDefaultModel } from "../../src/adapters/llama3/DefaultModel.ts"
import { repoRoot } from "../support/fixtures.ts"
import { quantizedCheckpoint } from "../support/quantizedCheckpoint.ts"
import { startServeProcess } from "../support/serveProcess.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-prequant-cli-"))
const cache = path.join(root, "cache")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
const chorus = (...args: Array<string>) =>
  spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), ...args], {
    env: { ...process.env, CHORUS_CACHE: cache },
    encoding: "utf8",
    timeout: 180_000
  })

// The default model (real Llama 3 vocabulary and tokenizer, random weights) as an AWQ checkpoint with groups of 32
let awqDir = ""
let floatDir = ""
beforeAll(async () => {
  const base = await Effect.runPromise(ensureDefaultModel({ cacheDir: cache }))
  ;({ dir: awqDir, floatDir } = await quantizedCheckpoint(root, base, { method: "awq" }, { groupSize: 32 }))
}, 120_000)

describe("chorus with an AWQ checkpoint", () => {
  it("generates the tokens of the float model of its dequantized weights", () => {
    const run = (dir: string) => chorus("generate", "--model", dir, "--prompt", "Once upon a time", "--max-tokens", "8", "--temperature", "0", "--json")
    const quantized = run(awqDir)
    expect(quantized.stderr).toBe("")
    expect(quantized.status).toBe(0)
    const float = run(floatDir)
    expect(float.status).toBe(0)
    expect(JSON.parse(quantized.stdout).token_ids).toHaveLength(8)
    expect(JSON.parse(quantized.stdout).token_ids).toEqual(JSON.parse(float.stdout).token_ids)
  })

  it("serves it over HTTP", async () => {
    const server = await startServeProcess(["--model", awqDir], { CHORUS_CACHE: cache })
    try {
      const r = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "Hello", max_tokens: 4, temperature: 0 })
      })
      expect(r.status).toBe(200)
      expect(((await r.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(4)
    } finally {
      await server.stop()
    }
  })

  it("chorus convert says where the quantization came from", () => {
    const out = path.join(root, "onnx")
    const r = chorus("convert", "--model", awqDir, "--out", out, "--context-length", "64")
    expect(r.stderr).toBe("")
    expect(r.stdout).toMatch(/\(1 shard\(s\), float32, AWQ 4-bit g32 from the checkpoint, [\d.]+ s\)\n$/)
    expect(JSON.parse(fs.readFileSync(path.join(out, "chorus-model.json"), "utf8")).config.quantization).toEqual({ method: "awq", bits: 4, groupSize: 32 })
    const graph = fs.readFileSync(path.join(out, "shard-0.onnx")).toString("latin1")
    expect(graph).toContain("MatMulNBits")
  })

  it("refuses --quantize int4 on top, in one line", () => {
    const r = chorus("generate", "--model", awqDir, "--prompt", "x", "--quantize", "int4")
    expect(r.status).not.toBe(0)
    expect(r.stderr).toContain("the checkpoint is already AWQ 4-bit (quantization_config in config.json); --quantize int4 would requantize it: leave --quantize out")
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
  })
})
