// The memory plan of a pipeline split for a Llama-3-70B-shaped config: the config is the one make_weights.py would
// write (so the shapes are the checkpoint's, parsed as serving parses them), the weights add up to that checkpoint's
// bytes, and the two halves of a 2-shard split are what each GPU holds.
import { Effect } from "effect"
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { parseLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { kvTokenCeiling, layerElements, planShardsByMemory, rangesOf, shardMemoryPlan, shardWeightBytes } from "../../../src/adapters/llama3/ShardMemory.ts"

const makeWeights = path.resolve(import.meta.dirname, "../../../tools/bench-gpu/make_weights.py")

/** make_weights.py's config and total bytes for these flags, without torch (`--dry-run`). */
const dryRun = (...args: ReadonlyArray<string>) => {
  const r = spawnSync("python3", [makeWeights, "/nonexistent/ckpt", ...args, "--dry-run"], { encoding: "utf8" })
  if (r.error !== undefined) throw new Error(`python3 is needed: ${r.error.message}`)
  expect(r.status, r.stderr).toBe(0)
  const json: unknown = JSON.parse(r.stdout.slice(0, r.stdout.indexOf("\n}\n") + 2))
  return { config: Effect.runSync(parseLlamaConfig(json, "config.json")), totalBytes: Number(/\((\d+) bytes\)/.exec(r.stdout)![1]) }
}

const GiB = 2 ** 30

describe("shardMemoryPlan for the 70B shape", () => {
  const { config, totalBytes } = dryRun("--shape", "70b")

  it("parses as Llama-3-70B: 80 layers of 855.6 M weights", () => {
    expect(config).toMatchObject({ numLayers: 80, hiddenSize: 8192, numHeads: 64, numKvHeads: 8, headDim: 128, intermediateSize: 28672 })
    expect(layerElements(config)).toBe(855_654_400)
  })

  it("one shard holds the whole checkpoint", () => {
    const [whole] = shardMemoryPlan(config, 1, "float16")
    expect(whole!.weightBytes).toBe(totalBytes)
    expect(whole!.kvBytesPerToken).toBe(2 * 80 * 8 * 128 * 2)
  })

  it("2 shards: 40 layers each, 70.55 GB each (embeddings on the first, LM head on the last), 160 KiB of KV a token", () => {
    const plan = shardMemoryPlan(config, 2, "float16")
    expect(plan.map((s) => s.layers)).toEqual([[0, 40], [40, 80]])
    expect(plan[0]!.weightBytes + plan[1]!.weightBytes).toBe(totalBytes)
    expect(plan[0]!.weightBytes / 1e9).toBeCloseTo(70.55, 2)
    expect(plan[1]!.weightBytes - plan[0]!.weightBytes).toBe(2 * 8192)
    for (const s of plan) expect(s.kvBytesPerToken).toBe(160 * 1024)
  })

  it("8 shards: the middle ones hold layers only", () => {
    const plan = shardMemoryPlan(config, 8, "float16")
    expect(plan.map((s) => s.layers[1] - s.layers[0])).toEqual(Array(8).fill(10))
    expect(plan[3]!.weightBytes).toBe(10 * layerElements(config) * 2)
    expect(plan[0]!.weightBytes - plan[3]!.weightBytes).toBe(128256 * 8192 * 2)
  })

  it("KV room: 2 x 80 GiB at 0.9 leaves each shard about 42k tokens before workspace; 2 x 48 GiB holds no shard", () => {
    const [first] = shardMemoryPlan(config, 2, "float16")
    expect(kvTokenCeiling(first!, 80 * GiB, 0.9)).toBe(Math.floor((80 * GiB * 0.9 - first!.weightBytes) / (160 * 1024)))
    expect(kvTokenCeiling(first!, 80 * GiB, 0.9)).toBeGreaterThan(40_000)
    expect(kvTokenCeiling(first!, 48 * GiB, 0.9)).toBe(0)
  })

  it("a reduced depth keeps the layer size: 20 layers over 2 shards are 10 layers each", () => {
    const reduced = dryRun("--shape", "70b", "--layers", "20")
    const plan = shardMemoryPlan(reduced.config, 2, "float16")
    expect(plan.map((s) => s.layers)).toEqual([[0, 10], [10, 20]])
    expect(plan[0]!.weightBytes + plan[1]!.weightBytes).toBe(reduced.totalBytes)
  })
})

describe("shardWeightBytes", () => {
  const tiny = { vocabSize: 10, hiddenSize: 4, intermediateSize: 8, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 2, tieWordEmbeddings: true }

  it("holds a tied table twice when the first and last shards differ, once as LM head besides the embedding on one", () => {
    const perLayer = layerElements(tiny)
    expect(shardWeightBytes(tiny, [0, 1], "float32")).toBe(4 * (40 + perLayer))
    expect(shardWeightBytes(tiny, [1, 2], "float32")).toBe(4 * (perLayer + 40 + 4))
    expect(shardWeightBytes(tiny, [0, 2], "bfloat16")).toBe(2 * (40 + 2 * perLayer + 40 + 4))
  })
})

describe("planShardsByMemory for the 70B shape", () => {
  const { config } = dryRun("--shape", "70b")
  /** The engine's pool: the smallest KV ceiling over the shards of a split. */
  const poolOf = (split: ReadonlyArray<number>, gpus: ReadonlyArray<number>) =>
    Math.min(...rangesOf(split).map((layers, i) => {
      const kvBytesPerToken = 2 * (layers[1] - layers[0]) * 8 * 128 * 2
      return kvTokenCeiling({ layers, weightBytes: shardWeightBytes(config, layers, "float16"), kvBytesPerToken }, gpus[i]!, 0.9)
    }))

  it("equal GPUs, two shards: the equal split (each half holds one table)", () => {
    expect(planShardsByMemory(config, "float16", [80 * GiB, 80 * GiB], 0.9)).toEqual([40, 40])
  })

  it("equal GPUs, four and eight shards: the equal split (a 1.7 GB layer moved off a table's shard costs the other more)", () => {
    expect(planShardsByMemory(config, "float16", Array(4).fill(48 * GiB), 0.9)).toEqual([20, 20, 20, 20])
    expect(planShardsByMemory(config, "float16", Array(8).fill(24 * GiB), 0.9)).toEqual(Array(8).fill(10))
  })

  it("three unequal GPUs: every layer placed, and no split of them has a larger smallest pool", () => {
    const gpus = [80 * GiB, 48 * GiB, 48 * GiB]
    const split = planShardsByMemory(config, "float16", gpus, 0.9)
    expect(split.reduce((a, b) => a + b, 0)).toBe(80)
    expect(split[0]!).toBeGreaterThan(split[1]!)
    const best = poolOf(split, gpus)
    for (let a = 1; a < 79; a++) {
      for (let b = 1; a + b < 80; b++) {
        const other = [a, b, 80 - a - b]
        const fits = rangesOf(other).every((layers, i) => shardWeightBytes(config, layers, "float16") <= gpus[i]! * 0.9)
        if (fits) expect(poolOf(other, gpus)).toBeLessThanOrEqual(best)
      }
    }
  })

  it("unequal GPUs: the larger one takes more layers; the split keeps the best smallest pool of every split", () => {
    const gpus = [96 * GiB, 64 * GiB]
    const split = planShardsByMemory(config, "float16", gpus, 0.9)
    expect(split[0]!).toBeGreaterThan(split[1]!)
    const best = poolOf(split, gpus)
    for (let a = 1; a < 80; a++) {
      const other = [a, 80 - a]
      const fits = rangesOf(other).every((layers, i) => shardWeightBytes(config, layers, "float16") <= gpus[i]! * 0.9)
      if (fits) expect(poolOf(other, gpus)).toBeLessThanOrEqual(best)
    }
  })

  it("weights that do not fit are refused, with the sizes", () => {
    expect(() => planShardsByMemory(config, "float16", [24 * GiB, 24 * GiB], 0.9)).toThrow(/do not fit 2 GPU\(s\) of 24, 24 GiB/)
  })
})
