/**
 * Safetensors checkpoints: a single `model.safetensors`, a sharded set described by `model.safetensors.index.json`,
 * or one other `*.safetensors` file. Opening reads and validates only the headers; tensor bytes are read lazily, one
 * tensor at a time, at their file offsets, so a 16 GB checkpoint costs no more memory than its largest tensor.
 * Also writes safetensors files (F32, F16 or BF16 from float32 data) for generated models and tests.
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { CheckpointError } from "../core/Errors.ts"
import { encodeFloat32, toFloat32 } from "./FloatCodec.ts"
import type { StorageDType, TensorDType, TensorInfo, TensorLocation, TensorSource } from "./TensorSource.ts"

export { encodeFloat32, toFloat32 } from "./FloatCodec.ts"

const DTYPE_BYTES: Readonly<Record<TensorDType, number>> = { F32: 4, F16: 2, BF16: 2, I32: 4 }
const MAX_HEADER_BYTES = 100 * 1024 * 1024
// fs reads are capped at 2 GiB per call; stay well below it.
const READ_CHUNK_BYTES = 1 << 30

export interface SafetensorsEntry {
  readonly dtype: TensorDType
  readonly shape: ReadonlyArray<number>
  /** Byte range relative to the start of the tensor data (after the 8-byte length and the header). */
  readonly begin: number
  readonly end: number
}

export interface SafetensorsHeader {
  readonly file: string
  /** Absolute byte offset of the tensor data in the file. */
  readonly dataStart: number
  readonly fileSize: number
  readonly tensors: ReadonlyMap<string, SafetensorsEntry>
}

export interface SafetensorsTensor {
  readonly name: string
  readonly dtype: StorageDType
  readonly shape: ReadonlyArray<number>
  readonly data: Float32Array
}

const fail = (file: string, message: string): CheckpointError => new CheckpointError({ path: file, message })

const toCheckpointError = (file: string) => (cause: unknown): CheckpointError =>
  cause instanceof CheckpointError
    ? cause
    : fail(file, `cannot read ${file}: ${cause instanceof Error ? cause.message : String(cause)}`)

const isErrno = (cause: unknown, code: string): boolean =>
  typeof cause === "object" && cause !== null && (cause as { code?: unknown }).code === code

const formatShape = (shape: ReadonlyArray<number>): string => `[${shape.join(",")}]`

const elementCount = (shape: ReadonlyArray<number>): number => shape.reduce((a, b) => a * b, 1)

const isNonNegInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0

/** Reads exactly `length` bytes at `position` into `target` (fs reads may return short). */
const readFully = async (
  handle: fs.promises.FileHandle,
  target: Uint8Array,
  position: number,
  file: string
): Promise<void> => {
  let done = 0
  while (done < target.byteLength) {
    const want = Math.min(READ_CHUNK_BYTES, target.byteLength - done)
    const { bytesRead } = await handle.read(target, done, want, position + done)
    if (bytesRead === 0) {
      throw fail(
        file,
        `${path.basename(file)} is truncated: expected ${target.byteLength} bytes at offset ${position}, file ended after ${done}`
      )
    }
    done += bytesRead
  }
}

const parseEntry = (file: string, name: string, raw: unknown): SafetensorsEntry => {
  const base = path.basename(file)
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw fail(file, `${base}: header entry for tensor '${name}' is not an object`)
  }
  const { dtype, shape, data_offsets: offsets } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown }
  // I32: the packed 4-bit words (qweight, qzeros, g_idx) of AWQ and GPTQ checkpoints.
  if (dtype !== "F32" && dtype !== "F16" && dtype !== "BF16" && dtype !== "I32") {
    throw fail(file, `tensor '${name}' in ${base} has dtype ${String(dtype)}, expected one of F32, F16, BF16, I32`)
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
    throw fail(file, `tensor '${name}' in ${base} has an invalid shape ${JSON.stringify(shape)}`)
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt) || offsets[0] > offsets[1]) {
    throw fail(file, `tensor '${name}' in ${base} has invalid data_offsets ${JSON.stringify(offsets)}`)
  }
  const [begin, end] = offsets as [number, number]
  const expected = elementCount(shape) * DTYPE_BYTES[dtype]
  if (end - begin !== expected) {
    throw fail(
      file,
      `tensor '${name}' in ${base} has data_offsets [${begin},${end}] (${end - begin} bytes), expected ${expected} bytes for ${dtype} ${formatShape(shape)}`
    )
  }
  return { dtype, shape, begin, end }
}

