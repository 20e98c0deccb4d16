/**
 * Fused-SwiGLU options for Llama 3 8B's MLP (H 4096, I 14336) on ORT's CUDA EP, timed through the native addon
 * (issue item 1: fewer, fused kernels per layer). Each variant is a chain of `--layers` decoder-shaped blocks in one
 * session: SkipSimplifiedLayerNormalization (the residual add and RMS norm the shard graphs put before the MLP), then
 * the MLP, whose output is the next block's skip input; input [M, H] as the paged shard graphs have it.
 *
 *   a               today's graph (GraphBuilder.ts): MatMul [H, 2I], Split, Sigmoid, Mul, Mul, MatMul [I, H]
 *   a-chorus        a with both MatMuls as Chorus's chorus.Linear (native/cuda/f16_gemv.cuh: a GEMV up to 2 rows,
 *                   cuBLAS above; `npm run build:cuda-ops`), checked against a
 *   a-chorus-swiglu a-chorus with the Split, Sigmoid and Muls folded into the down projection (chorus.Linear's
 *                   activation "swiglu", as rewriteForChorusOps writes it), checked against a
 *   a-basic         the same model at graph optimization "basic": ORT's level-2 QuickGeluFusion, which rewrites
 *                   x * Sigmoid(x) into com.microsoft QuickGelu in `a` (ncu of the served 8B shows QuickGelu), is off
 *   b               MatMul, Split, com.microsoft QuickGelu(alpha 1) (x * sigmoid(x) = SiLU), Mul, MatMul
 *   c-*             the whole MLP as one com.microsoft MoE node of ONE expert: k 1, router_probs [M, 1] of ones (the
 *                   softmax over one expert is exactly 1), activation_type "swiglu", activation_alpha 1,
 *                   activation_beta 0, no swiglu_limit: silu(gate) * up exactly. fc1 [1, 2I, H] and fc2 [1, H, I]
 *                   hold each output's weights contiguously (the transpose of MatMul's [K, N]).
 *     c-inter         swiglu_fusion 1: fc1 rows interleaved (row 2j gate j, row 2j+1 up j), as a shard graph would
 *                     have it: ORT may write the MoE's output over its input (the kernels declare MayInplace(0, 0))
 *     c-inter+keep    the same with each MoE input also a graph output, so the output cannot go over it. On the CPU
 *                     EP c-inter is WRONG (relative error ~1) and c-inter+keep right: ORT 1.29's CPU MoE breaks
 *                     when its output is planned in place over its input. The pair says whether the CUDA one does.
 *     c-gate/up+keep  swiglu_fusion 2: fc1 rows [0, I) gate, [I, 2I) up
 *     c-up/gate+keep  swiglu_fusion 2: fc1 rows [0, I) up, [I, 2I) gate. ORT's sources disagree on which half is
 *                     the gate (below), so both run: the error column says which one the CUDA kernel computes.
 *   q-sym-chorus,   q-sym / q-zp through Chorus's chorus.Int4Linear (native/cuda, `npm run build:cuda-ops`; its
 *   q-zp-chorus     default: tensor cores up to 128 rows), checked against q-sym / q-zp (same weights, float16's
 *                   tolerance); `-gemv1` / `-gemv2`: its GEMVs instead (CHORUS_INT4_KERNEL while the session is made;
 *                   above 8 rows they dequantize and call cuBLAS); `q-sym-w2`, `q-sym-w4`, `q-zp-w4`: the tensor-core
 *                   kernel with 32- / 64-byte runs a lane up to 8 rows (mma-w2, mma-w4); `-floor`: split-K slices
 *                   rounded down to one wave (CHORUS_INT4_SPLITK=floor); `q-sym-r256`: two row groups a block above
 *                   64 rows, the tensor-core path up to 256 rows (CHORUS_INT4_MMA_ROWS=256)
 *                   `q-sym-marlin`: Marlin (CHORUS_INT4_KERNEL=marlin; needs --block 128)
 *   q-sym, q-zp     a with gate|up and down as com.microsoft MatMulNBits (4-bit, block 32 or --block 128, symmetric / zero points,
 *                   the converter's packing): their error against a is the int4 rounding (a sanity bound only), their
 *                   rate counts the packed bytes. With ORT_FPA_INTB_GEMM=1 in the environment ORT runs them through
 *                   TensorRT-LLM's fpA_intB kernels instead of its own.
 *
 * Weights are random (uniform, std 1/sqrt(fan-in)) float16 values in an external data file; one set is shared by the
 * layers (a layer's 352 MB is far over the H200's L2, so every layer streams its weights from HBM again; sharing keeps
 * the file, the load and the device memory at one layer's worth per layout). For each M the inputs are the same in
 * every variant: the error column is ||y - y_a|| / ||y_a|| over the chain's output (tolerance 2e-2 in float16, 1e-4
 * in float32), and variant a itself is checked against a float64 JS reference of the chain for row 0 of the first M.
 * Timing: median wall time of `--runs` runs after `--warmup` (inputs and output bound on the device, one
 * synchronization per run, as gqa-backends.ts), divided by the layers; the rate is a layer's weight bytes (gate|up and
 * down) over that time. The norm is in every variant's time (a few us). A refused or failing variant is reported and
 * the probe goes on.
 *
 *   node native/probes/mlp-fusion.ts                           # GPU host: CUDA EP, float16, Llama 3 8B's shape
 *   node native/probes/mlp-fusion.ts --profile --batches 64    # plus ORT's per-node profile of each variant (one M
 *                                                              # at a time: a profile sums all runs of a session)
 *   node native/probes/mlp-fusion.ts --device cpu --hidden 256 --inter 896   # the CPU EP, float32 by default (ORT
 *                                                              # 1.29's CPU MoE has no float16 kernel): correctness
 *
 * ORT 1.29 (the provider build's strings match these sources): contrib_ops/cuda/moe/moe_base.h reads
 * activation_alpha (default 1), activation_beta (default 0), swiglu_limit (default infinity), and enforces
 * swiglu_fusion 0..2, only with "swiglu"; the op's formula (core/graph/contrib_ops/bert_defs.cc MoE doc) is
 * G * sigmoid(alpha * G) * (L + beta), G and L clamped only for a finite limit, and cuda/llm/moe_gemm/moe_kernels.cu
 * takes plain SiLU(gate) * linear when alpha is 1, beta 0 and the limit infinite. With swiglu_fusion 1 it reads
 * [gate, linear] pairs; otherwise doActivationKernel reads the gate from the SECOND half of a row ("gate_part reads
 * from elem_index + inter_size_vec (chunk 1)") while doGatedActivationKernel in the same file reads it from the first,
 * and moe.cc's fc3 packing comments say both. moe.cc treats swiglu_fusion 0 without fc3 as 1 (interleaved). CUDA MoE
 * registers float, float16 and bfloat16 (moe.cc REGISTER_KERNEL_TYPED); the CPU EP's MoE only float here, and only
 * swiglu_fusion 1 (cpu/moe/moe_cpu.cc: "CPU MoE only supports interleaved SwiGLU format"). com.microsoft QuickGelu
 * has float16 and bfloat16 CUDA kernels (contrib::cuda::QuickGelu<MLFloat16> in the provider's symbols).
 */
