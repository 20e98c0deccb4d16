// make_weights.py's flags and plan, through `--dry-run` (no torch needed): the config it would write, the bytes it
// would write (checked against the tensor shapes computed here), and one-line refusals of bad flags.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"

const script = path.resolve(import.meta.dirname, "../../../tools/bench-gpu/make_weights.py")
const outdir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "chorus-make-weights-")), "ckpt")

const makeWeights = (...args: ReadonlyArray<string>) => {
  const r = spawnSync("python3", [script, outdir, ...args], { encoding: "utf8" })
  if (r.error !== undefined) throw new Error(`python3 is needed to test make_weights.py: ${r.error.message}`)
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** The config JSON printed first, and the total bytes from the summary line. */
const dryRun = (...args: ReadonlyArray<string>) => {
  const r = makeWeights(...args, "--dry-run")
  expect(r.status, r.stderr).toBe(0)
  const configEnd = r.stdout.indexOf("\n}\n") + 2
  const config = JSON.parse(r.stdout.slice(0, configEnd)) as Record<string, unknown>
  const total = /: [\d.]+ GB \((\d+) bytes\) in (\d+) shards/.exec(r.stdout)
  expect(total).not.toBeNull()
  const fileLines = r.stdout.split("\n").filter((l) => l.startsWith("make_weights: would write model-"))
  return { config, totalBytes: Number(total![1]), shards: Number(total![2]), fileLines }
}

/** float16 bytes of a Llama checkpoint, counted from the shapes (untied LM head, two norms a layer and a final one). */
const checkpointBytes = (c: { vocab: number; hidden: number; ffn: number; heads: number; kvHeads: number; layers: number }) => {
  const headDim = c.hidden / c.heads
  const attention = 2 * c.hidden * c.hidden + 2 * c.kvHeads * headDim * c.hidden
  const mlp = 3 * c.hidden * c.ffn
  const perLayer = attention + mlp + 2 * c.hidden
  return 2 * (c.layers * perLayer + 2 * c.vocab * c.hidden + c.hidden)
}

describe("make_weights.py --dry-run", () => {
  it("keeps the 8B default: the released config and 16.06 GB", () => {
    const { config, totalBytes } = dryRun()
    expect(config).toMatchObject({ hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, vocab_size: 128256 })
    expect(totalBytes).toBe(checkpointBytes({ vocab: 128256, hidden: 4096, ffn: 14336, heads: 32, kvHeads: 8, layers: 32 }))
    expect(totalBytes).toBe(16_060_522_496)
  })

  it("--shape 70b: Llama-3-70B's config, 141.1 GB at full depth", () => {
    const { config, totalBytes } = dryRun("--shape", "70b")
    expect(config).toMatchObject({
      hidden_size: 8192,
      intermediate_size: 28672,
      num_hidden_layers: 80,
      num_attention_heads: 64,
      num_key_value_heads: 8,
      vocab_size: 128256,
      rope_theta: 500000,
      max_position_embeddings: 8192,
      torch_dtype: "float16"
    })
    expect(totalBytes).toBe(checkpointBytes({ vocab: 128256, hidden: 8192, ffn: 28672, heads: 64, kvHeads: 8, layers: 80 }))
    expect(totalBytes / 1e9).toBeCloseTo(141.1, 1)
  })

  it("--layers 20 keeps the 70B layer shape at a quarter of the depth, in files of at most 5 GB", () => {
    const { config, totalBytes, shards, fileLines } = dryRun("--shape", "70b", "--layers", "20")
    expect(config).toMatchObject({ hidden_size: 8192, intermediate_size: 28672, num_hidden_layers: 20 })
    expect(totalBytes).toBe(checkpointBytes({ vocab: 128256, hidden: 8192, ffn: 28672, heads: 64, kvHeads: 8, layers: 20 }))
    expect(fileLines).toHaveLength(shards)
    expect(fileLines[0]).toContain(`model-00001-of-${String(shards).padStart(5, "0")}.safetensors`)
    for (const line of fileLines) expect(Number(/([\d.]+) GB$/.exec(line)![1])).toBeLessThanOrEqual(5)
  })

  it("writes nothing", () => {
    dryRun("--shape", "70b", "--layers", "2")
    expect(fs.existsSync(outdir)).toBe(false)
  })
})

describe("make_weights.py bad flags", () => {
  it.each([
    [["--shape", "70b", "--layers", "81"], "--layers must be from 1 to 80, got 81"],
    [["--layers", "0"], "--layers must be from 1 to 32, got 0"],
    [["--shape", "70b", "--small"], "--small is the 8b form"],
    [["--shape", "405b"], "invalid choice: '405b'"]
  ])("%j: one line, exit 2", (args, message) => {
    const r = makeWeights(...args, "--dry-run")
    expect(r.status).toBe(2)
    expect(r.stdout).toBe("")
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
    expect(r.stderr).toContain(message)
  })
})