const readHeaderAsync = async (file: string): Promise<SafetensorsHeader> => {
  const base = path.basename(file)
  let handle: fs.promises.FileHandle
  try {
    handle = await fs.promises.open(file, "r")
  } catch (cause) {
    if (isErrno(cause, "ENOENT")) throw fail(file, `checkpoint file not found: ${file}`)
    throw cause
  }
  try {
    const fileSize = (await handle.stat()).size
    if (fileSize < 8) throw fail(file, `${base} is not a safetensors file: ${fileSize} bytes, expected at least 8`)
    const lengthBytes = new Uint8Array(8)
    await readFully(handle, lengthBytes, 0, file)
    const headerLength = new DataView(lengthBytes.buffer).getBigUint64(0, true)
    if (headerLength > BigInt(MAX_HEADER_BYTES) || Number(headerLength) + 8 > fileSize) {
      throw fail(
        file,
        `${base} has a corrupt header length ${headerLength} (limit ${MAX_HEADER_BYTES}, file has ${fileSize} bytes)`
      )
    }
    const headerBytes = new Uint8Array(Number(headerLength))
    await readFully(handle, headerBytes, 8, file)
    let json: unknown
    try {
      json = JSON.parse(new TextDecoder().decode(headerBytes))
    } catch (cause) {
      throw fail(file, `${base} has a corrupt header: invalid JSON (${cause instanceof Error ? cause.message : String(cause)})`)
    }
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      throw fail(file, `${base} has a corrupt header: expected a JSON object`)
    }
    const dataStart = 8 + Number(headerLength)
    const dataBytes = fileSize - dataStart
    const tensors = new Map<string, SafetensorsEntry>()
    let maxEnd = 0
    for (const [name, raw] of Object.entries(json)) {
      if (name === "__metadata__") continue
      const entry = parseEntry(file, name, raw)
      maxEnd = Math.max(maxEnd, entry.end)
      tensors.set(name, entry)
    }
    if (maxEnd > dataBytes) {
      throw fail(file, `${base} is truncated: header says ${maxEnd} bytes of tensor data, file has ${dataBytes}`)
    }
    return { file, dataStart, fileSize, tensors }
  } finally {
    await handle.close()
  }
}

/** Reads and validates the header of one safetensors file (no tensor data is read). */
export const readSafetensorsHeader = (file: string): Effect.Effect<SafetensorsHeader, CheckpointError> =>
  Effect.tryPromise({ try: () => readHeaderAsync(file), catch: toCheckpointError(file) })

const readTensorAsync = async (file: string, dataStart: number, entry: SafetensorsEntry & { readonly dtype: StorageDType }): Promise<Float32Array> => {
  const handle = await fs.promises.open(file, "r")
  try {
    const bytes = new Uint8Array(entry.end - entry.begin)
    await readFully(handle, bytes, dataStart + entry.begin, file)
    return toFloat32(entry.dtype, bytes)
  } finally {
    await handle.close()
  }
}

interface Located {
  readonly entry: SafetensorsEntry
  readonly header: SafetensorsHeader
}

const INDEX_FILE = "model.safetensors.index.json"
const SINGLE_FILE = "model.safetensors"

const readIndexAsync = async (dir: string): Promise<ReadonlyMap<string, string>> => {
  const file = path.join(dir, INDEX_FILE)
  let json: unknown
  try {
    json = JSON.parse(await fs.promises.readFile(file, "utf8"))
  } catch (cause) {
    throw fail(file, `${INDEX_FILE} in ${dir} is not valid JSON: ${cause instanceof Error ? cause.message : String(cause)}`)
  }
  const weightMap = typeof json === "object" && json !== null ? (json as { weight_map?: unknown }).weight_map : undefined
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw fail(file, `${INDEX_FILE} in ${dir} has no weight_map object`)
  }
  const map = new Map<string, string>()
  for (const [name, shard] of Object.entries(weightMap)) {
    // Shard names are plain file names next to the index; refuse anything that walks out of the folder.
    if (typeof shard !== "string" || shard !== path.basename(shard) || !shard.endsWith(".safetensors")) {
      throw fail(file, `${INDEX_FILE}: weight_map entry for '${name}' is ${JSON.stringify(shard)}, expected a .safetensors file name`)
    }
    map.set(name, shard)
  }
  return map
}