import * as fs from "node:fs"
import { parseFlags } from "../../src/cli/Args.ts"
import { type DeviceTensor, NativeOrt, type NativeSession } from "../../src/core/native/NativeOrt.ts"
import { encodeModel, type ExternalInitializer, type NodeSpec } from "../../src/onnx/OnnxWriter.ts"
import { cudaOpsLibraryPath } from "../../src/core/native/CudaOps.ts"
import { opTimes } from "./ProfileTrace.ts"
import { blocksPerRow, type Int4Layout, int4Bytes } from "../../src/adapters/llama3/MatMulNBitsPacking.ts"

const flags = parseFlags("mlp-fusion", process.argv.slice(2), {
  device: { kind: "string", description: "cuda (default) or cpu" },
  dtype: { kind: "string", description: "float16 (default on cuda) or float32 (default on cpu)" },
  hidden: { kind: "integer", description: "hidden size (default 4096)" },
  inter: { kind: "integer", description: "intermediate size (default 14336)" },
  layers: { kind: "integer", description: "MLP blocks in a session (default 8)" },
  batches: { kind: "list", description: "rows M (default 1,16,64,128)" },
  runs: { kind: "integer", description: "timed runs per variant and M (default 100 on cuda, 5 on cpu)" },
  warmup: { kind: "integer", description: "untimed runs first (default 5 on cuda, 1 on cpu)" },
  only: { kind: "string", description: "comma-separated variant names to run (a always runs: it is the reference)" },
  block: { kind: "integer", description: "the int4 variants' block size, 32 (default) or 128 (Marlin's)" },
  profile: { kind: "boolean", description: "ORT's per-node profiler on; prints each variant's ops (all its runs)" },
  dir: { kind: "string", description: "folder for the models and the weight file (default /tmp/mlp-fusion)" }
})
const device = (flags.device ?? "cuda") as "cuda" | "cpu"
if (device !== "cuda" && device !== "cpu") throw new Error(`--device must be cuda or cpu, got ${device}`)
const dtype = (flags.dtype ?? (device === "cuda" ? "float16" : "float32")) as "float16" | "float32"
if (dtype !== "float16" && dtype !== "float32") throw new Error(`--dtype must be float16 or float32, got ${dtype}`)
const H = flags.hidden ?? 4096, I = flags.inter ?? 14336, L = flags.layers ?? 8
const batches = flags.batches ?? [1, 16, 64, 128]
const runs = flags.runs ?? (device === "cuda" ? 100 : 5), warmup = flags.warmup ?? (device === "cuda" ? 5 : 1)
const dir = flags.dir ?? "/tmp/mlp-fusion"
const block = flags.block ?? 32
if (block !== 32 && block !== 128) throw new Error(`--block must be 32 or 128, got ${block}`)
const eps = 1e-5
const elemBytes = dtype === "float16" ? 2 : 4
const tolerance = dtype === "float16" ? 2e-2 : 1e-4

