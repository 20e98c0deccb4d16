/**
 * Pure byte work of checkpoint conversion, shared by the sequential writer (`GraphBuilder.writeShard`) and the
 * conversion worker threads (`ConvertWorker.ts`): blocked transposes of HF linear weights `[out, in]` into the
 * MatMul layout `[in, out]`, on float32 values or on raw 16/32-bit words, and NaN scans.
 */

/** Tile edge of the blocked transposes: a 64x64 tile of both sides stays in L1/L2. */
const B = 64

/** float32 `[rows, cols]` -> `[cols, rows]` into `out` at column offset `colOffset` of a row length `outCols`. */
export const transposeInto = (src: Float32Array, rows: number, cols: number, out: Float32Array, outCols: number, colOffset: number): void => {
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B)
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B)
      for (let r = r0; r < r1; r++) {
        const srcRow = r * cols
        for (let c = c0; c < c1; c++) out[c * outCols + colOffset + r] = src[srcRow + c]
      }
    }
  }
}

/** The same transpose on raw 16-bit words (float16 or bfloat16 bits, no conversion). */
export const transpose16Into = (src: Uint16Array, rows: number, cols: number, out: Uint16Array, outCols: number, colOffset: number): void => {
  for (let c0 = 0; c0 < cols; c0 += B) {
    const c1 = Math.min(cols, c0 + B)
    for (let r0 = 0; r0 < rows; r0 += B) {
      const r1 = Math.min(rows, r0 + B)
      for (let c = c0; c < c1; c++) {
        const o = c * outCols + colOffset
        for (let r = r0; r < r1; r++) out[o + r] = src[r * cols + c]
      }
    }
  }
}

/** The same transpose on raw 32-bit words (float32 bits, no conversion). */
export const transpose32Into = (src: Uint32Array, rows: number, cols: number, out: Uint32Array, outCols: number, colOffset: number): void => {
  for (let c0 = 0; c0 < cols; c0 += B) {
    const c1 = Math.min(cols, c0 + B)
    for (let r0 = 0; r0 < rows; r0 += B) {
      const r1 = Math.min(rows, r0 + B)
      for (let c = c0; c < c1; c++) {
        const o = c * outCols + colOffset
        for (let r = r0; r < r1; r++) out[o + r] = src[r * cols + c]
      }
    }
  }
}

/**
 * True when `bytes` (little-endian words of `dtype`) hold a NaN. The float32 round trip of the sequential path may
 * rewrite a NaN's payload (bfloat16 NaNs are quieted, float16 ones go through V8's conversions), so tensors with a
 * NaN take that path to stay byte-identical; every other value survives the round trip bit for bit.
 */
export const hasNaN = (dtype: "F32" | "F16" | "BF16", bytes: Uint8Array): boolean => {
  if (dtype === "F32") {
    const w = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2)
    for (let i = 0; i < w.length; i++) if ((w[i] & 0x7fffffff) > 0x7f800000) return true
    return false
  }
  const w = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 1)
  const inf = dtype === "F16" ? 0x7c00 : 0x7f80
  for (let i = 0; i < w.length; i++) if ((w[i] & 0x7fff) > inf) return true
  return false
}
