// The engine on the CPU through the native IO-binding runtime (`nativeRuntime: true`) with the CPU's own graphs
// (rotary outside, the grammar's mask input): the same greedy tokens as onnxruntime-node. The addon binds every graph
// input, so a decode step that left the mask input out failed there. Build-conditional as NativeOrt.test.ts:
// unbuilt (CI) it registers nothing; `npm run test:native` builds the addon and requires it.
import { Effect, ManagedRuntime, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../../../src/core/Engine.ts"
import { NativeOrt } from "../../../src/core/native/NativeOrt.ts"
import { fixtureDir, readReference } from "../../support/fixtures.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-native-cpu-engine-"))
process.env.CHORUS_CACHE ??= path.join(root, "cache")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

const tokensOf = async (nativeRuntime: boolean, shards: number, prompts: ReadonlyArray<ReadonlyArray<number>>) => {
  const runtime = ManagedRuntime.make(Engine.layer(Llama3Adapter, { modelDir: fixtureDir("tiny-llama3-b"), shards }, { nativeRuntime, maxNumSeqs: 4, maxNumBatchedTokens: 64 }))
  try {
    return await Promise.all(prompts.map((tokenIds) =>
      runtime.runPromise(Engine.use((e) => Stream.runCollect(e.generate({ input: { type: "tokens", tokenIds }, maxTokens: 12, sampling: { temperature: 0 }, ignoreEos: true }))).pipe(
        Effect.map((events) => events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])))
      ))
    ))
  } finally {
    await runtime.dispose()
  }
}

describe("the native runtime on the CPU", () => {
  it(`${NativeOrt.isBuilt() ? "is built: the parity tests below run" : "is not built here: its parity tests are not registered"}`, () => {
    // `npm run test:native` builds the addon and requires it; elsewhere (CI) an unbuilt addon is expected.
    if (!NativeOrt.isBuilt()) expect(process.env.CHORUS_NATIVE_REQUIRED, `${NativeOrt.addonPath()} missing under test:native`).not.toBe("1")
    else expect(NativeOrt.load().ortVersion).toBe("1.29.0")
  })
})

if (NativeOrt.isBuilt()) {
  describe("the native runtime on the CPU's graphs", () => {
    it.each([1, 2])("greedy tokens over %i shard(s) equal onnxruntime-node's, prompts batched and decoded together", async (shards) => {
      const prompts = readReference("tiny-llama3-b").prompts.map((p) => p.input_ids)
      const [native, plain] = [await tokensOf(true, shards, prompts), await tokensOf(false, shards, prompts)]
      expect(native.every((t) => t.length === 12)).toBe(true)
      expect(native).toEqual(plain)
    })
  })
}
