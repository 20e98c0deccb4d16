// The pipeline roofline: bytes per shard per step, the in-sequence floor (sum of the stages) and the pipelined one
// (the slowest stage), on a small config whose bytes are counted here by hand.
import { describe, expect, it } from "vitest"
import { pipelineRoofline } from "../../../tools/bench-gpu/PipelineRoofline.ts"

// vocab 100, hidden 8, 2 query heads and 1 KV head of 4, FFN 16; a layer is q and o (8x8 each), k and v (4x8 each),
// gate, up and down (8x16 each) and two norms of 8.
const shape = { vocabSize: 100, hiddenSize: 8, intermediateSize: 16, numLayers: 4, numHeads: 2, numKvHeads: 1, headDim: 4, tieWordEmbeddings: false }
const layer = 8 * (2 * 8 + 2 * 4) + 3 * 8 * 16 + 2 * 8 // 592 elements
const kvPerTokenPerLayer = 2 * 1 * 4 // K and V of one head of 4

describe("pipelineRoofline", () => {
  it("counts each shard's streamed bytes: layers and KV, embedding rows gathered, LM head on the last", () => {
    const r = pipelineRoofline(shape, 2, "float16", { batch: 3, meanContext: 10 }, 1e9)
    const kv = 2 * kvPerTokenPerLayer * 2 * 3 * 10
    expect(r.shardBytes).toEqual([2 * (3 * 8 + 2 * layer) + kv, 2 * (2 * layer + 100 * 8 + 8) + kv])
  })

  it("in sequence: the sum of the stages; pipelined: the slowest stage", () => {
    const r = pipelineRoofline(shape, 2, "float32", { batch: 4, meanContext: 0 }, 2e9)
    const [a, b] = r.shardBytes as [number, number]
    expect(r.sequentialMs).toBeCloseTo((1000 * (a + b)) / 2e9, 12)
    expect(r.pipelinedMs).toBeCloseTo((1000 * Math.max(a, b)) / 2e9, 12)
    expect(r.sequentialTokensPerSecond).toBeCloseTo(4000 / r.sequentialMs, 9)
    expect(r.pipelinedTokensPerSecond).toBeGreaterThan(r.sequentialTokensPerSecond)
  })

  it("one shard: both floors are the same", () => {
    const r = pipelineRoofline(shape, 1, "float16", { batch: 1, meanContext: 100 }, 1e9)
    expect(r.pipelinedMs).toBe(r.sequentialMs)
  })

  it("refuses a bandwidth that is not positive", () => {
    expect(() => pipelineRoofline(shape, 2, "float16", { batch: 1, meanContext: 0 }, 0)).toThrow(RangeError)
  })
})