// ------------------------------------------------------------------------------------------------ float16 bits

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)
/** float -> float16 bits, round to nearest even (finite inputs well inside float16's range here). */
const toHalf = (v: number): number => {
  f32[0] = v
  const x = u32[0]!
  const sign = (x >>> 16) & 0x8000
  const exp = (x >>> 23) & 0xff
  let mant = x & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0)
  const e = exp - 127 + 15
  if (e >= 0x1f) return sign | 0x7c00
  if (e <= 0) {
    if (e < -10) return sign
    mant |= 0x800000
    const shift = 14 - e
    let h = mant >>> shift
    const rem = mant & ((1 << shift) - 1), half = 1 << (shift - 1)
    if (rem > half || (rem === half && (h & 1) === 1)) h++
    return sign | h
  }
  let h = (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++
  return sign | h
}
const halfToFloat = new Float32Array(65536)
for (let h = 0; h < 65536; h++) {
  const sign = h & 0x8000 ? -1 : 1, e = (h >>> 10) & 0x1f, m = h & 0x3ff
  halfToFloat[h] = e === 0 ? sign * m * 2 ** -24 : e === 31 ? (m === 0 ? sign * Infinity : NaN) : sign * (1 + m / 1024) * 2 ** (e - 15)
}

/** float16 bits -> Float32Array (a loop: `Float32Array.from(bits, fn)` runs out of heap on a layer's weights). */
const toFloat32 = (bits: Uint16Array): Float32Array => {
  const out = new Float32Array(bits.length)
  for (let i = 0; i < bits.length; i++) out[i] = halfToFloat[bits[i]!]!
  return out
}

// ------------------------------------------------------------------------------------------------ random weights

let seed = 0x9e3779b9
const next = (): number => {
  seed ^= seed << 13
  seed ^= seed >>> 17
  seed ^= seed << 5
  return seed >>> 0
}
/** `n` float16 values uniform in [-a, a] (a table of 65536 levels indexed by 16 random bits). */
const uniformHalf = (n: number, a: number): Uint16Array => {
  const table = new Uint16Array(65536)
  for (let i = 0; i < 65536; i++) table[i] = toHalf(a * ((i + 0.5) / 32768 - 1))
  const out = new Uint16Array(n)
  let i = 0
  for (; i + 1 < n; i += 2) {
    const r = next()
    out[i] = table[r & 0xffff]!
    out[i + 1] = table[r >>> 16]!
  }
  if (i < n) out[i] = table[next() & 0xffff]!
  return out
}
/** [rows, cols] -> [cols, rows], in 64 x 64 blocks. */
const transpose = (src: Uint16Array, rows: number, cols: number): Uint16Array => {
  const dst = new Uint16Array(rows * cols)
  const B = 64
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(r0 + B, rows)
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(c0 + B, cols)
      for (let r = r0; r < r1; r++) {
        const s = r * cols
        for (let c = c0; c < c1; c++) dst[c * rows + r] = src[s + c]!
      }
    }
  }
  return dst
}
/** Rows of `src` ([rows, width]) in the order `from(i)`. */
const permuteRows = (src: Uint16Array, rows: number, width: number, from: (i: number) => number): Uint16Array => {
  const dst = new Uint16Array(rows * width)
  for (let i = 0; i < rows; i++) dst.set(src.subarray(from(i) * width, (from(i) + 1) * width), i * width)
  return dst
}

const only = flags.only?.split(",")
// Every 4-bit variant is named q-*.
const wantInt4 = only === undefined || only.some((n) => n.startsWith("q-"))

fs.mkdirSync(dir, { recursive: true })
const dataName = `mlp-fusion-${dtype}.data`
const dataPath = `${dir}/${dataName}`
const external = new Map<string, ExternalInitializer>()
const started = performance.now()
const gateUp = uniformHalf(H * 2 * I, Math.sqrt(3 / H)) // [H, 2I]: columns [0, I) gate, [I, 2I) up
const down = uniformHalf(I * H, Math.sqrt(3 / I)) // [I, H]
{
  const fd = fs.openSync(dataPath, "w")
  let offset = 0
  const put = (name: string, dims: ReadonlyArray<number>, bits: Uint16Array) => {
    const bytes = dtype === "float16"
      ? new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength)
      : new Uint8Array(toFloat32(bits).buffer)
    fs.writeSync(fd, bytes, 0, bytes.length, offset)
    external.set(name, { name, type: dtype, dims, location: dataName, offset, length: bytes.length })
    offset += Math.ceil(bytes.length / 65536) * 65536 // page-aligned offsets, so ORT can map every tensor
  }
  put("gamma", [H], new Uint16Array(H).fill(toHalf(1)))
  put("gate_up", [H, 2 * I], gateUp)
  put("down", [I, H], down)
  const t = transpose(gateUp, H, 2 * I) // [2I, H]: row n = column n of gate_up
  const downT = transpose(down, I, H) // [H, I]
  put("fc1_gate_up", [1, 2 * I, H], t)
  put("fc1_up_gate", [1, 2 * I, H], permuteRows(t, 2 * I, H, (n) => (n + I) % (2 * I)))
  put("fc1_inter", [1, 2 * I, H], permuteRows(t, 2 * I, H, (n) => (n % 2 === 0 ? n / 2 : I + (n - 1) / 2)))
  put("fc2", [1, H, I], downT)
  // The same weights as MatMulNBits inputs (block 32, the shard converter's packing), for the int4 variants.
  if (wantInt4) {
    const putBytes = (name: string, type: "uint8" | "float16" | "float32", dims: ReadonlyArray<number>, bytes: Uint8Array) => {
      fs.writeSync(fd, bytes, 0, bytes.length, offset)
      external.set(name, { name, type, dims, location: dataName, offset, length: bytes.length })
      offset += Math.ceil(bytes.length / 65536) * 65536
    }
    for (const symmetric of [true, false]) {
      for (const [name, rowsNK, n, k] of [["gate_up", t, 2 * I, H], ["down", downT, H, I]] as const) {
        const l: Int4Layout = { n, k, blockSize: block, symmetric }
        const nb = blocksPerRow(l)
        const [b, scales, zp] = int4Bytes(toFloat32(rowsNK), l, dtype)
        const q = `${name}_q${symmetric ? "sym" : "zp"}`
        putBytes(q, "uint8", [n, nb, block / 2], b!)
        putBytes(`${q}_scales`, dtype, [n * nb], scales!)
        if (zp !== undefined) putBytes(`${q}_zp`, "uint8", [n * Math.ceil(nb / 2)], zp)
      }
    }
  }
  fs.closeSync(fd)
}
console.log(`MLP fusion probe: ${device} ${dtype}, H ${H}, I ${I}, ${L} layers a session; weights ${((3 * H * I * elemBytes) / 1e6).toFixed(0)} MB a layer; ` +
  `ORT ${NativeOrt.load().ortVersion}; data written in ${((performance.now() - started) / 1000).toFixed(1)} s`)

