/**
 * Round-to-nearest 4-bit block quantization of a linear weight into the input layout of ONNX Runtime's
 * `com.microsoft.MatMulNBits` (docs/ContribOperators.md; the CPU kernel contrib_ops/cpu/quantization/matmul_nbits.cc
 * and the Python quantizer matmul_nbits_quantizer.py agree on it):
 * - `B` uint8 `[N, n_blocks, block/2]`: row n of the weight (output feature n, which is row n of a Hugging Face
 *   `[out, in]` weight, so no transpose is needed), cut along K into blocks; inside a block, element 2j is the low
 *   nibble of byte j and element 2j+1 the high nibble.
 * - `scales` `[N * n_blocks]` in the activation dtype.
 * - `zero_points` uint8 `[N * ceil(n_blocks / 2)]`, two blocks per byte, low nibble first; absent means 8 for every
 *   block (the symmetric scheme).
 * `n_blocks = ceil(K / block)`; a partial last block is padded with its zero point code (the padding dequantizes to
 * exactly 0, as in ORT's own quantizer, which pads with zeros, so a kernel that reads it adds nothing), and its scale
 * and zero point come from its real elements only.
 * Dequantized value: `(q - zero_point) * scale`.
 *
 * Pure functions: the conversion worker threads and the sequential writer share them, and tests call them directly.
 */
import { encodeFloat32 } from "../../checkpoint/FloatCodec.ts"

export type QuantBlockSize = 32 | 128

export interface Int4Layout {
  /** Rows of the weight (MatMul output features). */
  readonly n: number
  /** Columns (MatMul input features). */
  readonly k: number
  /** A power of two >= 16 (`QuantBlockSize` for `--quantize int4`; a pre-quantized checkpoint's group size otherwise). */
  readonly blockSize: number
  /** Symmetric: no zero points (ORT's implicit 8); otherwise one 4-bit zero point per block. */
  readonly symmetric: boolean
}

export interface Int4Packed {
  /** `[N, n_blocks, block/2]` */
  readonly b: Uint8Array
  /** `[N * n_blocks]`, float32 values already rounded to the storage dtype by `roundScale`. */
  readonly scales: Float32Array
  /** `[N * ceil(n_blocks / 2)]`, or undefined when symmetric. */
  readonly zeroPoints: Uint8Array | undefined
}

export const blocksPerRow = (l: Pick<Int4Layout, "k" | "blockSize">): number => Math.ceil(l.k / l.blockSize)

/** Byte sizes of the three initializers (scales in bytes of `scaleBytes` each). */
export const int4Sizes = (l: Int4Layout, scaleBytes: number) => {
  const nb = blocksPerRow(l)
  return {
    b: l.n * nb * (l.blockSize / 2),
    scales: l.n * nb * scaleBytes,
    zeroPoints: l.symmetric ? 0 : l.n * Math.ceil(nb / 2)
  }
}

/**
 * Quantizes `w` (row-major `[n, k]` float32, the Hugging Face layout) block by block. `roundScale` rounds a scale to
 * the storage dtype (Math.fround for float32, Math.f16round for float16); codes are computed with the rounded scale,
 * so that the stored scale and codes are consistent with each other.
 *
 * Symmetric (as ORT's MLAS quantizer): the block's element of largest magnitude `m` (with its sign) gets the scale
 * `m / -8`, so it lands exactly on code 0 and the codes -8..7 around 8 cover the block. Asymmetric: the range
 * `[min(0, lo), max(0, hi)]` over 15 steps, zero point `round(-min / scale)` (0 stays exactly representable).
 */
