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
 * Clip ratios the activation-weighted search tries, 1.0 down to 0.5 in steps of 0.025 (AWQ's auto clip grid: 20 steps
 * to half the range). 1.0 comes first and is exactly round to nearest over the full range, and only a strictly lower
 * error replaces a candidate, so the search never does worse than round to nearest on its own measure.
 */
export const CLIP_RATIOS: ReadonlyArray<number> = Array.from({ length: 21 }, (_, i) => 1 - i / 40)

/**
 * One block's scale and zero point for the range shrunk by `ratio`. Symmetric (as ORT's MLAS quantizer): the element
 * of largest magnitude `m` (with its sign) gets the scale `m / -8`, so at ratio 1 it lands exactly on code 0 and the
 * codes -8..7 around 8 cover the block. Asymmetric: the range `[min(0, lo), max(0, hi)]` over 15 steps, zero point
 * `round(-min / scale)` (0 stays exactly representable). At ratio 1 the products are the inputs themselves, so this is
 * the round-to-nearest scale bit for bit.
 */
const blockScale = (symmetric: boolean, m: number, lo: number, hi: number, ratio: number, roundScale: (x: number) => number): { scale: number; zp: number } => {
  if (symmetric) return { scale: roundScale((m * ratio) / -8), zp: 8 }
  const l = lo * ratio
  const scale = roundScale((hi * ratio - l) / 15)
  return { scale, zp: scale === 0 ? 8 : Math.min(15, Math.max(0, Math.round(-l / scale))) }
}

const code = (v: number, inv: number, zp: number): number => Math.min(15, Math.max(0, Math.round(v * inv) + zp))

/**
 * `Σ importance[c] · (w[c] - (q[c] - zp) · scale)²` over `[k0, k1)` of the row starting at `row`, in float64: the
 * search's measure, and (through `blockErrors`) the one tests check it against.
 */
const weightedError = (w: Float32Array, row: number, k0: number, k1: number, importance: Float32Array, scale: number, zp: number): number => {
  const inv = scale === 0 ? 0 : 1 / scale
  let err = 0
  for (let c = k0; c < k1; c++) {
    const v = w[row + c]
    const d = v - (code(v, inv, zp) - zp) * scale
    err += importance[c] * d * d
  }
  return err
}

/**
 * Quantizes `w` (row-major `[n, k]` float32, the Hugging Face layout) block by block. `roundScale` rounds a scale to
 * the storage dtype (Math.fround for float32, Math.f16round for float16); codes are computed with the rounded scale,
 * so that the stored scale and codes are consistent with each other.
 *
 * Without `importance`: round to nearest over each block's full range (`blockScale` at ratio 1). With `importance`
 * (`[k]`, non-negative: the mean x² of each input channel over calibration tokens), each block takes the clip ratio
 * of `CLIP_RATIOS` whose scale gives the lowest `Σ importance · (w - dequant(q))²` over the block: a diagonal stand-in
 * for the block's share of the output error E[(x·(w - dequant(q)))²], trading clipped outliers in channels that see
 * small activations for finer steps everywhere else. Deterministic: the same inputs give the same bytes.
 */
