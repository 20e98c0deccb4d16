// `--layer-split` and `--gpu-memory`: how the layers are split over shards, checked against the checkpoint's layers,
// planned by each GPU's memory, and refused with one line naming the flag.
import { Effect, Exit } from "effect"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { convertCheckpoint } from "../../src/adapters/llama3/Converter.ts"
import { parseFlags } from "../../src/cli/Args.ts"
import { modelFlags, resolveModelFlags } from "../../src/cli/ModelFlags.ts"
import { fixtureDir, repoRoot } from "../support/fixtures.ts"

const model = fixtureDir("tiny-llama3-b") // 3 layers
const resolve = (argv: ReadonlyArray<string>) => Effect.runPromiseExit(resolveModelFlags(parseFlags("serve", ["--model", model, ...argv], modelFlags), () => 2))
const failure = (exit: Exit.Exit<unknown, { readonly message: string; readonly field?: string }>) =>
  Exit.isFailure(exit) ? exit.cause.toString() : "no failure"

describe("resolveModelFlags: the layer split", () => {
  it("--layer-split sets the shards and the split", async () => {
    const exit = await resolve(["--layer-split", "1,2"])
    expect(Exit.isSuccess(exit) && exit.value.adapter).toMatchObject({ shards: 2, layerSplit: [1, 2] })
  })

  it("--gpu-memory plans by memory: one count per GPU, every layer placed", async () => {
    const exit = await resolve(["--gpu-memory", "1,1", "--device", "cuda:0,1"])
    expect(Exit.isSuccess(exit)).toBe(true)
    const split = Exit.isSuccess(exit) ? exit.value.adapter.layerSplit : undefined
    expect(split?.length).toBe(2)
    expect(split!.reduce((a, b) => a + b, 0)).toBe(3)
  })

  it("refuses what cannot be split, naming the flag", async () => {
    expect(failure(await resolve(["--layer-split", "1,1"]))).toMatch(/--layer-split: a layer split must add up to the model's 3 layers, found 1 \+ 1 = 2/)
    expect(failure(await resolve(["--layer-split", "3,0"]))).toMatch(/every shard needs at least one layer/)
    expect(failure(await resolve(["--layer-split", "1,2", "--shards", "3"]))).toMatch(/--layer-split lists 2 value\(s\) for 3 shard\(s\)/)
    expect(failure(await resolve(["--layer-split", "1,2", "--gpu-memory", "80,80"]))).toMatch(/give --layer-split or --gpu-memory, not both/)
    expect(failure(await resolve(["--gpu-memory", "0,80"]))).toMatch(/--gpu-memory takes positive GiB per GPU, got 0,80/)
    const noModel = await Effect.runPromiseExit(resolveModelFlags(parseFlags("serve", ["--layer-split", "1,2"], modelFlags), () => 2))
    expect(failure(noModel)).toMatch(/--layer-split needs --model/)
  })
})

describe("a layer split in the conversion", () => {
  it("an unequal split gets its own cache entry; the equal split written out keeps the default's", async () => {
    const cache = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-split-cache-"))
    const saved = process.env.CHORUS_CACHE
    process.env.CHORUS_CACHE = cache
    try {
      const equal = await Effect.runPromise(convertCheckpoint({ modelDir: model, dtype: "float32", shards: 2 }))
      const explicitEqual = await Effect.runPromise(convertCheckpoint({ modelDir: model, dtype: "float32", shards: 2, layerSplit: [2, 1] }))
      const other = await Effect.runPromise(convertCheckpoint({ modelDir: model, dtype: "float32", shards: 2, layerSplit: [1, 2] }))
      expect(explicitEqual.dir).toBe(equal.dir)
      expect(other.dir).not.toBe(equal.dir)
      expect(other.manifest.shards.map((s) => s.layers)).toEqual([[0, 1], [1, 3]])
    } finally {
      if (saved === undefined) delete process.env.CHORUS_CACHE
      else process.env.CHORUS_CACHE = saved
      fs.rmSync(cache, { recursive: true, force: true })
    }
  })

  it("chorus convert --layer-split writes that split, and refuses a wrong one with one line and exit 2", () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "chorus-split-")), "onnx")
    const cli = path.join(repoRoot, "src/cli/main.ts")
    const ok = spawnSync(process.execPath, [cli, "convert", "--model", model, "--out", out, "--layer-split", "1,2"], { encoding: "utf8", timeout: 120_000 })
    expect(ok.status, ok.stderr).toBe(0)
    const manifest = JSON.parse(fs.readFileSync(path.join(out, "chorus-model.json"), "utf8")) as { shards: Array<{ layers: Array<number> }> }
    expect(manifest.shards.map((s) => s.layers)).toEqual([[0, 1], [1, 3]])
    const bad = spawnSync(process.execPath, [cli, "convert", "--model", model, "--out", out, "--layer-split", "2,2"], { encoding: "utf8", timeout: 120_000 })
    expect(bad.status).toBe(2)
    expect(bad.stderr).toBe("chorus: --layer-split: a layer split must add up to the model's 3 layers, found 2 + 2 = 4\n")
  })
})
