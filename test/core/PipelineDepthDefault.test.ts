import { describe, expect, it } from "vitest"
import { defaultPipelineDepth } from "../../src/core/Engine.ts"

describe("defaultPipelineDepth", () => {
  it("on the CPU: one step in flight per shard", () => {
    expect(defaultPipelineDepth({ kind: "cpu" }, 1)).toBe(1)
    expect(defaultPipelineDepth({ kind: "cpu" }, 3)).toBe(3)
  })

  it("on CUDA: the distinct GPUs the shards are on (shards sharing a GPU only take turns on it)", () => {
    expect(defaultPipelineDepth({ kind: "cuda", id: 0 }, 2)).toBe(1)
    expect(defaultPipelineDepth({ kind: "cuda", id: 0, ids: [0, 1] }, 2)).toBe(2)
    expect(defaultPipelineDepth({ kind: "cuda", id: 0, ids: [0, 1] }, 4)).toBe(2)
    expect(defaultPipelineDepth({ kind: "cuda", id: 0, ids: [0, 1, 2, 3] }, 2)).toBe(2)
    expect(defaultPipelineDepth({ kind: "cuda", id: 0, ids: [0, 1] }, 1)).toBe(1)
  })
})
