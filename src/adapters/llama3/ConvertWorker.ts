/**
 * The conversion worker: produces one initializer of a shard's external data file in a piscina thread and writes
 * it at its precomputed offset (`GraphBuilder.writeShards` plans the layout, `ConvertPool.ts` runs the threads).
 * Tasks are plain data (file paths, byte ranges, dtypes, shapes); the thread opens the safetensors files and the
 * data file itself, so no tensor crosses the thread boundary. Blocking reads and writes are fine here: they hold
 * only this thread.
 *
 * Bytes are those of the sequential path (read -> float32 -> transpose -> target dtype) exactly. Where the source
 * dtype is the target dtype, the words are copied or transposed as they are (that round trip is the identity for
 * every value but NaN payloads); a linear of another dtype is transposed as raw source words and then cast, which
 * is the same elementwise cast in another order. A tensor holding a NaN takes the float32 path (V8 may rewrite
 * NaN payloads in float conversions, so only that path reproduces the sequential one's NaN bytes).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { encodeFloat32, toFloat32 } from "../../checkpoint/FloatCodec.ts"
import type { StorageDType, TensorLocation } from "../../checkpoint/TensorSource.ts"
import { type QuantizedLinear, quantizedSuffixes, RepackError, repackedBytes } from "./CheckpointQuant.ts"
import type { CheckpointQuant } from "./LlamaConfig.ts"
import { int4Bytes, type QuantBlockSize } from "./MatMulNBitsPacking.ts"
import { hasNaN, transpose16Into, transpose32Into, transposeInto } from "./WeightBytes.ts"

export interface ConvertTask {
  /**
   * `copy`: the tensor as stored; `linear`: sources `[rows_k, inDim]` concatenated and transposed to `[inDim, outDim]`;
   * `int4`: sources concatenated to `[outDim, inDim]` and quantized for MatMulNBits (`MatMulNBitsPacking.ts`);
   * `prequantized`: an AWQ / GPTQ checkpoint's packed linears repacked for MatMulNBits (`CheckpointQuant.ts`), the
   * sources being each module's tensors in `quantizedSuffixes` order.
   */
  readonly kind: "copy" | "linear" | "int4" | "prequantized"
  readonly dataPath: string
  /** Byte offset of the initializer in `dataPath`. */
  readonly offset: number
  readonly dtype: "float32" | "float16" | "bfloat16"
  readonly inDim: number
  readonly outDim: number
  readonly sources: ReadonlyArray<TensorLocation>
  /**
   * With `int4`: the block layout, the data-file offset of each part (codes, scales, zero points) and, for the
   * activation-weighted clip search, the mean x² of each input channel (`[inDim]`; absent: round to nearest).
   */
  readonly int4?: {
    readonly blockSize: QuantBlockSize
    readonly symmetric: boolean
    readonly partOffsets: ReadonlyArray<number>
    readonly importance?: Float32Array
  }
  /** With `prequantized`: the checkpoint's quantization, the modules stacked along N, the offset of each part. */
  readonly prequantized?: { readonly quant: CheckpointQuant; readonly modules: ReadonlyArray<string>; readonly partOffsets: ReadonlyArray<number> }
}

export type ConvertResult =
  | { readonly ok: true; readonly bytes: number; readonly fast: boolean }
  | { readonly ok: false; readonly kind: "checkpoint"; readonly path: string; readonly message: string }
  | { readonly ok: false; readonly kind: "conversion"; readonly message: string }

const READ_CHUNK = 1 << 30
/** Copies stream through a buffer of this size, so an embedding table never sits whole in memory. */
const COPY_CHUNK = 64 << 20

class SourceError extends Error {
  readonly file: string
  constructor(file: string, message: string) {
    super(message)
    this.file = file
  }
}

/** The float dtype of a source the float paths read (validation keeps I32 tensors out of them). */
const floatOf = (s: TensorLocation): StorageDType => {
  if (s.dtype === "I32") throw new SourceError(s.file, `${path.basename(s.file)}: an I32 tensor where a float one was expected`)
  return s.dtype
}

const storage = (dtype: ConvertTask["dtype"]): StorageDType => (dtype === "float32" ? "F32" : dtype === "float16" ? "F16" : "BF16")

