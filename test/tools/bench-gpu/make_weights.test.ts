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

// The writing path with test/tools/bench-gpu/fake-torch standing in for torch and safetensors: what files and index
// it writes, and that a run cut short and called again writes what an uninterrupted run writes.
describe("make_weights.py writing (fake torch)", () => {
  const fakeTorch = path.resolve(import.meta.dirname, "fake-torch")
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-make-weights-write-"))
  const write = (dir: string, extra: Record<string, string> = {}, ...args: ReadonlyArray<string>) =>
    spawnSync("python3", [script, dir, "--small", "--device", "cpu", "--shard-bytes", "1000000", ...args], {
      encoding: "utf8",
      env: { ...process.env, PYTHONPATH: fakeTorch, PYTHONDONTWRITEBYTECODE: "1", ...extra }
    })
  const contents = (dir: string) =>
    Object.fromEntries(fs.readdirSync(dir).sort().map((f) => [f, fs.readFileSync(path.join(dir, f), "utf8")]))

  it("writes the shards, config.json and an index naming every tensor's file", () => {
    const dir = path.join(root, "whole")
    const r = write(dir)
    expect(r.status, r.stderr).toBe(0)
    const index = JSON.parse(fs.readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8")) as { metadata: { total_size: number }; weight_map: Record<string, string> }
    // --small: 2 layers of 9 tensors, embeddings, final norm and LM head.
    expect(Object.keys(index.weight_map)).toHaveLength(2 * 9 + 3)
    for (const file of new Set(Object.values(index.weight_map))) expect(fs.existsSync(path.join(dir, file))).toBe(true)
    const first = JSON.parse(fs.readFileSync(path.join(dir, index.weight_map["model.embed_tokens.weight"]!), "utf8")) as Record<string, unknown>
    expect(first["model.embed_tokens.weight"]).toEqual([[128256, 256], [8_000_000_000, 0.02]])
    expect(JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"))).toMatchObject({ hidden_size: 256, num_hidden_layers: 2 })
    expect(write(dir).stdout).toContain("already holds the checkpoint; nothing to do")
  })

  it("goes on after a run cut short and writes the same bytes as an uninterrupted run", () => {
    const whole = path.join(root, "reference")
    expect(write(whole).status).toBe(0)
    const files = Object.keys(contents(whole)).filter((f) => f.startsWith("model-"))
    expect(files).toHaveLength(5)
    const dir = path.join(root, "resumed")
    const cut = write(dir, { FAKE_SAVE_FAIL: files[3]! })
    expect(cut.status).not.toBe(0)
    expect(fs.existsSync(path.join(dir, "model.safetensors.index.json"))).toBe(false)
    const again = write(dir)
    expect(again.status, again.stderr).toBe(0)
    expect(again.stdout.match(/written by an earlier run/g)).toHaveLength(3)
    const resumed = contents(dir)
    delete resumed[`.tmp-${files[3]!}`]
    expect(resumed).toEqual(contents(whole))
  })

  it("refuses a partial folder of another model", () => {
    const dir = path.join(root, "other")
    expect(write(dir, { FAKE_SAVE_FAIL: "model-00003-of-00005.safetensors" }).status).not.toBe(0)
    const r = write(dir, {}, "--layers", "1")
    expect(r.status).toBe(1)
    expect(r.stderr.trim()).toBe(`make_weights: ${dir} holds part of another model; choose another OUTDIR`)
  })
})
