// AWQ and GPTQ checkpoints (synthetic, packed as the reference code packs them: test/support/quantizedCheckpoint.ts)
// load losslessly: the model Chorus builds from them computes what the float model of their reference dequantization
// computes; what cannot map onto MatMulNBits is refused with a message that says why.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { repackLinear } from "../../../src/adapters/llama3/CheckpointQuant.ts"
import { convertCheckpoint } from "../../../src/adapters/llama3/Converter.ts"
import { Llama3Adapter } from "../../../src/adapters/llama3/Llama3Adapter.ts"
import { loadLlamaConfig, parseLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { dequantizeInt4 } from "../../../src/adapters/llama3/MatMulNBitsPacking.ts"
import { defaultInt4 } from "../../../src/adapters/llama3/Quantization.ts"
import { cachePerTest } from "../../support/cachePerTest.ts"
import { fixtureDir, readReference, relativeError } from "../../support/fixtures.ts"
import { runGreedy } from "../../support/greedyRuns.ts"
import {
  dequantizeAwq,
  dequantizeGptq,
  packAwq,
  packGptq,
  quantizedCheckpoint,
  type QuantScheme,
  quantizeGroups
} from "../../support/quantizedCheckpoint.ts"

const { root } = cachePerTest("chorus-prequant-")

const runAll = (options: Parameters<typeof Llama3Adapter.load>[0], prompts: ReadonlyArray<ReadonlyArray<number>>) =>
  runGreedy(options, { maxNumSeqs: 4, maxNumBatchedTokens: 128 }, prompts, { promptLogits: "all", concurrent: false })

const awq: QuantScheme = { method: "awq" }
const gptqV1Asym: QuantScheme = { method: "gptq", format: "gptq", sym: false }
const gptqV1Sym: QuantScheme = { method: "gptq", format: "gptq", sym: true }
const gptqV2Asym: QuantScheme = { method: "gptq", format: "gptq_v2", sym: false }

/** A deterministic pseudo-random weight (no zero point 0 in GPTQ: every group has a negative element). */
const weight = (out: number, inDim: number, seed: number): Float32Array => {
  let x = seed
  return Float32Array.from({ length: out * inDim }, () => {
    x = (x * 1103515245 + 12345) % 2147483648
    return (x / 2147483648 - 0.45) * 0.2
  })
}

describe("repacking against the reference dequantization", () => {
  // the repacked MatMulNBits weight dequantizes to exactly what AutoAWQ's dequantize_gemm / AutoGPTQ's forward give
  it.each([
    ["awq", 16, awq],
    ["awq", 64, awq],
    ["gptq v1 asym", 32, gptqV1Asym],
    ["gptq v1 sym", 16, gptqV1Sym],
    ["gptq v2 asym", 128, gptqV2Asym]
  ] as const)("%s, group %i", (_, group, scheme) => {
    const [out, inDim] = [48, 256]
    const x = quantizeGroups(weight(out, inDim, group), out, inDim, group, scheme)
    const f16 = (s: Float32Array) => ({ dtype: "F16" as const, shape: [inDim / group, out], bytes: new Uint8Array(Float16Array.from(s).buffer) })
    const i32 = (a: Int32Array, shape: Array<number>) => ({ dtype: "I32" as const, shape, bytes: new Uint8Array(a.buffer) })
    let want: Float32Array
    let linear
    if (scheme.method === "awq") {
      const { qweight, qzeros } = packAwq(x, out, inDim)
      want = dequantizeAwq(qweight, qzeros, x.s, out, inDim, group)
      linear = { module: "m", out, inDim, qweight: i32(qweight, [inDim, out / 8]), qzeros: i32(qzeros, [inDim / group, out / 8]), scales: f16(x.s) }
    } else {
      const { qweight, qzeros } = packGptq(x, out, inDim, scheme.format)
      const gIdx = Int32Array.from({ length: inDim }, (_, k) => Math.floor(k / group))
      want = dequantizeGptq(qweight, qzeros, x.s, gIdx, out, inDim, scheme.format)
      linear = { module: "m", out, inDim, qweight: i32(qweight, [inDim / 8, out]), qzeros: i32(qzeros, [inDim / group, out / 8]), scales: f16(x.s), gIdx: i32(gIdx, [inDim]) }
    }
    // the test-side packer and unpacker agree with the quantizer's codes: (q - z) * s
    const direct = Float32Array.from({ length: out * inDim }, (_, i) => {
      const [c, k] = [Math.floor(i / inDim), i % inDim]
      const g = Math.floor(k / group)
      return Math.fround((x.q[i] - x.z[g * out + c]) * x.s[g * out + c])
    })
    expect(want).toEqual(direct)
    const cheq = { ...(scheme.method === "awq" ? { method: "awq" as const } : { method: "gptq" as const, format: scheme.format, sym: scheme.sym }), bits: 4 as const, groupSize: group }
    const got = dequantizeInt4(repackLinear(cheq, linear), { n: out, k: inDim, blockSize: group, symmetric: false })
    expect(got).toEqual(want)
  })
})

// GPTQ v1 asym runs on tiny-llama3-b with groups of 32: with groups of 16, both fixtures have a group whose quantizer
// zero point is 0 (tiny-llama3-a 1 of 5,760, tiny-llama3-b 2 of 18,432), which v1 cannot store (refused below); v2 can,
// and the v2 case covers tiny-llama3-a's.
describe.each([
  ["tiny-llama3-a", "AWQ", 16, awq],
  ["tiny-llama3-b", "AWQ", 32, awq],
  ["tiny-llama3-b", "GPTQ v1 asym", 32, gptqV1Asym],
  ["tiny-llama3-a", "GPTQ v1 sym", 16, gptqV1Sym],
  ["tiny-llama3-a", "GPTQ v2 asym", 16, gptqV2Asym]
] as const)("%s, %s, group %i", (name, _label, groupSize, scheme) => {
  it("gives the logits and greedy tokens of the float model of its dequantized weights", async () => {
    const { dir, floatDir } = await quantizedCheckpoint(root, name, scheme, { groupSize })
    const prompts = readReference(name).prompts.map((p) => p.input_ids)
    const quantized = await runAll({ modelDir: dir }, prompts)
    const float = await runAll({ modelDir: floatDir }, prompts)
    quantized.forEach((r, i) => {
      expect(relativeError(r.logits, float[i].logits)).toBeLessThan(1e-5)
      expect(r.tokens).toEqual(float[i].tokens)
    })
  })
})

describe("pre-quantized conversion", () => {
  it("records the checkpoint's quantization in the manifest and its own cache key; float16 and float32 bytes match across the parallel and sequential writers", async () => {
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-b", gptqV1Asym, { groupSize: 32 })
    const base = { modelDir: dir, dtype: "float16" as const, shards: 2, maxContext: 64 }
    const parallel = await Effect.runPromise(convertCheckpoint({ ...base, outDir: path.join(root, "pq-parallel"), threads: 2 }))
    const sequential = await Effect.runPromise(convertCheckpoint({ ...base, outDir: path.join(root, "pq-sequential"), threads: 0 }))
    expect(parallel.manifest.config.quantization).toEqual({ method: "gptq", bits: 4, groupSize: 32, format: "gptq", sym: false })
    expect(parallel.manifest.quantize).toBeUndefined()
    for (const [k, p] of parallel.shardPaths.entries()) {
      expect(fs.readFileSync(`${p}.data`).equals(fs.readFileSync(`${sequential.shardPaths[k]}.data`))).toBe(true)
      expect(fs.readFileSync(p).equals(fs.readFileSync(sequential.shardPaths[k]))).toBe(true)
    }
    // the same tensors under a float config (quantization_config removed) would not even validate; the key covers the config
    const cached = await Effect.runPromise(convertCheckpoint({ ...base, shards: 1 }))
    const again = await Effect.runPromise(convertCheckpoint({ ...base, shards: 1 }))
    expect(again.cached).toBe(true)
    expect(again.manifest.key).toBe(cached.manifest.key)
    const float = await Effect.runPromise(convertCheckpoint({ ...base, shards: 1, modelDir: fixtureDir("tiny-llama3-b") }))
    expect(float.manifest.key).not.toBe(cached.manifest.key)
  })
})

describe("refusals", () => {
  const base = JSON.parse(fs.readFileSync(path.join(fixtureDir("tiny-llama3-a"), "config.json"), "utf8")) as Record<string, unknown>
  const parse = (quantization_config: unknown) =>
    Effect.runPromise(Effect.flip(parseLlamaConfig({ ...base, quantization_config }, "config.json"))).then((e) => e.message)

  it.each([
    [
      "desc_act",
      { quant_method: "gptq", bits: 4, group_size: 128, desc_act: true, sym: true },
      "quantization_config in config.json: desc_act is true (act-order): its g_idx permutes the input rows across groups, which MatMulNBits' contiguous blocks cannot express without requantizing; use a checkpoint made with desc_act false"
    ],
    [
      "3 bits",
      { quant_method: "gptq", bits: 3, group_size: 128, desc_act: false, sym: true },
      "quantization_config in config.json: bits is 3: only 4-bit GPTQ checkpoints map onto ONNX Runtime's MatMulNBits without requantizing"
    ],
    [
      "8-bit AWQ",
      { quant_method: "awq", bits: 8, group_size: 128, zero_point: true, version: "gemm" },
      "quantization_config in config.json: bits is 8: only 4-bit AWQ checkpoints map onto ONNX Runtime's MatMulNBits without requantizing"
    ],
    [
      "group size 48",
      { quant_method: "awq", bits: 4, group_size: 48, zero_point: true, version: "gemm" },
      "quantization_config in config.json: group_size 48 cannot be a MatMulNBits block size (ONNX Runtime 1.29 runs 16, 32, 64, 128 and 256), and each group becomes one block"
    ],
    [
      "group size 8",
      { quant_method: "gptq", bits: 4, group_size: 8, desc_act: false },
      "quantization_config in config.json: group_size 8 cannot be a MatMulNBits block size (ONNX Runtime 1.29 runs 16, 32, 64, 128 and 256), and each group becomes one block"
    ],
    [
      "group size 512",
      { quant_method: "awq", bits: 4, group_size: 512, zero_point: true, version: "gemm" },
      "quantization_config in config.json: group_size 512 cannot be a MatMulNBits block size (ONNX Runtime 1.29 runs 16, 32, 64, 128 and 256), and each group becomes one block"
    ],
    [
      "group size -1",
      { quant_method: "gptq", bits: 4, group_size: -1, desc_act: false },
      "quantization_config in config.json: group_size is -1 (one group per input row): MatMulNBits needs one block size for every linear, and Llama's input dimensions differ; use a checkpoint quantized with groups (e.g. 128)"
    ],
    [
      "AWQ GEMV",
      { quant_method: "awq", bits: 4, group_size: 128, zero_point: true, version: "gemv" },
      "quantization_config in config.json: AWQ version 'gemv' is not supported: only the GEMM layout (qweight [in, out/8]) is repacked; re-export the model as GEMM"
    ],
    [
      "marlin format",
      { quant_method: "gptq", bits: 4, group_size: 128, desc_act: false, checkpoint_format: "marlin" },
      "quantization_config in config.json: GPTQ checkpoint format 'marlin' is not supported: Chorus repacks 'gptq' (v1) and 'gptq_v2'"
    ],
    [
      "a quantized LM head",
      { quant_method: "gptq", bits: 4, group_size: 128, desc_act: false, lm_head: true },
      "quantization_config in config.json: lm_head is true (a quantized LM head): Chorus keeps the LM head float and reads it as lm_head.weight; use a checkpoint with lm_head false"
    ],
    [
      "another method",
      { quant_method: "bitsandbytes", load_in_4bit: true },
      "quantization_config in config.json: quant_method 'bitsandbytes' is not supported: Chorus loads AWQ (GEMM) and GPTQ 4-bit checkpoints, or float ones"
    ]
  ] as const)("%s", async (_, q, message) => {
    expect(await parse(q)).toBe(message)
  })

  const convert = (dir: string, extra: Partial<Parameters<typeof convertCheckpoint>[0]> = {}) =>
    Effect.runPromise(Effect.flip(convertCheckpoint({ modelDir: dir, dtype: "float32", shards: 1, maxContext: 64, threads: 0, ...extra }))).then((e) => e.message)

  it("a group size that does not divide a model dimension", async () => {
    // tiny-llama3-a's MLP is 176 wide: 11 groups of 16, not whole groups of 32
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-b", awq, { groupSize: 32 })
    const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"))
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...config, intermediate_size: 176 }))
    expect(await convert(dir)).toBe("cannot build the graphs of " + dir + ": AWQ group_size 32 does not divide the input dimension 176: each group becomes one MatMulNBits block")
  })

  it("a linear whose group size differs from the others' (q|k|v share one MatMulNBits)", async () => {
    // k_proj of layer 0 quantized with groups of 32 while quantization_config (and q, v) say 16
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-a", gptqV2Asym, {
      groupSize: 16,
      editPacked: (module, tensors) => {
        if (module !== "model.layers.0.self_attn.k_proj") return
        const s = tensors.get("scales")!
        tensors.set("scales", { ...s, shape: [2, 32], bytes: s.bytes.slice(0, 2 * 32 * 2) })
      }
    })
    const message = await convert(dir)
    expect(message).toContain("tensor 'model.layers.0.self_attn.k_proj.scales'")
    expect(message).toContain("expected shape [4, 32] from config.json, found [2, 32]: its group size (32) differs from quantization_config.group_size 16; every linear must use it (q|k|v and gate|up are stacked into one MatMulNBits with one block size)")
  })

  it("a GPTQ v1 zero point that reads as 16", async () => {
    // every weight of down_proj in layer 1 positive: the quantizer's zero point is 0, stored as -1
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-b", gptqV1Asym, {
      groupSize: 32,
      editWeight: (module, w) => {
        if (module === "model.layers.1.mlp.down_proj") for (let i = 0; i < w.length; i++) w[i] = Math.abs(w[i]) + 0.01
      }
    })
    const expected = "cannot load this GPTQ checkpoint: model.layers.1.mlp.down_proj.qzeros: the zero point of group 0, output 0 is 16 after GPTQ v1's +1 (a quantizer zero point of 0 stored as -1, which also corrupts the higher nibbles of its word); MatMulNBits' 4-bit zero points cannot hold it"
    expect(await convert(dir)).toBe(expected)
    expect(await convert(dir, { threads: 2, outDir: path.join(root, "zero16") })).toBe(expected)
  })

  it("a GPTQ g_idx that is not k / group (act-order) even where desc_act says false", async () => {
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-a", gptqV1Sym, {
      groupSize: 16,
      editPacked: (module, tensors) => {
        if (module !== "model.layers.0.mlp.up_proj") return
        const g = tensors.get("g_idx")!
        const idx = new Int32Array(g.bytes.slice().buffer)
        ;[idx[0], idx[16]] = [idx[16], idx[0]]
        tensors.set("g_idx", { ...g, bytes: new Uint8Array(idx.buffer) })
      }
    })
    expect(await convert(dir)).toBe(
      "cannot load this GPTQ checkpoint: model.layers.0.mlp.up_proj.g_idx[0] is 1, expected 0 (= 0 / group_size 16): a reordered (act-order) g_idx cannot map onto MatMulNBits' contiguous blocks without requantizing"
    )
  })

  it("--quantize int4 on top of a pre-quantized checkpoint", async () => {
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-a", awq, { groupSize: 16 })
    expect(await convert(dir, { quantize: defaultInt4 })).toBe(
      "cannot build the graphs of " + dir + ": the checkpoint is already AWQ 4-bit (quantization_config in config.json); --quantize int4 would requantize it: leave --quantize out"
    )
  })

  it("float16 scales served in bfloat16 (they would be rounded)", async () => {
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-a", awq, { groupSize: 16 })
    const message = await convert(dir, { dtype: "bfloat16" })
    expect(message).toMatch(/^cannot load this AWQ checkpoint: model\.layers\.0\.self_attn\.q_proj\.scales holds .*, which bfloat16 cannot represent exactly \(it would be .*\); serve this checkpoint in float32 or float16$/)
  })

  it("a quantized checkpoint whose config.json lost its quantization_config", async () => {
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-a", awq, { groupSize: 16 })
    const { quantization_config: _, ...config } = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"))
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config))
    expect(await convert(dir)).toBe(
      `the checkpoint in ${dir} holds 'model.layers.0.self_attn.q_proj.qweight' (a 4-bit linear) where 'model.layers.0.self_attn.q_proj.weight' was expected, but config.json has no quantization_config (nor is there a quantize_config.json): Chorus loads AWQ and GPTQ checkpoints from that section`
    )
  })

  it("reads an older AutoGPTQ checkpoint's quantize_config.json when config.json has no quantization_config", async () => {
    const { dir, floatDir } = await quantizedCheckpoint(root, "tiny-llama3-a", gptqV1Sym, { groupSize: 16 })
    const { quantization_config: q, ...config } = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"))
    const { quant_method: _, checkpoint_format: __, ...legacy } = q
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config))
    fs.writeFileSync(path.join(dir, "quantize_config.json"), JSON.stringify(legacy))
    expect((await Effect.runPromise(loadLlamaConfig(dir))).quantization).toEqual({ method: "gptq", bits: 4, groupSize: 16, format: "gptq", sym: true })
    const prompts = readReference("tiny-llama3-a").prompts.slice(0, 1).map((p) => p.input_ids)
    const [quantized, float] = [await runAll({ modelDir: dir }, prompts), await runAll({ modelDir: floatDir }, prompts)]
    expect(relativeError(quantized[0].logits, float[0].logits)).toBeLessThan(1e-5)
    fs.writeFileSync(path.join(dir, "quantize_config.json"), JSON.stringify({ ...legacy, desc_act: true }))
    const message = await Effect.runPromise(Effect.flip(loadLlamaConfig(dir))).then((e) => e.message)
    expect(message).toMatch(/^.*quantize_config\.json: desc_act is true \(act-order\)/)
  })

  it("loads its config with the quantization normalized", async () => {
    const { dir } = await quantizedCheckpoint(root, "tiny-llama3-a", awq, { groupSize: 16 })
    const config = await Effect.runPromise(loadLlamaConfig(dir))
    expect(config.quantization).toEqual({ method: "awq", bits: 4, groupSize: 16 })
  })
})
