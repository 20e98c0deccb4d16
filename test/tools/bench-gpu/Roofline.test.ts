// The roofline's byte and FLOP counts against hand-computed Llama 3 8B figures and brute-force sums.
import { Effect } from "effect"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"
import {
  decodeRoofline,
  decodeStepBytes,
  kvBytesPerToken,
  loadModelShape,
  type ModelShape,
  prefillFlops,
  prefillRooflineMs,
  weightBytesPerStep
} from "../../../tools/bench-gpu/Roofline.ts"

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../fixtures")

// Meta-Llama-3-8B: 8,030,261,248 parameters, of which the embedding table is 128256 x 4096.
const llama8b: ModelShape = {
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

describe("Roofline", () => {
  it("counts 128 KiB of float16 KV per token and the 8B weights less the gathered embedding table", () => {
    expect(kvBytesPerToken(llama8b)).toBe(131_072)
    expect(weightBytesPerStep(llama8b, 1)).toBe((8_030_261_248 - 525_336_576) * 2 + 4096 * 2)
    expect(weightBytesPerStep(llama8b, 64) - weightBytesPerStep(llama8b, 1)).toBe(63 * 4096 * 2)
    // A tied table is the LM head too, so it is read whole.
    expect(weightBytesPerStep({ ...llama8b, tiedEmbeddings: true }, 1)).toBe(8_030_261_248 * 2 + 4096 * 2)
    expect(decodeStepBytes(llama8b, 2, 3000)).toBe(weightBytesPerStep(llama8b, 2) + 3000 * 131_072)
  })

  it("sums every step's bytes: step s attends to startPosition + s + 1 positions per sequence", () => {
    const bw = 4e12
    const w = { batch: 8, startPosition: 512, steps: 255 }
    let bytes = 0
    for (let s = 0; s < w.steps; s++) bytes += decodeStepBytes(llama8b, w.batch, w.batch * (w.startPosition + s + 1))
    const r = decodeRoofline(llama8b, w, bw)
    expect(r.bytes).toBe(bytes)
    expect(r.seconds).toBeCloseTo(bytes / bw, 12)
    expect(r.tokensPerSecond).toBeCloseTo((8 * 255) / (bytes / bw), 6)
    expect(r.msPerStep).toBeCloseTo((1000 * bytes) / bw / 255, 9)
    // Single stream at 1k context on a 4 TB/s copy rate: about 15 GB per step, so a little under 270 tokens/s.
    const single = decodeRoofline(llama8b, { batch: 1, startPosition: 1024, steps: 128 }, bw)
    expect(single.tokensPerSecond).toBeGreaterThan(255)
    expect(single.tokensPerSecond).toBeLessThan(4e12 / 15.0e9)
    expect(() => decodeRoofline(llama8b, w, 0)).toThrow(RangeError)
    expect(() => decodeRoofline(llama8b, { ...w, steps: 0 }, bw)).toThrow(RangeError)
  })

  it("prices a prefill at 2 FLOPs per weight per token plus causal attention, floored by the weight read", () => {
    const linear = 32 * (4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336)
    const attention = 2 * 32 * 4096 * 512 * 512
    expect(prefillFlops(llama8b, 512)).toBe(2 * linear * 512 + attention + 2 * 128256 * 4096)
    // 512 tokens: about 7.2 TFLOP, 9 ms at 800 TFLOP/s, more than the 3.75 ms weight read at 4 TB/s.
    expect(prefillRooflineMs(llama8b, 512, 4e12, 800e12)).toBeCloseTo((1000 * prefillFlops(llama8b, 512)) / 800e12, 9)
    expect(prefillRooflineMs(llama8b, 1, 4e12, 800e12)).toBeCloseTo((1000 * weightBytesPerStep(llama8b, 1)) / 4e12, 9)
  })

  it("reads a checkpoint's shape from config.json and the safetensors headers", async () => {
    const a = await Effect.runPromise(loadModelShape(path.join(fixtures, "tiny-llama3-a"), 2))
    // tiny-llama3-a: vocab 512, hidden 64, 2 layers, 4 heads / 2 kv heads of 16, MLP 176, untied.
    const layer = 64 + 64 * 64 + 2 * (32 * 64) + 64 * 64 + 64 + 3 * 64 * 176
    expect(a).toMatchObject({ numLayers: 2, numKvHeads: 2, headDim: 16, tiedEmbeddings: false, embeddingElements: 512 * 64, bytesPerElement: 2 })
    expect(a.totalElements).toBe(2 * 512 * 64 + 2 * layer + 64)
    const b = await Effect.runPromise(loadModelShape(path.join(fixtures, "tiny-llama3-b"), 4))
    expect(b.tiedEmbeddings).toBe(true)
    expect(b.totalElements).toBe(640 * 96 + 3 * (96 + 96 * 96 + 2 * 32 * 96 + 96 * 96 + 96 + 3 * 96 * 256) + 96)
    await expect(Effect.runPromise(loadModelShape(path.join(fixtures, "no-such-model"), 2))).rejects.toThrow(/no-such-model/)
  })
})
