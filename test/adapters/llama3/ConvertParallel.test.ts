// The parallel converter (worker threads, positional writes, raw 16-bit transposes) writes exactly the bytes of the
// sequential float32 path (threads: 0), for every source dtype x target dtype, across shards, NaNs included.
import { Deferred, Effect, Exit, Fiber } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { makeConvertPool } from "../../../src/adapters/llama3/ConvertPool.ts"
import { convertCheckpoint, type ConvertProgress } from "../../../src/adapters/llama3/Converter.ts"
import { buildShardGraph, writeShards } from "../../../src/adapters/llama3/GraphBuilder.ts"
import { loadLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { openCheckpoint, type SafetensorsTensor, writeSafetensors } from "../../../src/checkpoint/Safetensors.ts"
import type { StorageDType } from "../../../src/checkpoint/TensorSource.ts"
import { fixtureDir } from "../../support/fixtures.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-convert-parallel-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

/** The fixture re-stored as `dtype` (float32 values rounded), optionally with NaNs planted in a linear and a norm. */
const restore = async (name: string, dtype: StorageDType, nan = false): Promise<string> => {
  const dir = fs.mkdtempSync(path.join(root, `${name}-${dtype}-`))
  for (const f of ["config.json", "generation_config.json"]) fs.copyFileSync(path.join(fixtureDir(name), f), path.join(dir, f))
  const src = await Effect.runPromise(openCheckpoint(fixtureDir(name)))
  const tensors: Array<SafetensorsTensor> = []
  for (const t of src.names) {
    const data = await Effect.runPromise(src.readFloat32(t))
    if (nan && (t === "model.layers.0.self_attn.k_proj.weight" || t === "model.norm.weight")) {
      data[3] = Number.NaN
      data[5] = -Number.NaN
    }
    tensors.push({ name: t, dtype, shape: src.info(t)!.shape, data })
  }
  await Effect.runPromise(writeSafetensors(path.join(dir, "model.safetensors"), tensors))
  return dir
}

const convert = (modelDir: string, outDir: string, dtype: "float32" | "float16" | "bfloat16", threads: number, shards: number, onProgress?: (p: ConvertProgress) => void) =>
  Effect.runPromise(convertCheckpoint({ modelDir, outDir, dtype, shards, maxContext: 512, threads, ...(onProgress ? { onProgress } : {}) }))

const expectSameFiles = (a: string, b: string) => {
  const files = fs.readdirSync(a).sort()
  expect(fs.readdirSync(b).sort()).toEqual(files)
  for (const f of files) {
    const x = fs.readFileSync(path.join(a, f))
    const y = fs.readFileSync(path.join(b, f))
    expect(y.length, f).toBe(x.length)
    expect(Buffer.compare(x, y), f).toBe(0)
  }
}

let n = 0
const compare = async (modelDir: string, dtype: "float32" | "float16" | "bfloat16", shards: number) => {
  const ref = path.join(root, `ref-${n}`)
  const par = path.join(root, `par-${n++}`)
  await convert(modelDir, ref, dtype, 0, shards)
  await convert(modelDir, par, dtype, 2, shards)
  expectSameFiles(ref, par)
}

describe("parallel conversion", () => {
  for (const name of ["tiny-llama3-a", "tiny-llama3-b"]) {
    for (const source of ["F32", "F16", "BF16"] as const) {
      it(`${name}, ${source} checkpoint: float32, float16 and bfloat16 outputs are byte-identical to the sequential path`, async () => {
        const dir = source === "F32" ? fixtureDir(name) : await restore(name, source)
        for (const dtype of ["float32", "float16", "bfloat16"] as const) await compare(dir, dtype, 2)
        await compare(dir, source === "BF16" ? "bfloat16" : "float16", 1)
      })
    }
  }

  it("tensors holding NaNs take the float32 path and stay byte-identical", async () => {
    for (const source of ["F32", "F16", "BF16"] as const) {
      const dir = await restore("tiny-llama3-a", source, true)
      for (const dtype of ["float32", "float16", "bfloat16"] as const) await compare(dir, dtype, 2)
    }
  })

  it("reports every initializer once, and its bytes up to the total", async () => {
    const progress: Array<ConvertProgress> = []
    await convert(fixtureDir("tiny-llama3-b"), path.join(root, "progress"), "float16", 3, 2, (p) => progress.push(p))
    const last = progress[progress.length - 1]
    expect(last.bytesDone).toBe(last.bytesTotal)
    expect(progress.every((p, i) => i === 0 || p.bytesDone > progress[i - 1].bytesDone)).toBe(true)
    const names = progress.map((p) => p.tensor)
    // the RoPE caches are in both shards, every other initializer in one
    expect(names.filter((t) => t === "rope_cos").length).toBe(2)
    expect(new Set(names.filter((t) => !t.startsWith("rope_"))).size).toBe(names.length - 4)
    expect(names).toContain("embed_tokens")
    expect(names).toContain("lm_head")
  })

  it("a checkpoint cut short after its headers were read fails in the worker with a CheckpointError naming the file", async () => {
    const dir = await restore("tiny-llama3-a", "F16")
    const file = path.join(dir, "model.safetensors")
    const config = await Effect.runPromise(loadLlamaConfig(dir))
    const source = await Effect.runPromise(openCheckpoint(dir))
    fs.truncateSync(file, fs.statSync(file).size - 2)
    const graph = buildShardGraph(config, { layers: [0, 2], dtype: "float16", maxContext: 64 })
    const out = fs.mkdtempSync(path.join(root, "trunc-"))
    const error = await Effect.runPromise(
      Effect.flip(Effect.scoped(Effect.flatMap(makeConvertPool(2), (pool) => writeShards(source, config, [graph], [path.join(out, "shard-0.onnx")], pool))))
    )
    expect(error._tag).toBe("CheckpointError")
    expect(error.message).toContain("model.safetensors is truncated")
  })

  it("an interrupt starts no new tensor and returns only once the tensors in flight are written", async () => {
    const dir = fixtureDir("tiny-llama3-b")
    const config = await Effect.runPromise(loadLlamaConfig(dir))
    const source = await Effect.runPromise(openCheckpoint(dir))
    const graph = buildShardGraph(config, { layers: [0, 3], dtype: "float16", maxContext: 64 })
    const out = fs.mkdtempSync(path.join(root, "interrupt-"))
    let inFlight = 0
    let started = 0
    const program = Effect.scoped(
      Effect.gen(function*() {
        const pool = yield* makeConvertPool(2)
        const runner = {
          threads: pool.threads,
          run: (task: Parameters<typeof pool.run>[0]) =>
            Effect.sync(() => (inFlight++, started++)).pipe(
              Effect.andThen(pool.run(task)),
              Effect.ensuring(Effect.sync(() => inFlight--))
            )
        }
        const firstDone = yield* Deferred.make<void>()
        const fiber = yield* Effect.forkChild(
          writeShards(source, config, [graph], [path.join(out, "shard-0.onnx")], runner, { onTensor: () => Deferred.doneUnsafe(firstDone, Effect.void) })
        )
        yield* Deferred.await(firstDone)
        yield* Fiber.interrupt(fiber)
        return yield* Fiber.await(fiber)
      })
    )
    const exit = await Effect.runPromise(program)
    expect(Exit.hasInterrupts(exit)).toBe(true)
    expect(inFlight).toBe(0)
    expect(started).toBeLessThan(graph.weights.length - 2) // stopped early (two of the weights are RoPE caches)
    expect(fs.existsSync(path.join(out, "shard-0.onnx"))).toBe(false) // the graph is written only after every tensor
  })
})
