// Chorus's 4-bit kernels (`--linear-kernels chorus`: chorus.Int4Linear from native/build-cuda, npm run build:cuda-ops)
// against ONNX Runtime's MatMulNBits on the same int4 shards: the same logits within float16's bound and the same
// greedy tokens, for one prompt at a time (decode steps of one row) and all prompts batched (2-4 rows a decode
// step), through each of the library's paths: its default (tensor cores up to 128 rows, 64-byte runs a lane up to
// 8, the fixtures' prompts included, with split-K on their small N), CHORUS_INT4_KERNEL=mma (16-byte runs from one
// row, split-K rounded up), gemv1 (the GEMV up to 8 rows, prompts of more through dequantize + cuBLAS), mma-w2 (32-byte
// runs), two accumulator chains and CHORUS_INT4_DEQUANT=lop3. CUDA only (the library has no CPU
// kernel); with CHORUS_TEST_CUDA_GRAPHS=1 the decode steps replay captured graphs through the custom op.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Llama3Options } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { defaultInt4 } from "../../src/adapters/llama3/Quantization.ts"
import { cudaOpsLibrary, cudaOpsLibraryPath } from "../../src/core/native/CudaOps.ts"
import { fixtureDir, readReference, relativeError, topTwoGap } from "../support/fixtures.ts"
import { deviceUnderTest, runGreedy } from "../support/greedyRuns.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-ops-device-"))
process.env.CHORUS_CACHE ??= path.join(root, "cache")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
const { device } = deviceUnderTest()

// The first token is the argmax of the prompt's logits: equal, or a near-tie that float16 sums may order either way
// (the fixtures' random weights give flat logits: seen once, tokens 483 and 383).
const expectSameFirstToken = (r: { tokens: Array<number>; logits: Float32Array }, ref: { tokens: Array<number>; logits: Float32Array }): void => {
  if (r.tokens[0] === ref.tokens[0]) return
  const scale = Math.max(...Array.from(ref.logits, Math.abs))
  expect(Math.abs(ref.logits[r.tokens[0]!]! - ref.logits[ref.tokens[0]!]!)).toBeLessThan(1e-2 * scale)
}

