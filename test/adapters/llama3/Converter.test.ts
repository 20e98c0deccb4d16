// Conversion cache: content-keyed hits, atomic writes (nothing half-written on failure or interrupt), shape checks.
import { Deferred, Effect, Exit, Fiber } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { cachePerTest } from "../../support/cachePerTest.ts"
import { describe, expect, it } from "vitest"
import { convertCheckpoint, type ConvertProgress, loadConvertedModel, MANIFEST_FILE, planShards } from "../../../src/adapters/llama3/Converter.ts"

const fixture = (name: string) => path.resolve(import.meta.dirname, "../../fixtures", name)
const { root, cache } = cachePerTest("chorus-convert-")

/** Entries of `<cache>/converted` (none when the folder does not exist). */
const convertedEntries = () => (fs.existsSync(path.join(cache(), "converted")) ? fs.readdirSync(path.join(cache(), "converted")) : [])

/** A writable copy of a fixture's checkpoint files. */
const copyFixture = (name: string) => {
  const dir = fs.mkdtempSync(path.join(root, `${name}-`))
  for (const f of ["config.json", "generation_config.json", "model.safetensors"]) fs.copyFileSync(path.join(fixture(name), f), path.join(dir, f))
  for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644)
  return dir
}

describe("planShards", () => {
  it("splits layers into contiguous ranges differing by at most one", () => {
    expect(planShards(32, 3)).toEqual([[0, 11], [11, 22], [22, 32]])
    expect(planShards(3, 2)).toEqual([[0, 2], [2, 3]])
    expect(planShards(4, 4)).toEqual([[0, 1], [1, 2], [2, 3], [3, 4]])
    expect(planShards(2, 1)).toEqual([[0, 2]])
    expect(() => planShards(3, 4)).toThrow(/from 1 to 3/)
    expect(() => planShards(3, 0)).toThrow(RangeError)
  })
})

