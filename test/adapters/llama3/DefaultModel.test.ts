// The generated default checkpoint: byte-identical on every run and machine, a valid Llama 3.1 config, and runnable.
import "../../../src/onnx/OrtFloat16Fix.ts"
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { convertCheckpoint } from "../../../src/adapters/llama3/Converter.ts"
import { DEFAULT_MODEL_FOLDER, ensureDefaultModel } from "../../../src/adapters/llama3/DefaultModel.ts"
import { loadLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { maskFeeds } from "../../support/maskFeeds.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-default-"))
const savedCache = process.env.CHORUS_CACHE
process.env.CHORUS_CACHE = path.join(root, "cache") // the conversion's hash memo stays out of the user's cache
afterAll(() => {
  if (savedCache === undefined) delete process.env.CHORUS_CACHE
  else process.env.CHORUS_CACHE = savedCache
  fs.rmSync(root, { recursive: true, force: true })
})

const sha256 = (file: string) => crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex")
const hashes = (dir: string) => Object.fromEntries(fs.readdirSync(dir).sort().map((f) => [f, sha256(path.join(dir, f))]))

/** Pinned so that a change to the generator (or to the safetensors writer) is noticed: it changes every cache key. */
const SAFETENSORS_SHA256 = "a44d2046c6fc09648cc5d1d29df8cd483eb58dde0e72eef938a4b22d5e69a473"

describe("ensureDefaultModel", () => {
  it("generates identical bytes in two fresh caches, and reuses an existing one", async () => {
    const a = await Effect.runPromise(ensureDefaultModel({ cacheDir: path.join(root, "a") }))
    const b = await Effect.runPromise(ensureDefaultModel({ cacheDir: path.join(root, "b") }))
    expect(path.basename(a)).toBe(DEFAULT_MODEL_FOLDER)
    expect(fs.readdirSync(a).sort()).toEqual(["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    const ha = hashes(a)
    expect(hashes(b)).toEqual(ha)
    expect(ha["model.safetensors"]).toBe(SAFETENSORS_SHA256)
    expect(fs.readdirSync(path.join(root, "a"))).toEqual([DEFAULT_MODEL_FOLDER]) // no temporary folder left

    const mtime = fs.statSync(path.join(a, "model.safetensors")).mtimeMs
    expect(await Effect.runPromise(ensureDefaultModel({ cacheDir: path.join(root, "a") }))).toBe(a)
    expect(fs.statSync(path.join(a, "model.safetensors")).mtimeMs).toBe(mtime)

    // $CHORUS_CACHE is the default location
    process.env.CHORUS_CACHE = path.join(root, "a")
    try {
      expect(await Effect.runPromise(ensureDefaultModel())).toBe(a)
    } finally {
      process.env.CHORUS_CACHE = path.join(root, "cache")
    }
  })

  it("is a Llama 3.1-style config with the real tokenizer, and converts and runs", async () => {
    const dir = await Effect.runPromise(ensureDefaultModel({ cacheDir: path.join(root, "a") }))
    const config = await Effect.runPromise(loadLlamaConfig(dir))
    expect(config).toMatchObject({
      vocabSize: 128256, hiddenSize: 128, intermediateSize: 384, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 32,
      rmsNormEps: 1e-5, ropeTheta: 500000, maxPositionEmbeddings: 8192, tieWordEmbeddings: true, bosTokenId: 128000, dtype: "float32",
      ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 }
    })
    expect([...config.eosTokenIds].sort()).toEqual([128001, 128009])
    const tokenizer = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")) as { added_tokens: Array<{ id: number; content: string }> }
    expect(tokenizer.added_tokens.find((t) => t.id === 128000)?.content).toBe("<|begin_of_text|>")

    const out = path.join(root, "converted")
    const model = await Effect.runPromise(convertCheckpoint({ modelDir: dir, outDir: out, dtype: "float32", shards: 1, maxContext: 64 }))
    const session = await ort.InferenceSession.create(model.shardPaths[0], { intraOpNumThreads: 1 })
    const kv = () => new ort.Tensor("float32", new Float32Array(2 * 64 * 32), [1, 2, 64, 32])
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", BigInt64Array.of(128000n, 9906n, 1917n), [1, 3]),
      position_ids: new ort.Tensor("int64", BigInt64Array.of(0n, 1n, 2n), [1, 3]),
      seqlens_k: new ort.Tensor("int32", Int32Array.of(2), [1]),
      total_sequence_length: new ort.Tensor("int32", Int32Array.of(3), []),
      logits_index: new ort.Tensor("int64", BigInt64Array.of(0n, 2n), [1, 2]),
      ...maskFeeds(128256)
    }
    for (let i = 0; i < 4; i++) {
      feeds[`past_key.${i}`] = kv()
      feeds[`past_value.${i}`] = kv()
    }
    const { logits } = await session.run(feeds)
    expect(logits.dims).toEqual([1, 2, 128256])
    const data = logits.data as Float32Array
    expect(data.every(Number.isFinite)).toBe(true)
    expect(data.subarray(0, 128256).some((x, i) => x !== data[128256 + i])).toBe(true) // positions differ
  })
})
