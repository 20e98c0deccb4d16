// AWQ and GPTQ checkpoints on the device runtime: their repacked MatMulNBits graphs (any group size the checkpoint
// has, 16 to 128 here, where `--quantize int4` only makes 32 and 128) compute the float model of the weights the
// checkpoint stands for (test/support/quantizedCheckpoint.ts dequantizes them by the reference formulas).
// `npm run test:device` on a GPU host (CHORUS_TEST_DEVICE=cuda, the default) or CHORUS_TEST_DEVICE=cpu here.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import type { Llama3Options } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { readReference, relativeError } from "../support/fixtures.ts"
import { quantizedCheckpoint, type QuantScheme } from "../support/quantizedCheckpoint.ts"
import { deviceUnderTest, runGreedy } from "../support/greedyRuns.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-quant-ckpt-device-"))
process.env.CHORUS_CACHE ??= path.join(root, "cache")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
const { device } = deviceUnderTest()
const runAll = (options: Llama3Options, prompts: ReadonlyArray<ReadonlyArray<number>>) =>
  runGreedy(options, { device, nativeRuntime: true, maxNumSeqs: 4, maxNumBatchedTokens: 512 }, prompts, { promptLogits: "last", concurrent: true })

const awq: QuantScheme = { method: "awq" }
const gptqV2: QuantScheme = { method: "gptq", format: "gptq_v2", sym: false }
const gptqV1Sym: QuantScheme = { method: "gptq", format: "gptq", sym: true }

describe.each([
  ["tiny-llama3-a", awq, 16, "float16"],
  ["tiny-llama3-b", awq, 32, "float16"],
  ["tiny-llama3-a", gptqV2, 16, "float16"],
  ["tiny-llama3-b", gptqV1Sym, 32, "float16"],
  ["tiny-llama3-a", awq, 16, "float32"]
] as const)(`${device.kind}: %s %o, groups of %i, %s`, (name, scheme, groupSize, dtype) => {
  // As Int4Device.test.ts: float32 sums in another order (1e-4); float16 rounds activations at every op (2e-2).
  const tolerance = dtype === "float32" ? 1e-4 : 2e-2
  it("logits are those of the float model the checkpoint stands for", async () => {
    const prompts = readReference(name).prompts.map((p) => p.input_ids)
    const { dir, floatDir } = await quantizedCheckpoint(root, name, scheme, { groupSize })
    const options = { dtype, maxContext: 512, attention: "fused" } as const
    const quant = await runAll({ ...options, modelDir: dir }, prompts)
    const float = await runAll({ ...options, modelDir: floatDir }, prompts)
    quant.forEach((r, i) => {
      expect(relativeError(r.logits, float[i]!.logits)).toBeLessThan(tolerance)
      if (dtype === "float32") expect(r.tokens).toEqual(float[i]!.tokens)
      else expect(r.tokens[0]).toBe(float[i]!.tokens[0])
    })
  })
})
