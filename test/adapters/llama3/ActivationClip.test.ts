// `--quant-search activation-clip` end to end on the CPU: the calibration statistics against a computation in JS, the
// searched int4 model against the float model of its own dequantized weights, and what the cache key and the
// manifest make of the setting.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { CALIBRATION_SEQUENCE, calibrationTokens, collectActivationStats } from "../../../src/adapters/llama3/ActivationStats.ts"
import { defaultCalibrationText } from "../../../src/adapters/llama3/CalibrationText.ts"
import { convertCheckpoint } from "../../../src/adapters/llama3/Converter.ts"
import { type LlamaConfig, loadLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { defaultInt4, type Int4Settings } from "../../../src/adapters/llama3/Quantization.ts"
import { openCheckpoint } from "../../../src/checkpoint/Safetensors.ts"
import { dequantizedFixture } from "../../support/dequantizedFixture.ts"
import { cachePerTest } from "../../support/cachePerTest.ts"
import { fixtureDir, readReference, relativeError } from "../../support/fixtures.ts"
import { runGreedy } from "../../support/greedyRuns.ts"

const { root } = cachePerTest("chorus-actclip-")

const searched: Int4Settings = { ...defaultInt4, search: "activation-clip" }

/** The statistics a conversion with the search computes for fixture `name` over `text`. */
const statsOf = async (name: string, text: string) => {
  const modelDir = fixtureDir(name)
  const config = await Effect.runPromise(loadLlamaConfig(modelDir))
  const float = await Effect.runPromise(convertCheckpoint({ modelDir, dtype: "float32", shards: 1 }))
  const calibration = await Effect.runPromise(calibrationTokens(modelDir, config, text, float.manifest.maxContext))
  const stats = await Effect.runPromise(collectActivationStats(config, { dataFile: `${float.shardPaths[0]}.data`, maxContext: float.manifest.maxContext }, calibration, 1))
  return { config, calibration, stats }
}

/** Layer 0's attention-norm output for each token, squared and averaged, from the checkpoint's tensors in JS. */
const firstNormMeanSquares = async (name: string, config: LlamaConfig, sequences: ReadonlyArray<Int32Array>): Promise<Float64Array> => {
  const source = await Effect.runPromise(openCheckpoint(fixtureDir(name)))
  const embed = await Effect.runPromise(source.readFloat32("model.embed_tokens.weight"))
  const gamma = await Effect.runPromise(source.readFloat32("model.layers.0.input_layernorm.weight"))
  const H = config.hiddenSize
  const sum = new Float64Array(H)
  let tokens = 0
  for (const seq of sequences) {
    for (const id of seq) {
      const x = embed.subarray(id * H, (id + 1) * H)
      const rms = Math.sqrt(x.reduce((a, v) => a + v * v, 0) / H + config.rmsNormEps)
      for (let c = 0; c < H; c++) sum[c] += ((x[c] / rms) * gamma[c]) ** 2
      tokens++
    }
  }
  return sum.map((s) => s / tokens)
}

describe("activation statistics (ActivationStats.ts)", () => {
  it("cover every linear's inputs, and layer 0's QKV input is the attention norm's mean x² as computed in JS", async () => {
    const { config, calibration, stats } = await statsOf("tiny-llama3-a", defaultCalibrationText)
    const { hiddenSize: H, intermediateSize: I, numHeads, headDim } = config
    const expected = new Map<string, number>([["lm_head", H]])
    for (let i = 0; i < config.numLayers; i++) {
      expected.set(`layers.${i}.qkv`, H).set(`layers.${i}.o_proj`, numHeads * headDim).set(`layers.${i}.gate_up`, H).set(`layers.${i}.down`, I)
    }
    expect([...stats.keys()].sort()).toEqual([...expected.keys()].sort())
    for (const [weight, k] of expected) {
      const s = stats.get(weight)!
      expect(s.length, weight).toBe(k)
      expect(s.every((v) => Number.isFinite(v) && v >= 0), weight).toBe(true)
    }
    const js = await firstNormMeanSquares("tiny-llama3-a", config, calibration.sequences)
    const qkv = stats.get("layers.0.qkv")!
    expect(relativeError(qkv, js)).toBeLessThan(1e-5)
    // the statistics of different linears are different tensors (a wiring slip would repeat one)
    expect(relativeError(stats.get("layers.1.qkv")!, qkv)).toBeGreaterThan(0.01)
    expect(relativeError(stats.get("layers.0.gate_up")!, qkv)).toBeGreaterThan(0.01)
  })

  it("cut the text into BOS-led sequences of the model's vocabulary, and hash them", async () => {
    const config = await Effect.runPromise(loadLlamaConfig(fixtureDir("tiny-llama3-b")))
    const long = await Effect.runPromise(calibrationTokens(fixtureDir("tiny-llama3-b"), config, defaultCalibrationText.repeat(3), 8192))
    expect(long.sequences.length).toBeGreaterThan(2)
    for (const s of long.sequences) {
      expect(s[0]).toBe(config.bosTokenId! % config.vocabSize)
      expect(s.length).toBeLessThanOrEqual(CALIBRATION_SEQUENCE)
      expect(s.every((id) => id >= 0 && id < config.vocabSize)).toBe(true)
    }
    expect(long.tokens).toBe(long.sequences.reduce((a, s) => a + s.length, 0))
    const short = await Effect.runPromise(calibrationTokens(fixtureDir("tiny-llama3-b"), config, "A short text.", 64))
    expect(short.sequences).toHaveLength(1)
    expect(short.digest).not.toBe(long.digest)
    const again = await Effect.runPromise(calibrationTokens(fixtureDir("tiny-llama3-b"), config, "A short text.", 64))
    expect(again.digest).toBe(short.digest)
  })
})

describe("--quant-search activation-clip", () => {
  const runAll = (options: Parameters<typeof runGreedy>[0], prompts: ReadonlyArray<ReadonlyArray<number>>) =>
    runGreedy(options, { maxNumSeqs: 4, maxNumBatchedTokens: 128 }, prompts, { promptLogits: "all", concurrent: false })

  it("the searched model equals the float model of its dequantized weights (and not round to nearest's)", async () => {
    const name = "tiny-llama3-b"
    const prompts = readReference(name).prompts.map((p) => p.input_ids).filter((p) => p.length <= 16)
    const int4 = await runAll({ modelDir: fixtureDir(name), quantize: searched }, prompts)
    const { stats } = await statsOf(name, defaultCalibrationText)
    const same = await runAll({ modelDir: await dequantizedFixture(root, name, searched, "float32", stats) }, prompts)
    const rtn = await runAll({ modelDir: await dequantizedFixture(root, name, defaultInt4, "float32") }, prompts)
    int4.forEach((r, i) => {
      expect(relativeError(r.logits, same[i].logits)).toBeLessThan(1e-5)
      expect(r.tokens).toEqual(same[i].tokens)
    })
    expect(Math.max(...int4.map((r, i) => relativeError(r.logits, rtn[i].logits)))).toBeGreaterThan(1e-3)
  })

  it("has cache keys of its own (by setting and by calibration text), is in the manifest, and converts in parallel byte for byte", async () => {
    const base = { modelDir: fixtureDir("tiny-llama3-a"), dtype: "float32" as const, shards: 1, maxContext: 64 }
    const rtn = await Effect.runPromise(convertCheckpoint({ ...base, quantize: defaultInt4 }))
    const search = await Effect.runPromise(convertCheckpoint({ ...base, quantize: searched }))
    const other = await Effect.runPromise(convertCheckpoint({ ...base, quantize: searched, calibrationText: "Another text entirely, about boats." }))
    const again = await Effect.runPromise(convertCheckpoint({ ...base, quantize: searched }))
    expect(new Set([rtn.manifest.key, search.manifest.key, other.manifest.key]).size).toBe(3)
    expect(again.cached).toBe(true)
    expect(again.dir).toBe(search.dir)
    expect(search.manifest.quantize).toEqual(searched)
    expect(search.manifest.calibration?.tokens).toBeGreaterThan(200)
    expect(rtn.manifest.calibration).toBeUndefined()
    expect(other.manifest.calibration?.digest).not.toBe(search.manifest.calibration?.digest)
    const data = (dir: string) => fs.readFileSync(path.join(dir, "shard-0.onnx.data"))
    expect(data(search.dir).equals(data(rtn.dir))).toBe(false)

    const threaded = { ...base, modelDir: fixtureDir("tiny-llama3-b"), dtype: "float16" as const, shards: 2, quantize: searched }
    const parallel = await Effect.runPromise(convertCheckpoint({ ...threaded, outDir: path.join(root, "parallel"), threads: 2 }))
    const sequential = await Effect.runPromise(convertCheckpoint({ ...threaded, outDir: path.join(root, "sequential"), threads: 0 }))
    for (const [k, p] of parallel.shardPaths.entries()) {
      expect(fs.readFileSync(`${p}.data`).equals(fs.readFileSync(`${sequential.shardPaths[k]}.data`))).toBe(true)
    }
  })
})
