// Synthetic AWQ (GEMM) and GPTQ checkpoints made from the float fixtures, packed the way the reference code packs them
// (AutoAWQ and AutoGPTQ, cited per function), independently of src/adapters/llama3/CheckpointQuant.ts; and the float
// checkpoint of the weights they stand for, dequantized the way the reference code dequantizes them.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { openCheckpoint, writeSafetensors } from "../../src/checkpoint/Safetensors.ts"
import { fixtureDir } from "./fixtures.ts"

export type QuantScheme =
  | { readonly method: "awq" }
  | { readonly method: "gptq"; readonly format: "gptq" | "gptq_v2"; readonly sym: boolean }

const LINEAR = /^(model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj))\.weight$/

/** AutoAWQ awq/utils/packing_utils.py L4 (and gemm.py L222 `order_map`). */
const AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]

export interface Quantized {
  /** codes `[out, in]` 0..15 */
  readonly q: Int32Array
  /** zero points `[groups, out]` (the real ones, before GPTQ v1's minus 1) */
  readonly z: Int32Array
  /** float16-rounded scales `[groups, out]` */
  readonly s: Float32Array
}

/**
 * Round-to-nearest 4-bit quantization of `w` `[out, in]` per group of `group` inputs, with zero points:
 * - AWQ: AutoAWQ awq/quantize/quantizer.py `pseudo_quantize_tensor` (zero_point branch): `scales = (max - min).clamp(1e-5) / 15`,
 *   `zeros = clamp(-round(min / scales), 0, 15)`, `q = clamp(round(w / scales) + zeros, 0, 15)`.
 * - GPTQ: AutoGPTQ auto_gptq/quantization/quantizer.py `find_params`: range widened to include 0; sym: `xmax = max(|xmin|, xmax)`,
 *   `xmin = -xmax`, zero `(15 + 1) / 2 = 8`; asym: zero `round(-xmin / scale)`; `quantize`: `clamp(round(x / scale) + zero, 0, 15)`.
 * Scales are rounded to float16 (the checkpoints store float16) before the codes are computed.
 */
export const quantizeGroups = (w: Float32Array, out: number, inDim: number, group: number, scheme: QuantScheme): Quantized => {
  const groups = inDim / group
  const q = new Int32Array(out * inDim)
  const z = new Int32Array(groups * out)
  const s = new Float32Array(groups * out)
  for (let n = 0; n < out; n++) {
    for (let g = 0; g < groups; g++) {
      let lo = Infinity
      let hi = -Infinity
      for (let k = g * group; k < (g + 1) * group; k++) {
        lo = Math.min(lo, w[n * inDim + k])
        hi = Math.max(hi, w[n * inDim + k])
      }
      let scale: number
      let zero: number
      if (scheme.method === "awq") {
        scale = Math.f16round(Math.max(hi - lo, 1e-5) / 15)
        zero = Math.min(15, Math.max(0, -Math.round(lo / scale)))
      } else {
        let xmin = Math.min(lo, 0)
        let xmax = Math.max(hi, 0)
        if (scheme.sym) {
          xmax = Math.max(Math.abs(xmin), xmax)
          if (xmin < 0) xmin = -xmax
        }
        if (xmin === 0 && xmax === 0) {
          xmin = -1
          xmax = 1
        }
        scale = Math.f16round((xmax - xmin) / 15)
        zero = scheme.sym ? 8 : Math.round(-xmin / scale)
      }
      s[g * out + n] = scale
      z[g * out + n] = zero
      for (let k = g * group; k < (g + 1) * group; k++) {
        q[n * inDim + k] = Math.min(15, Math.max(0, Math.round(w[n * inDim + k] / scale) + zero))
      }
    }
  }
  return { q, z, s }
}

/**
 * AWQ GEMM packing, AutoAWQ awq/modules/linear/gemm.py `WQLinear_GEMM.from_linear` L204-248: `intweight` is `[in, out]`;
 * `qweight[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)`; `qzeros[:, col]` likewise from `zeros [groups, out]`.
 */
export const packAwq = (x: Quantized, out: number, inDim: number) => {
  const groups = x.z.length / out
  const qweight = new Int32Array(inDim * (out / 8))
  const qzeros = new Int32Array(groups * (out / 8))
  for (let col = 0; col < out / 8; col++) {
    for (let i = 0; i < 8; i++) {
      const c = col * 8 + AWQ_ORDER[i]
      for (let k = 0; k < inDim; k++) qweight[k * (out / 8) + col] |= x.q[c * inDim + k] << (i * 4)
      for (let g = 0; g < groups; g++) qzeros[g * (out / 8) + col] |= x.z[g * out + c] << (i * 4)
    }
  }
  return { qweight, qzeros }
}

/**
 * AWQ dequantization, AutoAWQ awq/utils/packing_utils.py `dequantize_gemm` L87-102 (`unpack_awq`: shifts 0, 4, ... 28
 * over each word; `reverse_awq_order`: columns through AWQ_REVERSE_ORDER; `& 15`; `(iweight - izeros) * scales`,
 * group rows repeated). Returns the HF `[out, in]` weight.
 */
