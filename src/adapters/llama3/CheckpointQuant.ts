/**
 * Lossless repacking of AWQ (GEMM) and GPTQ 4-bit linears into ONNX Runtime's `com.microsoft.MatMulNBits` inputs
 * (`MatMulNBitsPacking.ts` describes those): the checkpoint's codes, zero points and scales are moved, never
 * dequantized and quantized again, so the MatMulNBits weight computes `(q - z) * s` with the checkpoint's own q, z, s.
 *
 * Source layouts, checked against the reference code (file and line at the commits read on 2026-12-01):
 * - AWQ GEMM, AutoAWQ (casper-hansen/AutoAWQ 88e4c76):
 *   - awq/modules/linear/gemm.py L135-158 (WQLinear_GEMM.__init__): `qweight` int32 `[in, out / 8]`, `qzeros` int32
 *     `[in / group, out / 8]`, `scales` float16 `[in / group, out]`; L132 asserts `in % group == 0`.
 *   - gemm.py L220-227 (from_linear): `qweight[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)` with
 *     `order_map = [0, 2, 4, 6, 1, 3, 5, 7]` (AWQ_ORDER in awq/utils/packing_utils.py L4): nibble i of word `col`
 *     holds output column `col * 8 + AWQ_ORDER[i]`, so column `8 col + j` sits in nibble `AWQ_REVERSE_ORDER[j]`
 *     (packing_utils.py L5, `[0, 4, 1, 5, 2, 6, 3, 7]`). L241-248 pack `qzeros` the same way, one row per group.
 *   - packing_utils.py L87-102 (dequantize_gemm): unpack, reverse the order, `& 15`, then
 *     `w[k, n] = (iweight[k, n] - izeros[k / group, n]) * scales[k / group, n]`: zero points are stored as they are.
 * - GPTQ, AutoGPTQ (AutoGPTQ/AutoGPTQ 9f7d370), auto_gptq/nn_modules/qlinear/qlinear_cuda.py:
 *   - L51-75 (QuantLinear.__init__): `qweight` int32 `[in / 8, out]` (4 bits), `qzeros` int32
 *     `[ceil(in / group), out / 8]`, `scales` `[ceil(in / group), out]`, `g_idx` int32 `[in]` = `i // group`.
 *   - L138-143 (pack): `qweight[row] |= intweight[j] << (4 * (j - i))` for the 8 input rows `j` of word row `row`:
 *     input row k sits in nibble `k % 8` of `qweight[k / 8, n]`.
 *   - L169-179 (pack): `zeros -= 1`, then `qzeros[:, col] |= zeros[:, j] << (4 * (j - i))`: output column n sits in
 *     nibble `n % 8` of `qzeros[g, n / 8]`, stored minus 1 (the "v1" format).
 *   - L258-264 and L302 (forward, torch path): `zeros = (qzeros >> shift) & 15; zeros = zeros + 1` and
 *     `weights = scales[g_idx] * (weight - zeros[g_idx])`.
 *   - GPTQ v2 (`checkpoint_format: "gptq_v2"`, GPTQModel; AutoGPTQ auto_gptq/quantization/config.py L18-67 names
 *     the field) stores the zero points without the minus 1.
 * A v1 zero point can read as 16 (a stored 15 plus 1): that is a quantizer zero point of 0 stored as -1, which as
 * uint32 also sets every higher nibble of its word (L169-177: `astype(np.uint32)` of -1, OR-ed in); the kernels
 * disagree on its meaning (qlinear_cuda_old.py L301-303 masks it to 0 after the +1, qlinear_cuda.py keeps 16), and
 * MatMulNBits' 4-bit zero points cannot hold 16, so such a tensor is refused, named.
 *
 * Pure functions over typed arrays: the conversion workers and the sequential writer share them.
 */
import { encodeFloat32, toFloat32 } from "../../checkpoint/FloatCodec.ts"
import type { TensorDType } from "../../checkpoint/TensorSource.ts"
import type { CheckpointQuant } from "./LlamaConfig.ts"
import { blocksPerRow, type Int4Packed } from "./MatMulNBitsPacking.ts"

/** AutoAWQ awq/utils/packing_utils.py L5: the nibble that holds output column `8 col + j` is `AWQ_REVERSE_ORDER[j]`. */
export const AWQ_REVERSE_ORDER: ReadonlyArray<number> = [0, 4, 1, 5, 2, 6, 3, 7]