export const quantizeInt4 = (w: Float32Array, l: Int4Layout, roundScale: (x: number) => number, importance?: Float32Array): Int4Packed => {
  const { n, k, blockSize, symmetric } = l
  if (w.length !== n * k) throw new RangeError(`weight has ${w.length} values, expected ${n} x ${k}`)
  if (importance !== undefined && importance.length !== k) throw new RangeError(`importance has ${importance.length} values, expected ${k} (one per input channel)`)
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
      let m = 0
      let lo = 0
      let hi = 0
      if (symmetric) {
        // The first element of the largest magnitude, with its sign.
        let top = 0
        for (let c = row + k0, end = row + k1; c < end; c++) {
          const v = w[c]
          const a = v < 0 ? -v : v
          if (a > top) {
            top = a
            m = v
          }
        }
      } else {
        for (let c = row + k0, end = row + k1; c < end; c++) {
          const v = w[c]
          if (v < lo) lo = v
          if (v > hi) hi = v
        }
      }
      let { scale, zp } = blockScale(symmetric, m, lo, hi, 1, roundScale)
      if (importance !== undefined) {
        let best = weightedError(w, row, k0, k1, importance, scale, zp)
        for (let i = 1; i < CLIP_RATIOS.length && best > 0; i++) {
          const candidate = blockScale(symmetric, m, lo, hi, CLIP_RATIOS[i], roundScale)
          const err = weightedError(w, row, k0, k1, importance, candidate.scale, candidate.zp)
          if (err < best) {
            best = err
            scale = candidate.scale
            zp = candidate.zp
          }
        }
      }
      if (zeroPoints !== undefined) zeroPoints[r * zpRow + (blk >>> 1)] |= zp << ((blk & 1) * 4)
      scales[r * nb + blk] = scale
      const inv = scale === 0 ? 0 : 1 / scale
      const out = (r * nb + blk) * half
      // `code` inlined two codes a byte (the conversion's hot loop): floor(v / scale + zp + 0.5) clamped to 0..15 is
      // Math.round(v / scale) + zp clamped, and a NaN gives 0 as there.
      const zpHalf = zp + 0.5
      const len = k1 - k0
      let j = 0
      for (let c = row + k0; j + 1 < len; j += 2, c += 2) {
        const t0 = w[c] * inv + zpHalf
        const t1 = w[c + 1] * inv + zpHalf
        const q0 = t0 >= 15 ? 15 : t0 > 0 ? t0 | 0 : 0
        const q1 = t1 >= 15 ? 15 : t1 > 0 ? t1 | 0 : 0
        b[out + (j >>> 1)] = q0 | (q1 << 4)
      }
      if (j < len) {
        const t0 = w[row + k0 + j] * inv + zpHalf
        b[out + (j >>> 1)] = (t0 >= 15 ? 15 : t0 > 0 ? t0 | 0 : 0) | (zp << 4)
        j += 2
      }
      // A partial last block is padded with its zero point code.
      for (; j < blockSize; j += 2) b[out + (j >>> 1)] = zp | (zp << 4)
    }
  }
  return { b, scales, zeroPoints }
}

/**
 * Each block's `Σ importance · (w - dequant(q))²` (`[n * n_blocks]`, row-major), with the codes and scales `packed`
 * holds: the measure the activation-weighted search minimizes, computed the same way, for tests and tools.
 */
export const blockErrors = (w: Float32Array, packed: Int4Packed, l: Int4Layout, importance: Float32Array): Float64Array => {
  const { n, k, blockSize } = l
  const nb = blocksPerRow(l)
  const zpRow = Math.ceil(nb / 2)
  const out = new Float64Array(n * nb)
  for (let r = 0; r < n; r++) {
    for (let blk = 0; blk < nb; blk++) {
      const zp = packed.zeroPoints === undefined ? 8 : (packed.zeroPoints[r * zpRow + (blk >>> 1)] >>> ((blk & 1) * 4)) & 15
      out[r * nb + blk] = weightedError(w, r * k, blk * blockSize, Math.min(k, (blk + 1) * blockSize), importance, packed.scales[r * nb + blk], zp)
    }
  }
  return out
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
 * points unless symmetric. `w` is row-major `[n, k]` float32; `importance` turns on the clip search (`quantizeInt4`).
 */
export const int4Bytes = (w: Float32Array, l: Int4Layout, dtype: "float32" | "float16" | "bfloat16", importance?: Float32Array): Array<Uint8Array> => {
  const packed = quantizeInt4(w, l, scaleRounder(dtype), importance)
  const scales = encodeFloat32(dtype === "float32" ? "F32" : dtype === "float16" ? "F16" : "BF16", packed.scales)
  return packed.zeroPoints === undefined ? [packed.b, scales] : [packed.b, scales, packed.zeroPoints]
}
