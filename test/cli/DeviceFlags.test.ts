// `--device cuda:all` and several GPUs: how the device text parses (with the GPU count given, not asked of the
// host), how the GPUs are counted, and what `--shards` defaults to and refuses.
import { Effect, Exit } from "effect"
import { describe, expect, it } from "vitest"
import { parseFlags } from "../../src/cli/Args.ts"
import { modelFlags, resolveModelFlags } from "../../src/cli/ModelFlags.ts"
import { ValidationError } from "../../src/core/Errors.ts"
import { countGpus, GpuCountUnavailable } from "../../src/core/native/GpuCount.ts"
import { gpuCountOf, parseDevice, shardDevice } from "../../src/core/shard/StepProtocol.ts"

describe("parseDevice", () => {
  it("cuda:all takes GPUs 0 to count - 1", () => {
    expect(parseDevice("cuda:all", 4)).toEqual({ kind: "cuda", id: 0, ids: [0, 1, 2, 3] })
    expect(parseDevice("cuda:all", 1)).toEqual({ kind: "cuda", id: 0 })
  })

  it("cuda:all without a count of at least one is no device", () => {
    expect(parseDevice("cuda:all")).toBeUndefined()
    expect(parseDevice("cuda:all", 0)).toBeUndefined()
    expect(parseDevice("cuda:all", 1.5)).toBeUndefined()
  })

  it("keeps the listed forms", () => {
    expect(parseDevice("cuda:0,1", 8)).toEqual({ kind: "cuda", id: 0, ids: [0, 1] })
    expect(parseDevice("cuda:3")).toEqual({ kind: "cuda", id: 3 })
    expect(parseDevice("cuda:al")).toBeUndefined()
    expect(parseDevice("cuda:")).toBeUndefined()
  })

  it("puts shard i on the i-th GPU of cuda:all", () => {
    const device = parseDevice("cuda:all", 2)!
    expect([0, 1, 2, 3].map((i) => shardDevice(device, i))).toEqual([0, 1, 0, 1].map((id) => ({ kind: "cuda", id, ids: [0, 1] })))
    expect(gpuCountOf(device)).toBe(2)
    expect(gpuCountOf({ kind: "cuda", id: 5 })).toBe(1)
    expect(gpuCountOf({ kind: "cpu" })).toBe(0)
  })
})

describe("countGpus", () => {
  const listing = "GPU 0: NVIDIA H200 (UUID: GPU-aaa)\nGPU 1: NVIDIA H200 (UUID: GPU-bbb)\n"

  it("counts nvidia-smi -L's GPU lines", () => {
    expect(countGpus({}, () => listing)).toBe(2)
    expect(countGpus({}, () => "  MIG 1g.18gb Device 0: (UUID: MIG-x)\n")).toBe(0)
  })

  it("counts CUDA_VISIBLE_DEVICES's entries where it is set (CUDA hides the others)", () => {
    expect(countGpus({ CUDA_VISIBLE_DEVICES: "1" }, () => listing)).toBe(1)
    expect(countGpus({ CUDA_VISIBLE_DEVICES: "GPU-aaa,GPU-bbb,2" }, () => listing)).toBe(3)
    expect(countGpus({ CUDA_VISIBLE_DEVICES: "" }, () => listing)).toBe(0)
  })

  it("says how to go on when nvidia-smi fails", () => {
    expect(() => countGpus({}, () => { throw new Error("spawnSync nvidia-smi ENOENT") })).toThrow(GpuCountUnavailable)
    expect(() => countGpus({}, () => { throw new Error("spawnSync nvidia-smi ENOENT") })).toThrow(/nvidia-smi -L failed \(spawnSync nvidia-smi ENOENT\).*--device cuda:0,1/)
  })
})