const readAt = (fd: number, file: string, target: Uint8Array, position: number): void => {
  let done = 0
  while (done < target.byteLength) {
    const n = fs.readSync(fd, target, done, Math.min(READ_CHUNK, target.byteLength - done), position + done)
    if (n === 0) {
      throw new SourceError(file, `${path.basename(file)} is truncated: expected ${target.byteLength} bytes at offset ${position}, file ended after ${done}`)
    }
    done += n
  }
}

const writeAt = (fd: number, bytes: Uint8Array, position: number): void => {
  let done = 0
  while (done < bytes.byteLength) done += fs.writeSync(fd, bytes, done, Math.min(READ_CHUNK, bytes.byteLength - done), position + done)
}

/** Opens each source file once per task; closes them all at the end. */
const withFiles = <A>(task: ConvertTask, f: (read: (s: TensorLocation, target: Uint8Array, skip?: number) => void, out: number) => A): A => {
  const fds = new Map<string, number>()
  let out: number | undefined
  try {
    try {
      out = fs.openSync(task.dataPath, "r+")
    } catch (cause) {
      throw new Error(`cannot open ${task.dataPath}: ${cause instanceof Error ? cause.message : String(cause)}`)
    }
    const read = (s: TensorLocation, target: Uint8Array, skip = 0) => {
      let fd = fds.get(s.file)
      if (fd === undefined) {
        try {
          fd = fs.openSync(s.file, "r")
        } catch (cause) {
          throw new SourceError(s.file, `cannot read ${s.file}: ${cause instanceof Error ? cause.message : String(cause)}`)
        }
        fds.set(s.file, fd)
      }
      readAt(fd, s.file, target, s.position + skip)
    }
    return f(read, out)
  } finally {
    for (const fd of fds.values()) fs.closeSync(fd)
    if (out !== undefined) fs.closeSync(out)
  }
}

type Read = (s: TensorLocation, target: Uint8Array, skip?: number) => void

/** The sequential path's bytes: float32 values, transposed for a linear, encoded to the target dtype. */
const viaFloat32 = (task: ConvertTask, read: Read): Uint8Array => {
  const decode = (s: TensorLocation): Float32Array => {
    const bytes = new Uint8Array(s.byteLength)
    read(s, bytes)
    return toFloat32(floatOf(s), bytes)
  }
  if (task.kind === "copy") return encodeFloat32(storage(task.dtype), decode(task.sources[0]))
  const out = new Float32Array(task.inDim * task.outDim)
  let colOffset = 0
  for (const s of task.sources) {
    const rows = s.shape[0]
    transposeInto(decode(s), rows, task.inDim, out, task.outDim, colOffset)
    colOffset += rows
  }
  return encodeFloat32(storage(task.dtype), out)
}

/** A same-dtype copy, streamed; false (nothing trustworthy written) when a chunk holds a NaN. */
const copyRaw = (task: ConvertTask, read: Read, out: number): boolean => {
  const s = task.sources[0]
  const buf = new Uint8Array(Math.min(COPY_CHUNK, s.byteLength))
  for (let done = 0; done < s.byteLength; done += buf.byteLength) {
    const chunk = buf.subarray(0, Math.min(buf.byteLength, s.byteLength - done))
    read(s, chunk, done)
    if (hasNaN(floatOf(s), chunk)) return false
    writeAt(out, chunk, task.offset + done)
  }
  return true
}

/**
 * A linear whose sources share one dtype, transposed as raw words of that dtype, then cast element by element to
 * the target dtype where it differs (a cast commutes with a transpose); undefined when a source holds a NaN.
 */
const linearRaw = (task: ConvertTask, read: Read, dtype: StorageDType): Uint8Array | undefined => {
  const from = floatOf(task.sources[0])
  const wide = from === "F32"
  const out = new Uint8Array(task.inDim * task.outDim * (wide ? 4 : 2))
  let colOffset = 0
  for (const s of task.sources) {
    const rows = s.shape[0]
    const bytes = new Uint8Array(s.byteLength)
    read(s, bytes)
    if (hasNaN(floatOf(s), bytes)) return undefined
    if (wide) transpose32Into(new Uint32Array(bytes.buffer), rows, task.inDim, new Uint32Array(out.buffer), task.outDim, colOffset)
    else transpose16Into(new Uint16Array(bytes.buffer), rows, task.inDim, new Uint16Array(out.buffer), task.outDim, colOffset)
    colOffset += rows
  }
  return from === dtype ? out : encodeFloat32(dtype, toFloat32(from, out))
}

