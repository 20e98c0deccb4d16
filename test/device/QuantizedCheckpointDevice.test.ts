// AWQ and GPTQ checkpoints on the device runtime: their repacked MatMulNBits graphs (any group size the checkpoint
// has, 16 to 128 here, where `--quantize int4` only makes 32 and 128) compute the float model of the weights the
// checkpoint stands for (test/support/quantizedCheckpoint.ts dequantizes them by the reference formulas).
// `npm run test:device` on a GPU host (CHORUS_TEST_DEVICE=cuda, the default) or CHORUS_TEST_DEVICE=cpu here.
import { Effect, ManagedRuntime, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { Llama3Adapter, type Llama3Options } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../../src/core/Engine.ts"
import type { GenerateRequest, GenerationEvent } from "../../src/core/Request.ts"
import { type Device, parseDevice } from "../../src/core/shard/StepProtocol.ts"
import { readReference, relativeError } from "../support/fixtures.ts"
import { quantizedCheckpoint, type QuantScheme } from "../support/quantizedCheckpoint.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-quant-ckpt-device-"))
process.env.CHORUS_CACHE ??= path.join(root, "cache")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
const parsed: Device = parseDevice(process.env.CHORUS_TEST_DEVICE ?? "cuda") ?? { kind: "cuda", id: 0 }
const device: Device = parsed.kind === "cuda" && process.env.CHORUS_TEST_CUDA_GRAPHS === "1"
  ? { ...parsed, options: { enable_cuda_graph: "1" } }
  : parsed

const collect = (events: ReadonlyArray<GenerationEvent>) => ({
  tokens: events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])),
  logits: events.flatMap((e) => (e._tag === "Started" && e.promptLogits !== undefined ? [e.promptLogits] : []))[0]!
})
const greedy = (tokenIds: ReadonlyArray<number>): GenerateRequest => ({
  input: { type: "tokens", tokenIds },
  maxTokens: 16,
  sampling: { temperature: 0 },
  ignoreEos: true,
  promptLogits: "last"
})
const runAll = async (options: Llama3Options, prompts: ReadonlyArray<ReadonlyArray<number>>) => {
  const runtime = ManagedRuntime.make(Engine.layer(Llama3Adapter, options, { device, nativeRuntime: true, maxNumSeqs: 4, maxNumBatchedTokens: 512 }))
  try {
    return await Promise.all(prompts.map((p) => runtime.runPromise(Engine.use((e) => Stream.runCollect(e.generate(greedy(p)))).pipe(Effect.map(collect)))))
  } finally {
    await runtime.dispose()
  }
}

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