describe("convertCheckpoint", () => {
  it("writes shards and a manifest, then a second call is a fast cache hit on the same folder", async () => {
    const progress: Array<ConvertProgress> = []
    const first = await Effect.runPromise(
      convertCheckpoint({ modelDir: fixture("tiny-llama3-b"), dtype: "float32", shards: 2, onProgress: (p) => progress.push(p) })
    )
    expect(first.cached).toBe(false)
    expect(path.dirname(first.dir)).toBe(path.join(cache(), "converted"))
    expect(path.basename(first.dir)).toBe(first.manifest.key)
    expect(first.manifest.maxContext).toBe(8192) // min(131072, 8192)
    expect(first.manifest.shards).toEqual([
      { file: "shard-0.onnx", layers: [0, 2], first: true, last: false },
      { file: "shard-1.onnx", layers: [2, 3], first: false, last: true }
    ])
    expect(first.manifest.config.ropeScaling?.factor).toBe(8)
    expect(first.shardPaths.every((p) => fs.existsSync(p) && fs.existsSync(`${p}.data`))).toBe(true)
    // progress is monotonic and ends at the total
    const last = progress[progress.length - 1]
    expect(last.bytesDone).toBe(last.bytesTotal)
    expect(progress.every((p, i) => i === 0 || p.bytesDone > progress[i - 1].bytesDone)).toBe(true)
    // the memo of file hashes names the checkpoint by its real path
    const memo = JSON.parse(fs.readFileSync(path.join(cache(), "hashes.json"), "utf8")) as Record<string, unknown>
    expect(Object.keys(memo)).toContain(fs.realpathSync(path.join(fixture("tiny-llama3-b"), "model.safetensors")))

    const mtime = fs.statSync(`${first.shardPaths[0]}.data`).mtimeMs
    const t0 = performance.now()
    const second = await Effect.runPromise(convertCheckpoint({ modelDir: fixture("tiny-llama3-b"), dtype: "float32", shards: 2 }))
    const elapsed = performance.now() - t0
    expect(second.cached).toBe(true)
    expect(second.dir).toBe(first.dir)
    expect(fs.statSync(`${second.shardPaths[0]}.data`).mtimeMs).toBe(mtime) // not rewritten
    expect(elapsed).toBeLessThan(500)

    // other options give another key
    const f16 = await Effect.runPromise(convertCheckpoint({ modelDir: fixture("tiny-llama3-b"), dtype: "float16", shards: 2 }))
    expect(f16.cached).toBe(false)
    expect(f16.dir).not.toBe(first.dir)
    expect(convertedEntries().sort()).toEqual([first.manifest.key, f16.manifest.key].sort())
  })

  it("a truncated safetensors file fails with a CheckpointError and leaves nothing in the cache", async () => {
    const dir = copyFixture("tiny-llama3-a")
    const file = path.join(dir, "model.safetensors")
    fs.truncateSync(file, Math.floor(fs.statSync(file).size * 0.6))
    const error = await Effect.runPromise(Effect.flip(convertCheckpoint({ modelDir: dir, dtype: "float32", shards: 2 })))
    expect(error._tag).toBe("CheckpointError")
    expect(error.message).toContain("model.safetensors")
    expect(convertedEntries()).toEqual([])
  })

  it("a tensor whose shape disagrees with config.json is named with expected and found shapes, before anything is written", async () => {
    const dir = copyFixture("tiny-llama3-a")
    const configFile = path.join(dir, "config.json")
    fs.writeFileSync(configFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, "utf8")), intermediate_size: 128 }))
    const error = await Effect.runPromise(Effect.flip(convertCheckpoint({ modelDir: dir, dtype: "float32", shards: 1 })))
    expect(error._tag).toBe("CheckpointError")
    expect(error.message).toContain("'model.layers.0.mlp.gate_proj.weight'")
    expect(error.message).toContain("expected shape [128, 64]")
    expect(error.message).toContain("found [176, 64]")
    expect(convertedEntries()).toEqual([])
  })

  it("an interrupt in the middle of writing removes the temporary folder", async () => {
    const program = Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      let events = 0
      const fiber = yield* Effect.forkChild(
        convertCheckpoint({
          modelDir: fixture("tiny-llama3-b"),
          dtype: "float32",
          shards: 3,
          onProgress: () => {
            events++
            Deferred.doneUnsafe(started, Effect.void)
          }
        })
      )
      yield* Deferred.await(started)
      expect(convertedEntries().length).toBe(1) // the temporary folder exists while writing
      yield* Fiber.interrupt(fiber)
      const exit = yield* Fiber.await(fiber)
      return { exit, events }
    })
    const { exit, events } = await Effect.runPromise(program)
    expect(Exit.isFailure(exit) && Exit.hasInterrupts(exit)).toBe(true)
    expect(events).toBeGreaterThan(0)
    expect(convertedEntries()).toEqual([])
  })

  it("a first sight of the files hashes them while converting; a copy of the same checkpoint finds the same entry and leaves nothing behind", async () => {
    const first = await Effect.runPromise(convertCheckpoint({ modelDir: fixture("tiny-llama3-a"), dtype: "float32", shards: 1 }))
    expect(first.cached).toBe(false)
    expect(path.basename(first.dir)).toBe(first.manifest.key) // the key came in while the shards were written
    // A copy elsewhere has no digests in the memo: converted again alongside its digests, which name the entry that exists.
    const copy = path.join(root, "copy-of-a")
    fs.cpSync(fixture("tiny-llama3-a"), copy, { recursive: true })
    const again = await Effect.runPromise(convertCheckpoint({ modelDir: copy, dtype: "float32", shards: 1 }))
    expect(again.dir).toBe(first.dir)
    expect(again.manifest.key).toBe(first.manifest.key)
    expect(again.manifest.sourceDir).toBe(first.manifest.sourceDir) // the entry that was there is kept
    expect(convertedEntries()).toEqual([first.manifest.key]) // no temporary folder left
    // Now both paths are in the memo: a plain hit.
    const hit = await Effect.runPromise(convertCheckpoint({ modelDir: copy, dtype: "float32", shards: 1 }))
    expect(hit.cached).toBe(true)
    expect(hit.dir).toBe(first.dir)
  })

  it("outDir writes there directly, and loadConvertedModel rejects a damaged manifest", async () => {
    const out = path.join(root, "out-a")
    const model = await Effect.runPromise(convertCheckpoint({ modelDir: fixture("tiny-llama3-a"), outDir: out, dtype: "float16", shards: 1, maxContext: 256 }))
    expect(model.dir).toBe(out)
    expect(model.manifest.maxContext).toBe(256)
    expect(model.manifest.dtype).toBe("float16")
    expect(fs.existsSync(path.join(cache(), "converted"))).toBe(false)
    const loaded = await Effect.runPromise(loadConvertedModel(out))
    expect(loaded.manifest).toEqual(model.manifest)

    const manifestFile = path.join(out, MANIFEST_FILE)
    fs.writeFileSync(manifestFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(manifestFile, "utf8")), dtype: "int4" }))
    const error = await Effect.runPromise(Effect.flip(loadConvertedModel(out)))
    expect(error._tag).toBe("ConversionError")
    expect(error.message).toContain(manifestFile)

    const tooLong = await Effect.runPromise(Effect.flip(convertCheckpoint({ modelDir: fixture("tiny-llama3-a"), outDir: out, dtype: "float32", shards: 1, maxContext: 9000 })))
    expect(tooLong.message).toContain("found 9000")
  })
})