/** Reads the sources as float32 rows `[outDim, inDim]`, quantizes, writes each part at its offset. */
const writeInt4 = (task: ConvertTask, read: Read, out: number): number => {
  const q = task.int4
  if (q === undefined) throw new Error(`int4 task for ${task.dataPath} has no block layout`)
  const rows = new Float32Array(task.outDim * task.inDim)
  let at = 0
  for (const s of task.sources) {
    const bytes = new Uint8Array(s.byteLength)
    read(s, bytes)
    const values = toFloat32(floatOf(s), bytes)
    rows.set(values, at)
    at += values.length
  }
  const parts = int4Bytes(rows, { n: task.outDim, k: task.inDim, blockSize: q.blockSize, symmetric: q.symmetric }, task.dtype, q.importance)
  if (parts.length !== q.partOffsets.length) throw new Error(`int4 task for ${task.dataPath}: ${parts.length} parts, ${q.partOffsets.length} offsets`)
  let total = 0
  for (const [j, bytes] of parts.entries()) {
    writeAt(out, bytes, q.partOffsets[j])
    total += bytes.byteLength
  }
  return total
}

/** Reads each module's packed tensors as they are, repacks them (`CheckpointQuant.ts`), writes each part at its offset. */
const writePrequantized = (task: ConvertTask, read: Read, out: number): number => {
  const p = task.prequantized
  if (p === undefined) throw new Error(`prequantized task for ${task.dataPath} has no modules`)
  const suffixes = quantizedSuffixes(p.quant)
  const linears: Array<QuantizedLinear> = p.modules.map((module, m) => {
    const raw = suffixes.map((_, j) => {
      const s = task.sources[m * suffixes.length + j]
      const bytes = new Uint8Array(s.byteLength)
      read(s, bytes)
      return { dtype: s.dtype, shape: s.shape, bytes }
    })
    return { module, out: raw[2].shape[1] ?? 0, inDim: task.inDim, qweight: raw[0], qzeros: raw[1], scales: raw[2], gIdx: raw[3] }
  })
  let parts: Array<Uint8Array>
  try {
    parts = repackedBytes(p.quant, linears, task.dtype)
  } catch (e) {
    if (e instanceof RepackError) throw new SourceError(task.sources[0].file, `cannot load this ${p.quant.method.toUpperCase()} checkpoint: ${e.message}`)
    throw e
  }
  let total = 0
  for (const [j, bytes] of parts.entries()) {
    writeAt(out, bytes, p.partOffsets[j])
    total += bytes.byteLength
  }
  return total
}

export const runTask = (task: ConvertTask): ConvertResult => {
  try {
    return withFiles(task, (read, out) => {
      if (task.kind === "int4") return { ok: true, bytes: writeInt4(task, read, out), fast: false }
      if (task.kind === "prequantized") return { ok: true, bytes: writePrequantized(task, read, out), fast: false }
      const dtype = storage(task.dtype)
      const same = task.sources.every((s) => s.dtype === dtype)
      if (same && task.kind === "copy" && copyRaw(task, read, out)) return { ok: true, bytes: task.sources[0].byteLength, fast: true }
      if (task.kind === "linear" && task.sources.every((s) => s.dtype === task.sources[0].dtype)) {
        const bytes = linearRaw(task, read, dtype)
        if (bytes !== undefined) {
          writeAt(out, bytes, task.offset)
          return { ok: true, bytes: bytes.byteLength, fast: true }
        }
      }
      const bytes = viaFloat32(task, read)
      writeAt(out, bytes, task.offset)
      return { ok: true, bytes: bytes.byteLength, fast: false }
    })
  } catch (cause) {
    if (cause instanceof SourceError) return { ok: false, kind: "checkpoint", path: cause.file, message: cause.message }
    const message = cause instanceof Error ? cause.message : String(cause)
    return { ok: false, kind: "conversion", message: `cannot write ${task.dataPath}: ${message}` }
  }
}

export default runTask