/** One checkpoint tensor's raw bytes (from a safetensors file) and how to read them. */
export interface RawTensor {
  readonly dtype: TensorDType
  readonly shape: ReadonlyArray<number>
  readonly bytes: Uint8Array
}

/** A quantized linear as stored: `<module>.qweight`, `.qzeros`, `.scales` (and GPTQ's `.g_idx`). */
export interface QuantizedLinear {
  /** The module name (`model.layers.0.self_attn.q_proj`), for messages. */
  readonly module: string
  /** Output features (N). */
  readonly out: number
  /** Input features (K). */
  readonly inDim: number
  readonly qweight: RawTensor
  readonly qzeros: RawTensor
  readonly scales: RawTensor
  readonly gIdx?: RawTensor | undefined
}

/** The tensor suffixes of one quantized linear, in the order tasks carry them. */
export const quantizedSuffixes = (q: CheckpointQuant): ReadonlyArray<string> =>
  q.method === "awq" ? ["qweight", "qzeros", "scales"] : ["qweight", "qzeros", "scales", "g_idx"]

/** Every checkpoint tensor of `modules`, module by module in `quantizedSuffixes` order. */
export const quantizedTensorNames = (q: CheckpointQuant, modules: ReadonlyArray<string>): Array<string> =>
  modules.flatMap((m) => quantizedSuffixes(q).map((s) => `${m}.${s}`))

export class RepackError extends Error {}

const int32s = (t: RawTensor, what: string): Int32Array => {
  if (t.dtype !== "I32") throw new RepackError(`${what} is ${t.dtype}, expected I32`)
  const copy = t.bytes.byteOffset % 4 === 0 ? t.bytes : t.bytes.slice()
  return new Int32Array(copy.buffer, copy.byteOffset, copy.byteLength / 4)
}

const floats = (t: RawTensor, what: string): Float32Array => {
  if (t.dtype === "I32") throw new RepackError(`${what} is I32, expected a float dtype`)
  return toFloat32(t.dtype, t.bytes)
}

/**
 * Repacks one linear into MatMulNBits' `[N, K / group, group / 2]` codes, `[N * K / group]` scales (float32 values,
 * the checkpoint's exactly) and `[N * ceil(groups / 2)]` zero points, with `block_size = group`. Throws a
 * RepackError naming the tensor for a v1 zero point of 16 or a GPTQ `g_idx` that is not `k / group`.
 */