export const dequantizeAwq = (qweight: Int32Array, qzeros: Int32Array, scales: Float32Array, out: number, inDim: number, group: number): Float32Array => {
  const words = out / 8
  const unpack = (packed: Int32Array, rows: number) => {
    // unpack_awq: iweights[r, 8 * col + i] = packed[r, col] >> (4 i), then reverse_awq_order: column j takes
    // the unpacked column `reverse[j]` of its 8 (AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7])
    const reverse = [0, 4, 1, 5, 2, 6, 3, 7]
    const u = new Int32Array(rows * out)
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < out; c++) u[r * out + c] = (packed[r * words + (c >> 3)] >> (4 * reverse[c & 7])) & 15
    }
    return u
  }
  const iw = unpack(qweight, inDim)
  const iz = unpack(qzeros, inDim / group)
  const w = new Float32Array(out * inDim)
  for (let k = 0; k < inDim; k++) {
    const g = Math.floor(k / group)
    for (let n = 0; n < out; n++) w[n * inDim + k] = Math.fround((iw[k * out + n] - iz[g * out + n]) * scales[g * out + n])
  }
  return w
}

/**
 * GPTQ packing, AutoGPTQ auto_gptq/nn_modules/qlinear/qlinear_cuda.py `QuantLinear.pack` L124-203: `intweight` `[in, out]`,
 * `qweight[row] |= intweight[j] << (4 * (j - i))` over the 8 input rows of each word row; `zeros -= 1` (v1 only: GPTQModel's
 * gptq_v2 keeps them), `astype(np.uint32)` (a -1 becomes 0xffffffff, so its shifted copy sets every higher nibble too),
 * `qzeros[:, col] |= zeros[:, j] << (4 * (j - i))`.
 */
export const packGptq = (x: Quantized, out: number, inDim: number, format: "gptq" | "gptq_v2") => {
  const groups = x.z.length / out
  const qweight = new Int32Array((inDim / 8) * out)
  for (let row = 0; row < inDim / 8; row++) {
    for (let j = 0; j < 8; j++) {
      const k = row * 8 + j
      for (let n = 0; n < out; n++) qweight[row * out + n] |= x.q[n * inDim + k] << (4 * j)
    }
  }
  const qzeros = new Int32Array(groups * (out / 8))
  for (let g = 0; g < groups; g++) {
    for (let col = 0; col < out / 8; col++) {
      for (let j = 0; j < 8; j++) {
        const stored = (x.z[g * out + col * 8 + j] - (format === "gptq" ? 1 : 0)) >>> 0 // np.uint32
        qzeros[g * (out / 8) + col] |= stored << (4 * j)
      }
    }
  }
  return { qweight, qzeros }
}

/**
 * GPTQ dequantization, qlinear_cuda.py `forward` torch path L254-302: `zeros = (qzeros >> 4 j) & 15`, `+ 1` (v1),
 * `weight = (qweight >> 4 j) & 15`, `weights = scales[g_idx] * (weight - zeros[g_idx])`. Returns `[out, in]`.
 */
export const dequantizeGptq = (
  qweight: Int32Array, qzeros: Int32Array, scales: Float32Array, gIdx: Int32Array, out: number, inDim: number, format: "gptq" | "gptq_v2"
): Float32Array => {
  const w = new Float32Array(out * inDim)
  for (let k = 0; k < inDim; k++) {
    const g = gIdx[k]
    for (let n = 0; n < out; n++) {
      const zero = ((qzeros[g * (out / 8) + (n >> 3)] >> (4 * (n & 7))) & 15) + (format === "gptq" ? 1 : 0)
      const code = (qweight[(k >> 3) * out + n] >> (4 * (k & 7))) & 15
      w[n * inDim + k] = Math.fround(scales[g * out + n] * (code - zero))
    }
  }
  return w
}

interface RawTensor {
  readonly name: string
  readonly dtype: "F32" | "F16" | "I32"
  readonly shape: ReadonlyArray<number>
  readonly bytes: Uint8Array
}

/** A safetensors file of raw tensors (8-byte aligned data, `{ format: "pt" }` metadata, as the reference writer). */
export const writeRawSafetensors = (file: string, tensors: ReadonlyArray<RawTensor>): void => {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } }
  let offset = 0
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] }
    offset += t.bytes.byteLength
  }
  let json = JSON.stringify(header)
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8)
  const prefix = Buffer.alloc(8)
  prefix.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(json), ...tensors.map((t) => Buffer.from(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength))]))
}