const openAsync = async (dir: string): Promise<TensorSource> => {
  let entries: Array<string>
  try {
    if (!(await fs.promises.stat(dir)).isDirectory()) throw new Error("not a directory")
    entries = await fs.promises.readdir(dir)
  } catch {
    throw fail(dir, `model folder not found: ${dir}`)
  }
  const located = new Map<string, Located>()
  let fileNames: Array<string>
  if (entries.includes(INDEX_FILE)) {
    const weightMap = await readIndexAsync(dir)
    fileNames = [...new Set(weightMap.values())].sort()
    const headers = new Map<string, SafetensorsHeader>()
    for (const name of fileNames) headers.set(name, await readHeaderAsync(path.join(dir, name)))
    for (const [tensor, shard] of weightMap) {
      const header = headers.get(shard)!
      const entry = header.tensors.get(tensor)
      if (entry === undefined) {
        throw fail(header.file, `tensor '${tensor}' is listed in ${INDEX_FILE} under ${shard} but ${shard} does not contain it`)
      }
      located.set(tensor, { entry, header })
    }
  } else {
    if (entries.includes(SINGLE_FILE)) {
      fileNames = [SINGLE_FILE]
    } else {
      fileNames = entries.filter((e) => e.endsWith(".safetensors")).sort()
      if (fileNames.length === 0) {
        throw fail(dir, `no ${SINGLE_FILE}, ${INDEX_FILE} or other .safetensors file in ${dir}`)
      }
      if (fileNames.length > 1) {
        throw fail(dir, `${dir} holds ${fileNames.length} .safetensors files (${fileNames.join(", ")}) but no ${INDEX_FILE}`)
      }
    }
    const header = await readHeaderAsync(path.join(dir, fileNames[0]))
    for (const [tensor, entry] of header.tensors) located.set(tensor, { entry, header })
  }

  const files = fileNames.map((f) => path.join(dir, f))
  const names = [...located.keys()]
  const infos = new Map<string, TensorInfo>()
  for (const [name, { entry, header }] of located) {
    infos.set(name, { name, dtype: entry.dtype, shape: entry.shape, file: header.file })
  }

  const readFloat32 = (name: string, expectedShape?: ReadonlyArray<number>): Effect.Effect<Float32Array, CheckpointError> => {
    const found = located.get(name)
    if (found === undefined) {
      return Effect.fail(fail(dir, `tensor '${name}' not found in ${dir} (files: ${fileNames.join(", ")})`))
    }
    const { entry, header } = found
    const dtype = entry.dtype
    if (dtype === "I32") {
      return Effect.fail(fail(header.file, `tensor '${name}' in ${path.basename(header.file)} is I32, not a float tensor`))
    }
    if (
      expectedShape !== undefined &&
      (expectedShape.length !== entry.shape.length || expectedShape.some((d, i) => d !== entry.shape[i]))
    ) {
      return Effect.fail(
        fail(
          header.file,
          `tensor '${name}' in ${path.basename(header.file)} has shape ${formatShape(entry.shape)}, expected ${formatShape(expectedShape)}`
        )
      )
    }
    return Effect.tryPromise({
      try: () => readTensorAsync(header.file, header.dataStart, { ...entry, dtype }),
      catch: toCheckpointError(header.file)
    })
  }

  const locate = (name: string): TensorLocation | undefined => {
    const found = located.get(name)
    if (found === undefined) return undefined
    const { entry, header } = found
    return { file: header.file, position: header.dataStart + entry.begin, byteLength: entry.end - entry.begin, dtype: entry.dtype, shape: entry.shape }
  }

  return { names, info: (name) => infos.get(name), readFloat32, locate, files }
}

/**
 * Opens the checkpoint in `dir`, reading and validating only the safetensors headers.
 * Tensor data is read on demand by `readFloat32`; no file handle stays open between reads.
 */
export const openCheckpoint = (dir: string): Effect.Effect<TensorSource, CheckpointError> =>
  Effect.tryPromise({ try: () => openAsync(dir), catch: toCheckpointError(dir) })

const writeAsync = async (
  file: string,
  tensors: ReadonlyArray<SafetensorsTensor>,
  metadata: Readonly<Record<string, string>>
): Promise<void> => {
  const header: Record<string, unknown> = { __metadata__: metadata }
  const seen = new Set<string>()
  let offset = 0
  for (const t of tensors) {
    if (t.name === "__metadata__" || seen.has(t.name)) {
      throw fail(file, `cannot write ${path.basename(file)}: duplicate or reserved tensor name '${t.name}'`)
    }
    seen.add(t.name)
    if (!t.shape.every(isNonNegInt) || elementCount(t.shape) !== t.data.length) {
      throw fail(
        file,
        `cannot write tensor '${t.name}' to ${path.basename(file)}: shape ${formatShape(t.shape)} needs ${elementCount(t.shape)} values, data has ${t.data.length}`
      )
    }
    const bytes = t.data.length * DTYPE_BYTES[t.dtype]
    header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] }
    offset += bytes
  }
  // Pad the header with spaces so tensor data starts 8-byte aligned, as the reference writer does.
  let json = JSON.stringify(header)
  const jsonBytes = Buffer.byteLength(json, "utf8")
  json += " ".repeat((8 - ((8 + jsonBytes) % 8)) % 8)
  const headerBytes = Buffer.from(json, "utf8")
  const prefix = Buffer.alloc(8)
  prefix.writeBigUInt64LE(BigInt(headerBytes.length))
  const handle = await fs.promises.open(file, "w")
  try {
    await handle.write(prefix)
    await handle.write(headerBytes)
    for (const t of tensors) await handle.write(encodeFloat32(t.dtype, t.data))
  } finally {
    await handle.close()
  }
}

/**
 * Writes `tensors` to one safetensors file, converting each from float32 to its storage dtype
 * (F16 and BF16 round to nearest even). `metadata` defaults to `{ format: "pt" }`, which transformers expects.
 */
export const writeSafetensors = (
  file: string,
  tensors: ReadonlyArray<SafetensorsTensor>,
  metadata: Readonly<Record<string, string>> = { format: "pt" }
): Effect.Effect<void, CheckpointError> =>
  Effect.tryPromise({ try: () => writeAsync(file, tensors, metadata), catch: toCheckpointError(file) })