export const repackLinear = (q: CheckpointQuant, l: QuantizedLinear): Int4Packed => {
  const { out: n, inDim: k, module } = l
  const group = q.groupSize
  if (k % group !== 0) throw new RepackError(`${module}: ${k} input features are not a multiple of group_size ${group}`)
  if (n % 8 !== 0 || k % 8 !== 0) throw new RepackError(`${module}: [${n}, ${k}] is not a multiple of 8 in both dimensions`)
  const nb = blocksPerRow({ k, blockSize: group })
  const half = group / 2
  const zpRow = Math.ceil(nb / 2)
  const qweight = int32s(l.qweight, `${module}.qweight`)
  const qzeros = int32s(l.qzeros, `${module}.qzeros`)
  const scalesIn = floats(l.scales, `${module}.scales`)
  const b = new Uint8Array(n * nb * half)
  const scales = new Float32Array(n * nb)
  const zeroPoints = new Uint8Array(n * zpRow)
  const words = n / 8
  // scales [groups, out] -> [out, groups]
  for (let g = 0; g < nb; g++) for (let c = 0; c < n; c++) scales[c * nb + g] = scalesIn[g * n + c]

  if (q.method === "awq") {
    // zero points: qzeros[g, c / 8], nibble AWQ_REVERSE_ORDER[c % 8]
    for (let g = 0; g < nb; g++) {
      for (let c = 0; c < n; c++) {
        const z = (qzeros[g * words + (c >>> 3)] >>> (4 * AWQ_REVERSE_ORDER[c & 7])) & 15
        zeroPoints[c * zpRow + (g >>> 1)] |= z << ((g & 1) * 4)
      }
    }
    // codes: qweight[r, c / 8], nibble AWQ_REVERSE_ORDER[c % 8]
    for (let r = 0; r < k; r++) {
      const blk = (r / group) | 0
      const j = r - blk * group
      const shift = (j & 1) * 4
      const byteInBlock = j >>> 1
      const row = r * words
      for (let c = 0; c < n; c++) {
        const code = (qweight[row + (c >>> 3)] >>> (4 * AWQ_REVERSE_ORDER[c & 7])) & 15
        b[(c * nb + blk) * half + byteInBlock] |= code << shift
      }
    }
    return { b, scales, zeroPoints }
  }

  // GPTQ: g_idx must be the plain k / group (desc_act false) for the groups to be MatMulNBits' contiguous blocks.
  if (l.gIdx === undefined) throw new RepackError(`${module}.g_idx is missing`)
  const gIdx = int32s(l.gIdx, `${module}.g_idx`)
  for (let r = 0; r < k; r++) {
    if (gIdx[r] !== Math.floor(r / group)) {
      throw new RepackError(
        `${module}.g_idx[${r}] is ${gIdx[r]}, expected ${Math.floor(r / group)} (= ${r} / group_size ${group}): a reordered (act-order) g_idx cannot map onto MatMulNBits' contiguous blocks without requantizing`
      )
    }
  }
  const plusOne = q.format === "gptq" ? 1 : 0
  for (let g = 0; g < nb; g++) {
    for (let c = 0; c < n; c++) {
      const z = ((qzeros[g * words + (c >>> 3)] >>> (4 * (c & 7))) & 15) + plusOne
      if (z > 15) {
        throw new RepackError(
          `${module}.qzeros: the zero point of group ${g}, output ${c} is 16 after GPTQ v1's +1 (a quantizer zero point of 0 stored as -1, which also corrupts the higher nibbles of its word); MatMulNBits' 4-bit zero points cannot hold it`
        )
      }
      zeroPoints[c * zpRow + (g >>> 1)] |= z << ((g & 1) * 4)
    }
  }
  // codes: qweight[r / 8, c], nibble r % 8
  for (let r = 0; r < k; r++) {
    const blk = (r / group) | 0
    const j = r - blk * group
    const shift = (j & 1) * 4
    const byteInBlock = j >>> 1
    const row = (r >>> 3) * n
    const nibble = 4 * (r & 7)
    for (let c = 0; c < n; c++) {
      const code = (qweight[row + c] >>> nibble) & 15
      b[(c * nb + blk) * half + byteInBlock] |= code << shift
    }
  }
  return { b, scales, zeroPoints }
}

const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.byteLength
  }
  return out
}

/**
 * The data-file bytes of a MatMulNBits weight made of `linears` stacked along N (q|k|v, gate|up, or one linear):
 * codes, scales in `dtype`, zero points (`GraphBuilder.weightParts` order). MatMulNBits' three inputs are row-major
 * in N, so stacking linears is concatenating each part. Scales must be exactly representable in `dtype` (float16
 * scales are in float16 and float32; a float32 or bfloat16 checkpoint scale may not be in float16): otherwise a
 * RepackError names the tensor, since rounding them would change the model.
 */
export const repackedBytes = (
  q: CheckpointQuant,
  linears: ReadonlyArray<QuantizedLinear>,
  dtype: "float32" | "float16" | "bfloat16"
): Array<Uint8Array> => {
  const storage = dtype === "float32" ? "F32" : dtype === "float16" ? "F16" : "BF16"
  const codes: Array<Uint8Array> = []
  const scales: Array<Uint8Array> = []
  const zeros: Array<Uint8Array> = []
  for (const l of linears) {
    const packed = repackLinear(q, l)
    const encoded = encodeFloat32(storage, packed.scales)
    const back = toFloat32(storage, encoded)
    for (let i = 0; i < back.length; i++) {
      if (back[i] !== packed.scales[i] && !(Number.isNaN(back[i]) && Number.isNaN(packed.scales[i]))) {
        throw new RepackError(
          `${l.module}.scales holds ${packed.scales[i]}, which ${dtype} cannot represent exactly (it would be ${back[i]}); serve this checkpoint in float32${l.scales.dtype === "F16" ? " or float16" : ""}`
        )
      }
    }
    codes.push(packed.b)
    scales.push(encoded)
    zeros.push(packed.zeroPoints!)
  }
  return [concat(codes), concat(scales), concat(zeros)]
}
