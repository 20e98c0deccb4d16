// Chorus's 4-bit kernels (`--linear-kernels chorus`: chorus.Int4Linear from native/build-cuda, npm run build:cuda-ops)
// against ONNX Runtime's MatMulNBits on the same int4 shards: the same logits within float16's bound and the same
// greedy tokens, for one prompt at a time (decode steps of one row) and all prompts batched (2-4 rows a decode
// step), through each of the library's paths: its default (tensor cores up to 128 rows, the fixtures' prompts
// included, with split-K on their small N), CHORUS_INT4_KERNEL=gemv1 (the GEMV up to 8 rows, prompts of more
// through dequantize + cuBLAS) and mma-w2 / mma-w4 (longer runs a lane up to 8 rows). CUDA only (the library has
// no CPU kernel); with CHORUS_TEST_CUDA_GRAPHS=1 the decode steps replay captured graphs through the custom op.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import type { Llama3Options } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { defaultInt4 } from "../../src/adapters/llama3/Quantization.ts"
import { cudaOpsLibrary, cudaOpsLibraryPath } from "../../src/core/native/CudaOps.ts"
import { fixtureDir, readReference, relativeError } from "../support/fixtures.ts"
import { deviceUnderTest, runGreedy } from "../support/greedyRuns.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-ops-device-"))
process.env.CHORUS_CACHE ??= path.join(root, "cache")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
const { device } = deviceUnderTest()

describe.runIf(device.kind === "cuda")("chorus.Int4Linear on CUDA", () => {
  it("the library is built (npm run build:cuda-ops)", () => {
    expect(cudaOpsLibrary(), cudaOpsLibraryPath()).toBeDefined()
  })

  describe.each([
    ["tiny-llama3-a", defaultInt4, "auto"],
    ["tiny-llama3-b", { ...defaultInt4, symmetric: true }, "auto"],
    ["tiny-llama3-a", { ...defaultInt4, blockSize: 128 as const, symmetric: true }, "auto"],
    ["tiny-llama3-b", { ...defaultInt4, blockSize: 128 as const }, "auto"],
    ["tiny-llama3-a", defaultInt4, "gemv1"],
    ["tiny-llama3-b", { ...defaultInt4, blockSize: 128 as const, symmetric: true }, "gemv1"],
    ["tiny-llama3-b", defaultInt4, "mma-w4"],
    ["tiny-llama3-b", { ...defaultInt4, symmetric: true }, "mma-w2"]
  ] as const)("%s, %o, CHORUS_INT4_KERNEL=%s", (name, q, kernel) => {
    const options: Llama3Options = { modelDir: fixtureDir(name), dtype: "float16", maxContext: 512, attention: "fused", quantize: q }
    for (const concurrent of [false, true]) {
      it(`equals MatMulNBits ${concurrent ? "with the prompts batched" : "one prompt at a time"}`, async () => {
        const prompts = readReference(name).prompts.map((p) => p.input_ids)
        const run = (linearKernels: "ort" | "chorus") =>
          runGreedy(options, { device, nativeRuntime: true, maxNumSeqs: 4, maxNumBatchedTokens: 512, linearKernels }, prompts, {
            promptLogits: "last",
            concurrent
          })
        const ort = await run("ort")
        // The library reads the variable when a session makes its kernels (the shard threads share this process's
        // environment).
        const saved = process.env.CHORUS_INT4_KERNEL
        process.env.CHORUS_INT4_KERNEL = kernel
        const chorus = await run("chorus").finally(() => {
          if (saved === undefined) delete process.env.CHORUS_INT4_KERNEL
          else process.env.CHORUS_INT4_KERNEL = saved
        })
        chorus.forEach((r, i) => {
          // The same dequantized weights times the same float16 activations; only the order of the float32 sums
          // differs, and the activations are rounded to float16 at every op on both sides.
          expect(relativeError(r.logits, ort[i].logits)).toBeLessThan(2e-2)
          // The first token is the argmax of those logits: equal, or a near-tie that float16 sums may order either
          // way (the fixtures' random weights give flat logits: seen once, tokens 483 and 383).
          if (r.tokens[0] !== ort[i].tokens[0]) {
            const l = ort[i].logits
            const scale = Math.max(...Array.from(l, Math.abs))
            expect(Math.abs(l[r.tokens[0]!]! - l[ort[i].tokens[0]!]!)).toBeLessThan(1e-2 * scale)
          }
        })
      })
    }
  })
})