describe.runIf(device.kind === "cuda")("chorus.Int4Linear on CUDA", () => {
  it("the library is built (npm run build:cuda-ops)", () => {
    expect(cudaOpsLibrary(), cudaOpsLibraryPath()).toBeDefined()
  })

  // [fixture, quantization, the library's environment, the step's token budget]. tiny-llama3-a's down projection
  // (K = 176, not a multiple of 32) always takes the fallbacks; the 300-token prompt runs above 128 rows (dequantize
  // + cuBLAS) unless a smaller budget chunks it.
  const kernel = (v: string) => ({ CHORUS_INT4_KERNEL: v })
  describe.each([
    ["tiny-llama3-a", defaultInt4, kernel("auto"), 512],
    ["tiny-llama3-b", { ...defaultInt4, symmetric: true }, kernel("auto"), 512],
    ["tiny-llama3-a", { ...defaultInt4, blockSize: 128 as const, symmetric: true }, kernel("auto"), 512],
    ["tiny-llama3-b", { ...defaultInt4, blockSize: 128 as const }, kernel("auto"), 512],
    ["tiny-llama3-b", defaultInt4, kernel("auto"), 100],
    ["tiny-llama3-a", defaultInt4, kernel("gemv1"), 512],
    ["tiny-llama3-b", { ...defaultInt4, blockSize: 128 as const, symmetric: true }, kernel("gemv1"), 512],
    ["tiny-llama3-b", defaultInt4, { CHORUS_INT4_KERNEL: "mma", CHORUS_INT4_SPLITK: "ceil" }, 512],
    ["tiny-llama3-b", { ...defaultInt4, symmetric: true }, kernel("mma-w2"), 512],
    ["tiny-llama3-b", { ...defaultInt4, symmetric: true }, { CHORUS_INT4_KERNEL: "mma-w4", CHORUS_INT4_CHAINS: "2" }, 512],
    // The LOP3 dequantization up to 8 rows (with zero points; symmetric at block 128).
    ["tiny-llama3-b", defaultInt4, { CHORUS_INT4_DEQUANT: "lop3" }, 512],
    ["tiny-llama3-b", { ...defaultInt4, blockSize: 128 as const, symmetric: true }, { CHORUS_INT4_DEQUANT: "lop3" }, 512],
    // Chunks of 200 and 100 rows: the two-row-group tensor-core kernel at 13 and 7 m-tiles a group.
    ["tiny-llama3-b", defaultInt4, { CHORUS_INT4_MMA_ROWS: "256", CHORUS_INT4_SPLITK: "floor" }, 200]
  ] as const)("%s, %o, %o, %i tokens a step", (name, q, env, budget) => {
    const options: Llama3Options = { modelDir: fixtureDir(name), dtype: "float16", maxContext: 512, attention: "fused", quantize: q }
    for (const concurrent of [false, true]) {
      it(`equals MatMulNBits ${concurrent ? "with the prompts batched" : "one prompt at a time"}`, async () => {
        const prompts = readReference(name).prompts.map((p) => p.input_ids)
        const run = (linearKernels: "ort" | "chorus") =>
          runGreedy(options, { device, nativeRuntime: true, maxNumSeqs: 4, maxNumBatchedTokens: budget, linearKernels }, prompts, {
            promptLogits: "last",
            concurrent
          })
        const ort = await run("ort")
        // The library reads these variables when a session makes its kernels (the shard threads share this process's
        // environment).
        const saved = Object.keys(env).map((k) => [k, process.env[k]] as const)
        Object.assign(process.env, env)
        const chorus = await run("chorus").finally(() => {
          for (const [k, v] of saved) {
            if (v === undefined) delete process.env[k]
            else process.env[k] = v
          }
        })
        chorus.forEach((r, i) => {
          // The same dequantized weights times the same float16 activations; only the order of the float32 sums
          // differs, and the activations are rounded to float16 at every op on both sides.
          expect(relativeError(r.logits, ort[i].logits)).toBeLessThan(2e-2)
          expectSameFirstToken(r, ort[i])
        })
      })
    }
  })

  // --decode-attention chorus (chorus.DecodeAttention): the float16 fixtures as DeviceParity holds the default
  // attention (XQA) to, against transformers: prompt logits within 1e-2, greedy tokens equal for 16 tokens unless they
  // part at a float32 near-tie (the two best logits within 1% of the largest), decode steps of one row and batched,
  // prompts in one chunk and in chunks of 100. native/probes/decode-attention-check.ts compares the op itself.
  // --linear-kernels chorus on float16 shards (chorus.Linear, also what `auto` picks) the same way: its GEMV in decode
  // steps of 1-2 rows, cuBLAS for prompts and wider steps, each MLP's SwiGLU folded into its down projection (read by
  // the GEMV, applied in place before cuBLAS); and with CHORUS_FOLD_SWIGLU=0 the MLP's own Split, Sigmoid and Muls.
  const kernelCases = [
    ["chorus.DecodeAttention", { decodeAttention: "chorus" }, {}],
    ["chorus.Linear", { linearKernels: "chorus" }, {}],
    ["chorus.Linear with CHORUS_FOLD_SWIGLU=0", { linearKernels: "chorus" }, { CHORUS_FOLD_SWIGLU: "0" }]
  ] as const
  const fixtureCases = [["tiny-llama3-a", 512], ["tiny-llama3-b", 512], ["tiny-llama3-b", 100]] as const
  describe.each(kernelCases.flatMap(([op, engine, env]) => fixtureCases.map(([name, budget]) => [op, name, budget, engine, env] as const)))("%s, %s, %i tokens a step", (_op, name, budget, kernels, env) => {
    // Set in the main thread's environment, which the op reads (getenv) when a shard's session makes its kernels and
    // a shard's worker thread copies when it starts.
    const saved = Object.keys(env).map((k) => [k, process.env[k]] as const)
    beforeAll(() => void Object.assign(process.env, env))
    afterAll(() => {
      for (const [k, v] of saved) {
        if (v === undefined) delete process.env[k]
        else process.env[k] = v
      }
    })
    const options: Llama3Options = { modelDir: fixtureDir(name), dtype: "float16", maxContext: 512, attention: "fused" }
    const reference = readReference(name)
    for (const concurrent of [false, true]) {
      it(`as transformers up to a float32 near-tie, ${concurrent ? "the prompts batched" : "one prompt at a time"}`, async () => {
        const prompts = reference.prompts.map((p) => p.input_ids)
        const chorus = await runGreedy(options, { device, nativeRuntime: true, maxNumSeqs: 4, maxNumBatchedTokens: budget, ...kernels }, prompts, {
          promptLogits: "last",
          concurrent
        })
        const partings: Array<Array<number>> = []
        chorus.forEach((r, i) => {
          const want = reference.prompts[i]!
          expect(relativeError(r.logits, want.prefill_logits_last)).toBeLessThan(1e-2)
          const diverge = r.tokens.findIndex((t, k) => t !== want.greedy_continuation[k])
          if (diverge !== -1) partings.push([...want.input_ids, ...want.greedy_continuation.slice(0, diverge)])
        })
        if (partings.length === 0) return
        const f32 = await runGreedy({ ...options, dtype: "float32" }, { device, nativeRuntime: true, maxNumSeqs: 4 }, partings, {
          promptLogits: "last",
          concurrent: false,
          maxTokens: 1
        })
        for (const at of f32) expect(topTwoGap(at.logits)).toBeLessThan(0.01)
      })
    }
  })
})
