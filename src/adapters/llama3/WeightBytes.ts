/**
 * Pure byte work of checkpoint conversion, shared by the sequential writer (`GraphBuilder.writeShard`) and the
 * conversion worker threads (`ConvertWorker.ts`): blocked transposes of HF linear weights `[out, in]` into the
 * MatMul layout `[in, out]`, on float32 values or on raw 16/32-bit words, and NaN scans.
 */

/** Tile edge of the blocked transposes: a 64x64 tile of both sides stays in L1/L2. */
// One transpose per array type on purpose: each loop then sees a single element kind and stays monomorphic in V8,
// which a shared generic loop over three typed-array classes would not (this is the conversion's hot loop).
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
  if (rows % 2 === 0 && cols % 2 === 0 && outCols % 2 === 0 && colOffset % 2 === 0 && src.byteOffset % 4 === 0 && out.byteOffset % 4 === 0) {
    transposePairs(new Uint32Array(src.buffer, src.byteOffset, src.length >>> 1), rows, cols, new Uint32Array(out.buffer, out.byteOffset, out.length >>> 1), outCols, colOffset)
    return
  }
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
 * `transpose16Into` two by two: a 2x2 block of 16-bit values is two 32-bit words in and two out (half the loads and
 * stores). Every dimension and offset even (the Llama shapes always are).
 */
const transposePairs = (src: Uint32Array, rows: number, cols: number, out: Uint32Array, outCols: number, colOffset: number): void => {
  const sw = cols >>> 1 // source row length in words
  const ow = outCols >>> 1
  const oOff = colOffset >>> 1
  for (let c0 = 0; c0 < sw; c0 += B / 2) {
    const c1 = Math.min(sw, c0 + B / 2)
    for (let r0 = 0; r0 < rows; r0 += B) {
      const r1 = Math.min(rows, r0 + B)
      for (let c = c0; c < c1; c++) {
        const o0 = 2 * c * ow + oOff // word index of out row 2c, column colOffset
        const o1 = o0 + ow
        for (let r = r0; r < r1; r += 2) {
          const a = src[r * sw + c] // (r, 2c) low, (r, 2c+1) high
          const b = src[(r + 1) * sw + c] // (r+1, 2c) low, (r+1, 2c+1) high
          out[o0 + (r >>> 1)] = (a & 0xffff) | (b << 16)
          out[o1 + (r >>> 1)] = (a >>> 16) | (b & 0xffff0000)
        }
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
  // Branchless: with K = 0x7fff - (all-ones exponent), (v & 0x7fff) + K sets bit 15 exactly for a NaN; OR-ing
  // these over the tensor tells whether any is one. Two 16-bit values per 32-bit word (no carry between halves).
  if (dtype === "F32") {
    const w = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2)
    const K = 0x7fffffff - 0x7f800000
    let acc = 0
    for (let i = 0; i < w.length; i++) acc |= (w[i] & 0x7fffffff) + K
    return (acc & 0x80000000) !== 0
  }
  const K = 0x7fff - (dtype === "F16" ? 0x7c00 : 0x7f80)
  const words = (bytes.byteOffset & 3) === 0 ? bytes.byteLength >>> 2 : 0
  const w = new Uint32Array(bytes.buffer, words === 0 ? 0 : bytes.byteOffset, words)
  const K2 = K * 0x10001
  let acc = 0
  for (let i = 0; i < words; i++) acc |= (w[i] & 0x7fff7fff) + K2
  const h = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 1)
  for (let i = words * 2; i < h.length; i++) acc |= (h[i] & 0x7fff) + K
  return (acc & 0x80008000) !== 0
}
