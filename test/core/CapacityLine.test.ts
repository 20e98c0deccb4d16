// The start-up log's KV cache line (describeCapacity): what the pool holds, why prefix caching is off, a --max-batch
// lowered by memory, and, on CUDA, which of Chorus's kernels the shards run or why they run ONNX Runtime's.
import { describe, expect, it } from "vitest"
import { describeCapacity, type EngineCapacity } from "../../src/core/Engine.ts"

const base: EngineCapacity = {
  numBlocks: 2048,
  blockSize: 16,
  kvBytes: 2 ** 31,
  fullContextSequences: 4,
  prefixCaching: true,
  maxNumSeqs: 16,
  requestedMaxNumSeqs: 16
}

describe("describeCapacity", () => {
  it("names the pool, its bytes and the sequences at the full context", () => {
    expect(describeCapacity(base, 8192)).toBe(
      "KV cache: 2048 blocks of 16 tokens (32768 tokens, 2.00 GiB), 4 sequences at the full context of 8192; prefix caching on"
    )
  })

  it("adds why prefix caching is off, a lowered --max-batch and the kernels' note, in that order", () => {
    const line = describeCapacity(
      {
        ...base,
        prefixCaching: false,
        prefixCachingOffBecause: "the row cache is not reused where CUDA graphs replay",
        maxNumSeqs: 8,
        kernels: "Chorus's kernels for 129 float16 linears (/opt/chorus/libchorus_cuda_ops.so)"
      },
      8192
    )
    expect(line).toBe(
      "KV cache: 2048 blocks of 16 tokens (32768 tokens, 2.00 GiB), 4 sequences at the full context of 8192; prefix caching off " +
        "(the row cache is not reused where CUDA graphs replay); --max-batch 16 lowered to 8 by memory (lower --context-length for more); " +
        "Chorus's kernels for 129 float16 linears (/opt/chorus/libchorus_cuda_ops.so)"
    )
  })

  it("says nothing about kernels where no shard reported any (the CPU, or ORT's kernels by choice)", () => {
    expect(describeCapacity({ ...base, kvBytes: 0 }, 512)).not.toMatch(/kernels/)
  })
})