// ------------------------------------------------------------------------------------------------ the variants

interface Variant {
  readonly name: string
  readonly what: string
  readonly optimization?: "basic"
  readonly weights: ReadonlyArray<string>
  readonly mlp: (input: string, output: string, p: string) => Array<NodeSpec>
  readonly moe?: boolean
  /** 4-bit weights: the error against a is int4 rounding (reported, checked only for sanity), the rate counts packed bytes. */
  readonly int4?: { readonly symmetric: boolean }
  /** Checked against this variant's output (same weights) instead of a's; the custom-op library is registered. */
  readonly sameAs?: string
  readonly chorusOps?: boolean
  /** Environment set while the session is made (the library reads CHORUS_INT4_KERNEL when it makes its kernels). */
  readonly env?: Readonly<Record<string, string>>
  /** Each layer's MLP input is also a graph output, so ORT cannot plan the MoE's output over it (MayInplace(0, 0)). */
  readonly keepInput?: boolean
}
// `linear`: MatMul, or chorus.Linear (the same inputs: X and W [K, N]).
const splitMlp = (act: (g: string, out: string, p: string) => Array<NodeSpec>, linear: "MatMul" | "chorus.Linear" = "MatMul") =>
(input: string, output: string, p: string): Array<NodeSpec> => {
  const mm = linear === "MatMul" ? { op: "MatMul" } : { op: "Linear", domain: "chorus" }
  return [
    { ...mm, inputs: [input, "gate_up"], outputs: [`${p}.gu`], name: `${p}.gate_up` },
    { op: "Split", inputs: [`${p}.gu`, "mlp_split"], outputs: [`${p}.gate`, `${p}.up`], attributes: { axis: -1 }, name: `${p}.split` },
    ...act(`${p}.gate`, `${p}.silu`, p),
    { op: "Mul", inputs: [`${p}.silu`, `${p}.up`], outputs: [`${p}.swiglu`], name: `${p}.swiglu` },
    { ...mm, inputs: [`${p}.swiglu`, "down"], outputs: [output], name: `${p}.down` }
  ]
}
// chorus.Linear for gate|up, then chorus.Linear with activation swiglu reading gate | up (rewriteForChorusOps' fold).
const swigluLinearMlp = (input: string, output: string, p: string): Array<NodeSpec> => [
  { op: "Linear", domain: "chorus", inputs: [input, "gate_up"], outputs: [`${p}.gu`], name: `${p}.gate_up` },
  { op: "Linear", domain: "chorus", inputs: [`${p}.gu`, "down"], outputs: [output], attributes: { activation: "swiglu" }, name: `${p}.down` }
]
const sigmoidMul = (g: string, out: string, p: string): Array<NodeSpec> => [
  { op: "Sigmoid", inputs: [g], outputs: [`${p}.sig`], name: `${p}.sigmoid` },
  { op: "Mul", inputs: [g, `${p}.sig`], outputs: [out], name: `${p}.silu` }
]
const moe = (fc1: string, fusion: 1 | 2) => (input: string, output: string, p: string): Array<NodeSpec> => [{
  op: "MoE", domain: "com.microsoft", name: `${p}.moe`,
  inputs: [input, "router", fc1, "", "fc2"], outputs: [output],
  attributes: {
    activation_type: "swiglu", swiglu_fusion: fusion, k: 1, normalize_routing_weights: 0, use_sparse_mixer: 0,
    activation_alpha: { float: 1 }, activation_beta: { float: 0 }
  }
}]
const nbits = (w: string, symmetric: boolean, n: number, k: number, chorus = false) => (input: string, output: string, name: string): NodeSpec => {
  const q = `${w}_q${symmetric ? "sym" : "zp"}`
  return {
    op: chorus ? "Int4Linear" : "MatMulNBits", domain: chorus ? "chorus" : "com.microsoft", name, outputs: [output],
    inputs: symmetric ? [input, q, `${q}_scales`] : [input, q, `${q}_scales`, `${q}_zp`],
    attributes: { K: k, N: n, bits: 4, block_size: block, accuracy_level: 0 }
  }
}
const int4Mlp = (symmetric: boolean, chorus = false) => (input: string, output: string, p: string): Array<NodeSpec> => [
  nbits("gate_up", symmetric, 2 * I, H, chorus)(input, `${p}.gu`, `${p}.gate_up`),
  { op: "Split", inputs: [`${p}.gu`, "mlp_split"], outputs: [`${p}.gate`, `${p}.up`], attributes: { axis: -1 }, name: `${p}.split` },
  ...sigmoidMul(`${p}.gate`, `${p}.silu`, p),
  { op: "Mul", inputs: [`${p}.silu`, `${p}.up`], outputs: [`${p}.swiglu`], name: `${p}.swiglu` },
  nbits("down", symmetric, H, I, chorus)(`${p}.swiglu`, output, `${p}.down`)
]
const int4Weights = (symmetric: boolean): Array<string> => ["gate_up", "down"].flatMap((w) => {
  const q = `${w}_q${symmetric ? "sym" : "zp"}`
  return symmetric ? [q, `${q}_scales`] : [q, `${q}_scales`, `${q}_zp`]
})
/** q-sym / q-zp's weights through chorus.Int4Linear, checked against them; `env` picks the library's path. */
const chorusVariant = (name: string, symmetric: boolean, what: string, env?: Readonly<Record<string, string>>): Variant => ({
  name, what, weights: int4Weights(symmetric), mlp: int4Mlp(symmetric, true), int4: { symmetric }, sameAs: symmetric ? "q-sym" : "q-zp", chorusOps: true,
  ...(env === undefined ? {} : { env })
})
const variants: Array<Variant> = [
  { name: "a", what: "MatMul, Split, Sigmoid, Mul, Mul, MatMul (today)", weights: ["gate_up", "down"], mlp: splitMlp(sigmoidMul) },
  // chorus.Linear (native/cuda/f16_gemv.cuh: a GEMV up to 2 rows, cuBLAS above), checked against a.
  { name: "a-chorus", what: "a with both MatMuls as chorus.Linear", weights: ["gate_up", "down"], mlp: splitMlp(sigmoidMul, "chorus.Linear"), chorusOps: true },
  { name: "a-chorus-swiglu", what: "a-chorus with SwiGLU folded into the down projection", weights: ["gate_up", "down"], mlp: swigluLinearMlp, chorusOps: true },
  { name: "a-basic", what: "a at graph optimization basic (no QuickGelu fusion)", optimization: "basic", weights: ["gate_up", "down"], mlp: splitMlp(sigmoidMul) },
  {
    name: "b", what: "MatMul, Split, QuickGelu(alpha 1), Mul, MatMul", weights: ["gate_up", "down"],
    mlp: splitMlp((g, out, p) => [{ op: "QuickGelu", domain: "com.microsoft", inputs: [g], outputs: [out], attributes: { alpha: { float: 1 } }, name: `${p}.silu` }])
  },
  { name: "c-inter", what: "MoE, 1 expert, swiglu_fusion 1 (interleaved), as a shard graph would have it", weights: ["fc1_inter", "fc2"], mlp: moe("fc1_inter", 1), moe: true },
  { name: "c-inter+keep", what: "c-inter with each MoE input kept (no in-place output)", weights: ["fc1_inter", "fc2"], mlp: moe("fc1_inter", 1), moe: true, keepInput: true },
  { name: "c-gate/up+keep", what: "MoE, 1 expert, swiglu_fusion 2, gate half first, input kept", weights: ["fc1_gate_up", "fc2"], mlp: moe("fc1_gate_up", 2), moe: true, keepInput: true },
  { name: "c-up/gate+keep", what: "MoE, 1 expert, swiglu_fusion 2, up half first, input kept", weights: ["fc1_up_gate", "fc2"], mlp: moe("fc1_up_gate", 2), moe: true, keepInput: true },
  // ORT reads ORT_FPA_INTB_GEMM when a session is made: run the probe with it set (`--only q-sym,q-zp`) to time
  // TensorRT-LLM's fpA_intB kernels instead of MatMulNBits' own.
  { name: "q-sym", what: "a with MatMulNBits 4-bit weights (block 32 or --block), symmetric", weights: int4Weights(true), mlp: int4Mlp(true), int4: { symmetric: true } },
  { name: "q-zp", what: "a with MatMulNBits 4-bit weights (block 32 or --block), zero points", weights: int4Weights(false), mlp: int4Mlp(false), int4: { symmetric: false } },
  // Chorus's kernels (native/cuda, npm run build:cuda-ops): the same weights, checked against q-sym / q-zp.
  chorusVariant("q-sym-chorus", true, "q-sym through chorus.Int4Linear"),
  chorusVariant("q-sym-mma-ceil", true, "q-sym-chorus as it was before 2026-12-01f: int4Mma from one row, split-K slices rounded up", { CHORUS_INT4_KERNEL: "mma", CHORUS_INT4_SPLITK: "ceil" }),
  chorusVariant("q-zp-chorus", false, "q-zp through chorus.Int4Linear"),
  chorusVariant("q-sym-w2", true, "q-sym through chorus.Int4Linear, 32-byte runs a lane up to 8 rows", { CHORUS_INT4_KERNEL: "mma-w2" }),
  chorusVariant("q-sym-w4", true, "q-sym through chorus.Int4Linear, 64-byte runs a lane up to 8 rows", { CHORUS_INT4_KERNEL: "mma-w4" }),
  chorusVariant("q-zp-w4", false, "q-zp through chorus.Int4Linear, 64-byte runs a lane up to 8 rows", { CHORUS_INT4_KERNEL: "mma-w4" }),
  chorusVariant("q-sym-floor", true, "q-sym-chorus with split-K slices rounded down to one wave", { CHORUS_INT4_SPLITK: "floor" }),
  chorusVariant("q-sym-w4-floor", true, "q-sym-w4 with split-K slices rounded down to one wave", { CHORUS_INT4_KERNEL: "mma-w4", CHORUS_INT4_SPLITK: "floor" }),
  chorusVariant("q-sym-r256", true, "q-sym-chorus with two row groups a block above 64 rows, up to 256 rows", { CHORUS_INT4_MMA_ROWS: "256" }),
  chorusVariant("q-sym-r256-floor", true, "q-sym-r256 with split-K slices rounded down to one wave", { CHORUS_INT4_MMA_ROWS: "256", CHORUS_INT4_SPLITK: "floor" }),
  // Split-K floor (measured better, 2026-12-01f) with two or four accumulator chains (mma-w4).
  chorusVariant("q-sym-w4-c2", true, "q-sym-w4-floor with two accumulator chains", { CHORUS_INT4_KERNEL: "mma-w4", CHORUS_INT4_SPLITK: "floor", CHORUS_INT4_CHAINS: "2" }),
  chorusVariant("q-sym-w4-c4", true, "q-sym-w4-floor with four accumulator chains", { CHORUS_INT4_KERNEL: "mma-w4", CHORUS_INT4_SPLITK: "floor", CHORUS_INT4_CHAINS: "4" }),
  // One AND/OR a code pair instead of a byte permute and an AND (CHORUS_INT4_DEQUANT=lop3; measured as fast as the default, 2026-12-01g).
  chorusVariant("q-sym-lop3", true, "q-sym-chorus with the LOP3 dequantization up to 8 rows", { CHORUS_INT4_DEQUANT: "lop3" }),
  chorusVariant("q-zp-lop3", false, "q-zp-chorus with the LOP3 dequantization up to 8 rows", { CHORUS_INT4_DEQUANT: "lop3" }),
  // Marlin (third_party/marlin; symmetric, --block 128): the weights rewritten into its layout at the first run.
  chorusVariant("q-sym-marlin", true, "q-sym through chorus.Int4Linear's Marlin path (--block 128)", { CHORUS_INT4_KERNEL: "marlin" }),
  chorusVariant("q-sym-gemv1", true, "q-sym through chorus.Int4Linear's float32 GEMV", { CHORUS_INT4_KERNEL: "gemv1" }),
  chorusVariant("q-sym-gemv2", true, "q-sym through chorus.Int4Linear's half2 GEMV", { CHORUS_INT4_KERNEL: "gemv2" }),
  chorusVariant("q-zp-gemv2", false, "q-zp through chorus.Int4Linear's half2 GEMV", { CHORUS_INT4_KERNEL: "gemv2" })
]
const fileName = (name: string): string => name.replace(/[^a-z0-9-]/gi, "_")
const chosen = variants.filter((v) => v.name === "a" || only === undefined || only.includes(v.name))

