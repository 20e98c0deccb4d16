/**
 * Storage dtypes <-> float32, with no dependencies (the conversion worker threads load it on start).
 */
import type { StorageDType } from "./TensorSource.ts"

/** Converts raw little-endian storage bytes (a fresh, aligned buffer) to float32. */
export const toFloat32 = (dtype: StorageDType, bytes: Uint8Array): Float32Array => {
  switch (dtype) {
    case "F32":
      return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
    case "F16":
      return new Float32Array(new Float16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2))
    case "BF16": {
      // bfloat16 is the top half of a float32: shift it into place.
      const src = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2)
      const out = new Uint32Array(src.length)
      for (let i = 0; i < src.length; i++) out[i] = src[i] << 16
      return new Float32Array(out.buffer)
    }
  }
}

/** float32 -> bfloat16 bits with round-to-nearest-even (NaN stays a quiet NaN). */
const toBf16Bytes = (data: Float32Array): Uint8Array => {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length)
  const out = new Uint16Array(data.length)
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i]
    if ((u & 0x7fffffff) > 0x7f800000) {
      out[i] = (u >>> 16) | 0x0040
    } else {
      out[i] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff
    }
  }
  return new Uint8Array(out.buffer)
}

/** float32 values as the bytes of a storage dtype (F16 and BF16 round to nearest even). */
export const encodeFloat32 = (dtype: StorageDType, data: Float32Array): Uint8Array => {
  switch (dtype) {
    case "F32":
      return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    case "F16": {
      const half = new Float16Array(data.length)
      half.set(data)
      return new Uint8Array(half.buffer)
    }
    case "BF16":
      return toBf16Bytes(data)
  }
}