const f32 = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
const i32 = (a: Int32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
const f16 = (a: Float32Array) => {
  const h = new Float16Array(a.length)
  h.set(a)
  return new Uint8Array(h.buffer)
}

export interface QuantizedCheckpointOptions {
  readonly groupSize: number
  /** Extra or replaced `quantization_config` keys (refusal cases). */
  readonly configExtra?: Record<string, unknown>
  /** Changes a linear's float weight before quantization (e.g. all positive: a GPTQ zero point of 0). */
  readonly editWeight?: (module: string, w: Float32Array, out: number, inDim: number) => void
  /** Changes the packed tensors of a module before they are written (e.g. a permuted g_idx, another group size). */
  readonly editPacked?: (module: string, tensors: Map<string, RawTensor>) => void
}

/**
 * An AWQ or GPTQ checkpoint made from fixture `name` (or the checkpoint folder at the absolute path `name`) under
 * `root` (`dir`), and the float32 checkpoint of the weights it stands for, dequantized by the reference formulas from
 * the packed tensors (`floatDir`). Tokenizer files, where the source has them, are copied into both.
 */
export const quantizedCheckpoint = async (root: string, source: string, scheme: QuantScheme, options: QuantizedCheckpointOptions) => {
  const from = path.isAbsolute(source) ? source : fixtureDir(source)
  const name = path.basename(from)
  const tag = scheme.method === "awq" ? "awq" : `${scheme.format}-${scheme.sym ? "sym" : "asym"}`
  const dir = fs.mkdtempSync(path.join(root, `${name}-${tag}-g${options.groupSize}-`))
  const floatDir = fs.mkdtempSync(path.join(root, `${name}-${tag}-g${options.groupSize}-float-`))
  const config = JSON.parse(fs.readFileSync(path.join(from, "config.json"), "utf8")) as Record<string, unknown>
  const quantization_config = scheme.method === "awq"
    ? { quant_method: "awq", bits: 4, group_size: options.groupSize, zero_point: true, version: "gemm", modules_to_not_convert: null }
    : { quant_method: "gptq", bits: 4, group_size: options.groupSize, desc_act: false, sym: scheme.sym, static_groups: false, checkpoint_format: scheme.format, true_sequential: true }
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...config, quantization_config: { ...quantization_config, ...options.configExtra } }, null, 2))
  fs.writeFileSync(path.join(floatDir, "config.json"), JSON.stringify(config, null, 2))
  for (const file of ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]) {
    if (!fs.existsSync(path.join(from, file))) continue
    for (const d of [dir, floatDir]) fs.copyFileSync(path.join(from, file), path.join(d, file))
  }

  const checkpoint = await Effect.runPromise(openCheckpoint(from))
  const packed: Array<RawTensor> = []
  const float: Array<{ name: string; dtype: "F32"; shape: ReadonlyArray<number>; data: Float32Array }> = []
  const group = options.groupSize
  for (const tensor of checkpoint.names) {
    const info = checkpoint.info(tensor)!
    const data = await Effect.runPromise(checkpoint.readFloat32(tensor))
    const m = LINEAR.exec(tensor)
    if (m === null) {
      packed.push({ name: tensor, dtype: "F32", shape: info.shape, bytes: f32(data) })
      float.push({ name: tensor, dtype: "F32", shape: info.shape, data })
      continue
    }
    const module = m[1]
    const [out, inDim] = info.shape as [number, number]
    options.editWeight?.(module, data, out, inDim)
    const x = quantizeGroups(data, out, inDim, group, scheme)
    const groups = inDim / group
    const tensors = new Map<string, RawTensor>()
    const put = (suffix: string, t: Omit<RawTensor, "name">) => tensors.set(suffix, { name: `${module}.${suffix}`, ...t })
    if (scheme.method === "awq") {
      const { qweight, qzeros } = packAwq(x, out, inDim)
      put("qweight", { dtype: "I32", shape: [inDim, out / 8], bytes: i32(qweight) })
      put("qzeros", { dtype: "I32", shape: [groups, out / 8], bytes: i32(qzeros) })
      put("scales", { dtype: "F16", shape: [groups, out], bytes: f16(x.s) })
    } else {
      const { qweight, qzeros } = packGptq(x, out, inDim, scheme.format)
      const gIdx = Int32Array.from({ length: inDim }, (_, k) => Math.floor(k / group))
      put("qweight", { dtype: "I32", shape: [inDim / 8, out], bytes: i32(qweight) })
      put("qzeros", { dtype: "I32", shape: [groups, out / 8], bytes: i32(qzeros) })
      put("scales", { dtype: "F16", shape: [groups, out], bytes: f16(x.s) })
      put("g_idx", { dtype: "I32", shape: [inDim], bytes: i32(gIdx) })
    }
    options.editPacked?.(module, tensors)
    packed.push(...tensors.values())
    // the float model: the reference dequantization of the packed tensors as written
    const ints = (suffix: string) => {
      const b = tensors.get(suffix)!.bytes.slice()
      return new Int32Array(b.buffer)
    }
    const scales = new Float32Array(new Float16Array(tensors.get("scales")!.bytes.slice().buffer))
    const w = scheme.method === "awq"
      ? dequantizeAwq(ints("qweight"), ints("qzeros"), scales, out, inDim, group)
      : dequantizeGptq(ints("qweight"), ints("qzeros"), scales, ints("g_idx"), out, inDim, scheme.format)
    float.push({ name: tensor, dtype: "F32", shape: info.shape, data: w })
  }
  writeRawSafetensors(path.join(dir, "model.safetensors"), packed)
  await Effect.runPromise(writeSafetensors(path.join(floatDir, "model.safetensors"), float))
  return { dir, floatDir }
}