const modelFile = (v: Variant): string => {
  const nodes: Array<NodeSpec> = []
  let h = "x", r = "res"
  for (let l = 0; l < L; l++) {
    const p = `l${l}`, last = l === L - 1
    nodes.push({
      op: "SkipSimplifiedLayerNormalization", domain: "com.microsoft", name: `${p}.norm`,
      inputs: [h, r, "gamma"], outputs: [`${p}.in`, "", "", last ? "" : `${p}.res`], attributes: { epsilon: { float: eps } }
    })
    nodes.push(...v.mlp(`${p}.in`, last ? "y" : `${p}.out`, p))
    h = `${p}.out`
    r = `${p}.res`
  }
  const file = `${dir}/mlp-${fileName(v.name)}-${dtype}.onnx`
  fs.writeFileSync(file, encodeModel({
    name: `mlp-${v.name}`, opsets: { "": 17, "com.microsoft": 1, ...(v.chorusOps === true ? { chorus: 1 } : {}) }, nodes,
    external: ["gamma", ...v.weights].map((n) => external.get(n)!),
    inline: v.moe === true ? [] : [{ name: "mlp_split", type: "int64", dims: [2], values: [I, I] }],
    inputs: [
      { name: "x", type: dtype, dims: ["M", H] }, { name: "res", type: dtype, dims: ["M", H] },
      ...(v.moe === true ? [{ name: "router", type: dtype, dims: ["M", 1] }] : [])
    ],
    outputs: [
      { name: "y", type: dtype, dims: ["M", H] },
      ...(v.keepInput === true ? Array.from({ length: L }, (_, l) => ({ name: `l${l}.in`, type: dtype, dims: ["M", H] })) : [])
    ]
  }))
  return file
}

