// 4-bit weights (MatMulNBits) on the device runtime: the int4 graphs in the device layouts (`fused` row cache, or
// `paged` with CHORUS_TEST_ATTENTION=paged; CUDA graphs with CHORUS_TEST_CUDA_GRAPHS=1) compute the float model of
// their dequantized weights. `npm run test:device` on a GPU host (CHORUS_TEST_DEVICE=cuda, the default) or here on
// the CPU (CHORUS_TEST_DEVICE=cpu, the same addon with the CPU execution provider).
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import type { Llama3Options } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { defaultInt4 } from "../../src/adapters/llama3/Quantization.ts"
import { dequantizedFixture } from "../support/dequantizedFixture.ts"
import { fixtureDir, readReference, relativeError } from "../support/fixtures.ts"
import { deviceUnderTest, runGreedy } from "../support/greedyRuns.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-int4-device-"))
process.env.CHORUS_CACHE ??= path.join(root, "cache")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
const { device } = deviceUnderTest()
const halfAttention = process.env.CHORUS_TEST_ATTENTION === "paged" ? "paged" : "fused"
const runAll = (options: Llama3Options, prompts: ReadonlyArray<ReadonlyArray<number>>) =>
  runGreedy(options, { device, nativeRuntime: true, maxNumSeqs: 4, maxNumBatchedTokens: 512 }, prompts, { promptLogits: "last", concurrent: true })

describe.each([
  ["tiny-llama3-a", "float32", defaultInt4],
  ["tiny-llama3-b", "float32", { ...defaultInt4, blockSize: 128 as const, symmetric: true }],
  ["tiny-llama3-a", "float16", defaultInt4],
  ["tiny-llama3-b", "float16", { ...defaultInt4, blockSize: 128 as const, symmetric: true }]
] as const)(`${device.kind}: %s %s, %o`, (name, dtype, q) => {
  // float32: the same sums in another order (1e-4, the fixtures' float32 bound). float16: both sides round their
  // activations to float16 at every op, and MatMulNBits may dequantize in another order than a float16 MatMul over
  // pre-rounded weights, so half precision's own bound applies (2e-2, as DeviceParity's float16 logits).
  const tolerance = dtype === "float32" ? 1e-4 : 2e-2
  it("logits of the int4 model are those of the float model of its dequantized weights", async () => {
    const prompts = readReference(name).prompts.map((p) => p.input_ids)
    const attention = dtype === "float32" ? "fused" : halfAttention
    const int4 = await runAll({ modelDir: fixtureDir(name), dtype, maxContext: 512, attention, quantize: q }, prompts)
    const float = await runAll({ modelDir: await dequantizedFixture(root, name, q, dtype), dtype, maxContext: 512, attention }, prompts)
    int4.forEach((r, i) => {
      expect(relativeError(r.logits, float[i].logits)).toBeLessThan(tolerance)
      if (dtype === "float32") expect(r.tokens).toEqual(float[i].tokens)
      else expect(r.tokens[0]).toBe(float[i].tokens[0])
    })
  })
})