export const quantizeInt4 = (w: Float32Array, l: Int4Layout, roundScale: (x: number) => number): Int4Packed => {
  const { n, k, blockSize, symmetric } = l
  if (w.length !== n * k) throw new RangeError(`weight has ${w.length} values, expected ${n} x ${k}`)
  const nb = blocksPerRow(l)
  const half = blockSize / 2
  const b = new Uint8Array(n * nb * half)
  const scales = new Float32Array(n * nb)
  const zpRow = Math.ceil(nb / 2)
  const zeroPoints = symmetric ? undefined : new Uint8Array(n * zpRow)
  for (let r = 0; r < n; r++) {
    const row = r * k
    for (let blk = 0; blk < nb; blk++) {
      const k0 = blk * blockSize
      const k1 = Math.min(k, k0 + blockSize)
      let scale: number
      let zp: number
      if (symmetric) {
        let m = 0
        for (let c = k0; c < k1; c++) {
          const v = w[row + c]
          if (Math.abs(v) > Math.abs(m)) m = v
        }
        scale = roundScale(m / -8)
        zp = 8
      } else {
        let lo = 0
        let hi = 0
        for (let c = k0; c < k1; c++) {
          const v = w[row + c]
          if (v < lo) lo = v
          if (v > hi) hi = v
        }
        scale = roundScale((hi - lo) / 15)
        zp = scale === 0 ? 8 : Math.min(15, Math.max(0, Math.round(-lo / scale)))
        zeroPoints![r * zpRow + (blk >>> 1)] |= zp << ((blk & 1) * 4)
      }
      scales[r * nb + blk] = scale
      const inv = scale === 0 ? 0 : 1 / scale
      const out = (r * nb + blk) * half
      for (let c = k0; c < k1; c++) {
        const q = Math.min(15, Math.max(0, Math.round(w[row + c] * inv) + zp))
        const j = c - k0
        b[out + (j >>> 1)] |= q << ((j & 1) * 4)
      }
      for (let j = k1 - k0; j < blockSize; j++) b[out + (j >>> 1)] |= zp << ((j & 1) * 4)
    }
  }
  return { b, scales, zeroPoints }
}

/** The float values `packed` stands for, row-major `[n, k]`: `(q - zero_point) * scale`. */
export const dequantizeInt4 = (packed: Int4Packed, l: Int4Layout): Float32Array => {
  const { n, k, blockSize } = l
  const nb = blocksPerRow(l)
  const half = blockSize / 2
  const zpRow = Math.ceil(nb / 2)
  const w = new Float32Array(n * k)
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < k; c++) {
      const blk = Math.floor(c / blockSize)
      const j = c % blockSize
      const byte = packed.b[(r * nb + blk) * half + (j >>> 1)]
      const q = (j & 1) === 0 ? byte & 15 : byte >>> 4
      const zp = packed.zeroPoints === undefined ? 8 : (packed.zeroPoints[r * zpRow + (blk >>> 1)] >>> ((blk & 1) * 4)) & 15
      w[r * k + c] = (q - zp) * packed.scales[r * nb + blk]
    }
  }
  return w
}

const bf16Word = new Float32Array(1)
const bf16Bits = new Uint32Array(bf16Word.buffer)

/**
 * Rounds a (finite) scale to the value the storage dtype will hold, round to nearest even like `encodeFloat32`, so
 * that codes are computed against the scale the kernel actually reads.
 */
export const scaleRounder = (dtype: "float32" | "float16" | "bfloat16"): (x: number) => number => {
  switch (dtype) {
    case "float32":
      return Math.fround
    case "float16":
      return Math.f16round
    case "bfloat16":
      return (x) => {
        bf16Word[0] = x
        const u = bf16Bits[0]
        bf16Bits[0] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16
        return bf16Word[0]
      }
  }
}

/**
 * The data-file bytes of an int4 weight, in `GraphBuilder.weightParts` order: codes, scales in `dtype`, then zero
 * points unless symmetric. `w` is row-major `[n, k]` float32.
 */
export const int4Bytes = (w: Float32Array, l: Int4Layout, dtype: "float32" | "float16" | "bfloat16"): Array<Uint8Array> => {
  const packed = quantizeInt4(w, l, scaleRounder(dtype))
  const scales = encodeFloat32(dtype === "float32" ? "F32" : dtype === "float16" ? "F16" : "BF16", packed.scales)
  return packed.zeroPoints === undefined ? [packed.b, scales] : [packed.b, scales, packed.zeroPoints]
}