// ------------------------------------------------------------------------------------------------ inputs, reference

/** Per M: x and res uniform in [-1, 1], as float16 bits (the float32 run uses the same values). */
const inputs = new Map(batches.map((M) => [M, { x: uniformHalf(M * H, 1), res: uniformHalf(M * H, 1) }]))
const asFloat = (t: DeviceTensor): Float64Array => {
  const d = t.download()
  return d instanceof Uint16Array ? Float64Array.from(d, (h) => halfToFloat[h]!) : Float64Array.from(d as Float32Array)
}
const upload = (t: DeviceTensor, bits: Uint16Array) => {
  if (dtype === "float16") (t as DeviceTensor<"float16">).upload(bits)
  else (t as DeviceTensor<"float32">).upload(toFloat32(bits))
}
const relErr = (y: Float64Array, ref: Float64Array): number => {
  let num = 0, den = 0
  for (let i = 0; i < y.length; i++) {
    num += (y[i]! - ref[i]!) ** 2
    den += ref[i]! ** 2
  }
  return Math.sqrt(num / den)
}
/** The chain for one row in float64 from today's weights (what variant a computes, without its roundings). */
const jsReference = (xBits: Uint16Array, resBits: Uint16Array): Float64Array => {
  let h = Float64Array.from(xBits.subarray(0, H), (b) => halfToFloat[b]!)
  let r = Float64Array.from(resBits.subarray(0, H), (b) => halfToFloat[b]!)
  const n = new Float64Array(H), gu = new Float64Array(2 * I), s = new Float64Array(I)
  for (let l = 0; l < L; l++) {
    let ms = 0
    for (let k = 0; k < H; k++) {
      r[k] = h[k]! + r[k]!
      ms += r[k]! ** 2
    }
    const inv = 1 / Math.sqrt(ms / H + eps)
    for (let k = 0; k < H; k++) n[k] = r[k]! * inv // gamma is 1
    gu.fill(0)
    for (let k = 0; k < H; k++) {
      const xk = n[k]!, row = k * 2 * I
      for (let j = 0; j < 2 * I; j++) gu[j] += xk * halfToFloat[gateUp[row + j]!]!
    }
    for (let j = 0; j < I; j++) s[j] = (gu[j]! / (1 + Math.exp(-gu[j]!))) * gu[I + j]!
    h = new Float64Array(H)
    for (let j = 0; j < I; j++) {
      const sj = s[j]!, row = j * H
      for (let k = 0; k < H; k++) h[k] += sj * halfToFloat[down[row + k]!]!
    }
  }
  return h
}