describe("resolveModelFlags with several GPUs", () => {
  const resolve = (argv: ReadonlyArray<string>, gpuCount: () => number = () => { throw new Error("the GPU count was asked for") }) =>
    Effect.runSyncExit(resolveModelFlags(parseFlags("serve", argv, modelFlags), gpuCount))
  const failure = (exit: Exit.Exit<unknown, unknown>) => {
    if (!Exit.isFailure(exit)) throw new Error("expected a failure")
    const error = exit.cause.reasons.flatMap((r) => r._tag === "Fail" ? [r.error] : [])[0]
    expect(error).toBeInstanceOf(ValidationError)
    return error as ValidationError
  }

  it("cuda:all spreads one shard per GPU unless --shards says more", () => {
    const exit = resolve(["--device", "cuda:all"], () => 4)
    expect(Exit.isSuccess(exit) && exit.value.engine.device).toEqual({ kind: "cuda", id: 0, ids: [0, 1, 2, 3] })
    expect(Exit.isSuccess(exit) && exit.value.adapter.shards).toBe(4)
    const eight = resolve(["--device", "cuda:all", "--shards", "8"], () => 2)
    expect(Exit.isSuccess(eight) && eight.value.adapter.shards).toBe(8)
  })

  it("a listed pair defaults to two shards; one GPU keeps the old default", () => {
    const pair = resolve(["--device", "cuda:0,1"])
    expect(Exit.isSuccess(pair) && pair.value.adapter.shards).toBe(2)
    const one = resolve(["--device", "cuda:1"])
    expect(Exit.isSuccess(one) && one.value.adapter.shards).toBeUndefined()
  })

  it("refuses fewer shards than listed GPUs", () => {
    const error = failure(resolve(["--device", "cuda:0,1,2,3", "--shards", "2"]))
    expect(error.field).toBe("--shards")
    expect(error.message).toBe("--shards 2 leaves GPUs idle: --device cuda:0,1,2,3 lists 4; use at least 4 shards or list fewer GPUs")
  })

  it("--pipeline-depth: the engine's option; above 1 only with several shards, never below 1", () => {
    const two = resolve(["--shards", "2", "--pipeline-depth", "1"])
    expect(Exit.isSuccess(two) && two.value.engine.pipelineDepth).toBe(1)
    const pair = resolve(["--device", "cuda:0,1", "--pipeline-depth", "2"])
    expect(Exit.isSuccess(pair) && pair.value.engine.pipelineDepth).toBe(2)
    // Unset: the engine's default (the shard count).
    const unset = resolve(["--shards", "3"])
    expect(Exit.isSuccess(unset) && unset.value.engine.pipelineDepth).toBeUndefined()
    expect(failure(resolve(["--pipeline-depth", "2"])).message).toBe("--pipeline-depth 2 needs --shards 2 or more (one shard runs one step at a time)")
    expect(failure(resolve(["--shards", "2", "--pipeline-depth", "0"])).field).toBe("--pipeline-depth")
  })

  it("--max-num-batched-tokens below --max-batch (default 16) is refused, not raised in silence", () => {
    const low = failure(resolve(["--max-batch", "256", "--max-num-batched-tokens", "128"]))
    expect(low.field).toBe("--max-num-batched-tokens")
    expect(low.message).toBe("--max-num-batched-tokens 128 is below --max-batch 256: each running sequence takes a token a step")
    expect(failure(resolve(["--max-num-batched-tokens", "8"])).message).toMatch(/below --max-batch 16/)
    const equal = resolve(["--max-batch", "256", "--max-num-batched-tokens", "256"])
    expect(Exit.isSuccess(equal) && equal.value.engine.maxNumBatchedTokens).toBe(256)
  })

  it("cuda:all with no GPU, or no way to count them, names --device", () => {
    expect(failure(resolve(["--device", "cuda:all"], () => 0)).message).toMatch(/^--device cuda:all: no GPU found/)
    const unavailable = failure(resolve(["--device", "cuda:all"], () => { throw new GpuCountUnavailable("cannot count the GPUs: nvidia-smi -L failed (x)") }))
    expect(unavailable.field).toBe("--device")
    expect(unavailable.message).toBe("--device cuda:all: cannot count the GPUs: nvidia-smi -L failed (x)")
  })
})