// ------------------------------------------------------------------------------------------------ run

const addon = NativeOrt.load()
const reference = new Map<number, Float64Array>()
/** Each int4 variant's output by M, the reference of the variants `sameAs` it. */
const outputsOf = new Map<string, Map<number, Float64Array>>()
interface Row { readonly variant: string; readonly M: number; readonly us?: number; readonly err?: number; readonly note?: string }
const rows: Array<Row> = []
/** A layer's weight bytes: float, or packed codes + scales (+ zero points) for the int4 variants. */
const layerBytes = (v: Variant): number =>
  v.int4 === undefined ? 3 * H * I * elemBytes : 3 * H * I * (0.5 + elemBytes / 32 + (v.int4.symmetric ? 0 : 1 / 64))
const rate = (us: number, v: Variant): string => {
  const bytesPerS = layerBytes(v) / (us / 1e6)
  return device === "cuda" ? `${(bytesPerS / 1e12).toFixed(2)} TB/s` : `${(bytesPerS / 1e9).toFixed(1)} GB/s`
}
const oneLine = (e: unknown): string => (e instanceof Error ? e.message : String(e)).split("\n")[0]!.slice(0, 300)
const median = (xs: Array<number>): number => {
  const s = [...xs].sort((p, q) => p - q)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

for (const v of chosen) {
  let session: NativeSession
  try {
    const file = modelFile(v)
    const t0 = performance.now()
    const saved = Object.keys(v.env ?? {}).map((k) => [k, process.env[k]] as const)
    Object.assign(process.env, v.env ?? {})
    try {
      session = addon.createSession(file, {
      provider: device,
      graphOptimization: v.optimization ?? "all",
      ...(device === "cuda" ? { cuda: { arena_extend_strategy: "kSameAsRequested" } } : { sessionConfig: { "session.disable_prepacking": "1" } }),
      ...(flags.profile === true ? { profile: `${dir}/profile-${fileName(v.name)}` } : {}),
        ...(v.chorusOps === true ? { customOpsLibrary: cudaOpsLibraryPath() } : {})
      })
    } finally {
      for (const [k, value] of saved) {
        if (value === undefined) delete process.env[k]
        else process.env[k] = value
      }
    }
    console.log(`\n${v.name}: ${v.what}; session in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  } catch (e) {
    console.log(`\n${v.name}: ${v.what}: REFUSED at session creation: ${oneLine(e)}`)
    rows.push({ variant: v.name, M: 0, note: `refused: ${oneLine(e)}` })
    continue
  }
  let runsDone = 0
  for (const M of batches) {
    try {
      const { x: xBits, res: resBits } = inputs.get(M)!
      const x = session.allocate(dtype, [M, H]), res = session.allocate(dtype, [M, H]), y = session.allocate(dtype, [M, H])
      upload(x, xBits)
      upload(res, resBits)
      const feeds: Record<string, DeviceTensor> = { x, res }
      if (v.moe === true) {
        const router = session.allocate(dtype, [M, 1])
        upload(router, new Uint16Array(M).fill(toHalf(1)))
        feeds.router = router
      }
      const outs = { y }
      session.run(feeds, outs)
      runsDone++
      const out = asFloat(y)
      let err: number | undefined
      let check = ""
      if (v.name === "a") {
        reference.set(M, out)
        if (M === batches[0]) {
          const js = jsReference(xBits, resBits)
          const e = relErr(out.subarray(0, H), js)
          check = `; vs float64 JS reference (row 0): ${e.toExponential(2)} ${e < tolerance ? "ok" : "MISMATCH"}`
        }
      } else if (v.sameAs !== undefined) {
        const same = outputsOf.get(v.sameAs)?.get(M)
        if (same === undefined) check = `; no reference (${v.sameAs} did not run at this M)`
        else err = relErr(out, same)
      } else if (reference.has(M)) {
        err = relErr(out, reference.get(M)!)
      } else {
        check = "; no reference (a failed at this M)"
      }
      if (v.int4 !== undefined && v.sameAs === undefined) outputsOf.set(v.name, (outputsOf.get(v.name) ?? new Map()).set(M, out))
      const finite = out.every(Number.isFinite)
      for (let i = 0; i < warmup; i++) session.run(feeds, outs)
      const times: Array<number> = []
      for (let i = 0; i < runs; i++) {
        const t = performance.now()
        session.run(feeds, outs)
        times.push(performance.now() - t)
      }
      runsDone += warmup + runs
      const us = (median(times) / L) * 1000
      // int4 rounding of random weights, compounded over the chain, is far above float16's tolerance: sanity only
      // against a; against the same int4 weights through ORT's kernel, float16's own bound.
      const exact = v.int4 === undefined || v.sameAs !== undefined
      const limit = exact ? tolerance : 0.5
      const status = !finite ? "NON-FINITE OUTPUT" : err === undefined ? "" : err < limit ? (exact ? "ok" : "ok (int4 rounding)") : "MISMATCH"
      console.log(`  M=${String(M).padStart(3)}: ${us.toFixed(1).padStart(8)} us per layer (min ${((Math.min(...times) / L) * 1000).toFixed(1)}), ` +
        `${rate(us, v)}${err === undefined ? "" : `; error vs ${v.sameAs ?? "a"} ${err.toExponential(2)} ${status}`}${check}`)
      rows.push({ variant: v.name, M, us, ...(err === undefined ? {} : { err }), ...(status === "" ? {} : { note: status }) })
      for (const t of [y, ...Object.values(feeds)]) t.release()
    } catch (e) {
      console.log(`  M=${String(M).padStart(3)}: FAILED: ${oneLine(e)}`)
      rows.push({ variant: v.name, M, note: `failed: ${oneLine(e)}` })
    }
  }
  if (flags.profile === true) {
    try {
      const byOp = opTimes(session.endProfiling())
      console.log(`  profile (${runsDone} runs of every M together; host-side kernel times):`)
      for (const [op, s] of [...byOp].sort((p, q) => q[1].us - p[1].us)) {
        console.log(`    ${op.padEnd(34)} ${(s.n / runsDone / L).toFixed(2).padStart(5)} a layer, ${(s.us / s.n).toFixed(1).padStart(8)} us each`)
      }
    } catch (e) {
      console.log(`  profile: ${oneLine(e)}`)
    }
  }
  session.release()
}

// ------------------------------------------------------------------------------------------------ table

console.log(`\n| variant | ${batches.map((M) => `M=${M}`).join(" | ")} |`)
console.log(`|---|${batches.map(() => "--:").join("|")}|`)
for (const v of chosen) {
  const refused = rows.find((r) => r.variant === v.name && r.M === 0)
  const cells = batches.map((M) => {
    if (refused !== undefined) return "refused"
    const r = rows.find((x) => x.variant === v.name && x.M === M)
    if (r === undefined || r.us === undefined) return "failed"
    const base = rows.find((x) => x.variant === "a" && x.M === M)?.us
    const speed = base === undefined || v.name === "a" ? "" : ` (${(base / r.us).toFixed(2)}x)`
    return `${r.us.toFixed(1)} us${speed}${r.note !== undefined && r.note !== "ok" ? ` ${r.note}` : ""}`
  })
  console.log(`| ${v.name} | ${cells.join(" | ")} |`)
}
console.log(`\nus per layer (median of ${runs} runs, ${L} layers a session, RMS norm included), speed-up against a in brackets; ` +
  `a layer's weights ${((3 * H * I * elemBytes) / 1e6).toFixed(0)} MB; error tolerance ${tolerance} (relative, against a).`)
for (const r of rows.filter((x) => x.M === 0)) console.log(`${r.variant}: ${r.note}`)
