// The int4 packer against a hand-written reading of ORT's MatMulNBits layout, and against ORT's own CPU kernel.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { afterAll, describe, expect, it } from "vitest"
import { blockErrors, CLIP_RATIOS, dequantizeInt4, type Int4Layout, int4Bytes, quantizeInt4, scaleRounder } from "../../../src/adapters/llama3/MatMulNBitsPacking.ts"
import { encodeModel, type ExternalInitializer } from "../../../src/onnx/OnnxWriter.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-nbits-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

/** Deterministic values in about [-1, 1) with a few larger outliers (a linear congruential sequence). */
const weights = (count: number, seed: number): Float32Array => {
  let x = seed
  const w = new Float32Array(count)
  for (let i = 0; i < count; i++) {
    x = (x * 1103515245 + 12345) % 2147483648
    w[i] = (x / 1073741824 - 1) * (i % 37 === 0 ? 3 : 1)
  }
  return w
}

/**
 * The layout read by hand from ORT's spec, independent of the packer's own dequantizer: element c of row r is in
 * byte `(r * n_blocks + c / block) * block / 2 + (c % block) / 2`, low nibble for even c % block; the block's zero
 * point is nibble `block % 2` of byte `r * ceil(n_blocks / 2) + block / 2` (8 when absent).
 */
const handDequantize = (b: Uint8Array, scales: Float32Array, zp: Uint8Array | undefined, l: Int4Layout): Float32Array => {
  const nb = Math.ceil(l.k / l.blockSize)
  const out = new Float32Array(l.n * l.k)
  for (let r = 0; r < l.n; r++) {
    for (let c = 0; c < l.k; c++) {
      const blk = Math.floor(c / l.blockSize)
      const inBlock = c % l.blockSize
      const byte = b[(r * nb + blk) * (l.blockSize / 2) + Math.floor(inBlock / 2)]
      const q = inBlock % 2 === 0 ? byte % 16 : Math.floor(byte / 16)
      const zbyte = zp === undefined ? 0x88 : zp[r * Math.ceil(nb / 2) + Math.floor(blk / 2)]
      const z = blk % 2 === 0 ? zbyte % 16 : Math.floor(zbyte / 16)
      out[r * l.k + c] = (q - z) * scales[r * nb + blk]
    }
  }
  return out
}

/** Round-to-nearest reference, element by element: the value each weight should come back as. */
const rtnReference = (w: Float32Array, l: Int4Layout): Float32Array => {
  const out = new Float32Array(w.length)
  for (let r = 0; r < l.n; r++) {
    for (let k0 = 0; k0 < l.k; k0 += l.blockSize) {
      const block = Array.from(w.subarray(r * l.k + k0, r * l.k + Math.min(l.k, k0 + l.blockSize)))
      let scale: number
      let zp: number
      if (l.symmetric) {
        const m = block.reduce((a, v) => (Math.abs(v) > Math.abs(a) ? v : a), 0)
        scale = Math.fround(m / -8)
        zp = 8
      } else {
        const lo = Math.min(0, ...block)
        const hi = Math.max(0, ...block)
        scale = Math.fround((hi - lo) / 15)
        zp = Math.min(15, Math.max(0, Math.round(-lo / scale)))
      }
      block.forEach((v, j) => {
        const q = Math.min(15, Math.max(0, Math.round(v / scale) + zp))
        out[r * l.k + k0 + j] = (q - zp) * scale
      })
    }
  }
  return out
}

const layouts: ReadonlyArray<Int4Layout> = [
  { n: 3, k: 64, blockSize: 32, symmetric: false },
  { n: 3, k: 64, blockSize: 32, symmetric: true },
  // three blocks: the zero points' last byte holds one block and padding; the last block is partial (16 of 32)
  { n: 5, k: 80, blockSize: 32, symmetric: false },
  { n: 5, k: 80, blockSize: 32, symmetric: true },
  { n: 4, k: 176, blockSize: 128, symmetric: false },
  { n: 4, k: 256, blockSize: 128, symmetric: true }
]

describe("quantizeInt4", () => {
  it("puts element 2j in the low nibble and 2j + 1 in the high nibble of byte j", () => {
    // codes j % 16 by construction: the block's largest magnitude is -4 (j = 0), so the symmetric scale is 0.5
    const w = Float32Array.from({ length: 32 }, (_, j) => 0.5 * ((j % 16) - 8))
    const p = quantizeInt4(w, { n: 1, k: 32, blockSize: 32, symmetric: true }, Math.fround)
    expect(p.scales[0]).toBe(0.5)
    expect(p.zeroPoints).toBeUndefined()
    expect([...p.b.subarray(0, 8)]).toEqual([0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe])
  })

  it("packs two zero points per byte, low nibble first, and pads a partial block with its zero point", () => {
    // row 0: block 0 all >= 0 (zero point 0), block 1 all <= 0 (zero point 15), block 2 (8 of 32 real) mixed
    const w = new Float32Array(72)
    for (let j = 0; j < 32; j++) w[j] = j / 31
    for (let j = 32; j < 64; j++) w[j] = -(j - 32) / 31
    for (let j = 64; j < 72; j++) w[j] = j % 2 === 0 ? 1 : -1
    const l: Int4Layout = { n: 1, k: 72, blockSize: 32, symmetric: false }
    const p = quantizeInt4(w, l, Math.fround)
    const zp2 = Math.round(1 / p.scales[2])
    expect([...p.zeroPoints!]).toEqual([0x00 | (15 << 4), zp2])
    // the padding of block 2 (elements 8..31) holds its zero point in both nibbles
    for (let j = 4; j < 16; j++) expect(p.b[2 * 16 + j]).toBe(zp2 | (zp2 << 4))
  })

  it.each(layouts.map((l) => [`${l.n}x${l.k} block ${l.blockSize} ${l.symmetric ? "symmetric" : "zero points"}`, l] as const))(
    // half a step, except where a symmetric block clips: its codes -8..7 reach only 7 steps on the side of its
    // largest magnitude's opposite sign (ORT's MLAS quantizer does the same), so there the bound is one step
    "%s: the bytes read by hand give the round-to-nearest reference, within half a step (symmetric: one) of the weight",
    (_, l) => {
      const w = weights(l.n * l.k, l.n * 31 + l.k)
      const p = quantizeInt4(w, l, Math.fround)
      const nb = Math.ceil(l.k / l.blockSize)
      expect(p.b.length).toBe(l.n * nb * (l.blockSize / 2))
      expect(p.scales.length).toBe(l.n * nb)
      expect(p.zeroPoints?.length).toBe(l.symmetric ? undefined : l.n * Math.ceil(nb / 2))
      const hand = handDequantize(p.b, p.scales, p.zeroPoints, l)
      expect([...hand]).toEqual([...rtnReference(w, l)])
      expect([...dequantizeInt4(p, l)]).toEqual([...hand])
      for (let i = 0; i < w.length; i++) {
        const step = Math.abs(p.scales[Math.floor(i / l.k) * nb + Math.floor((i % l.k) / l.blockSize)])
        expect(Math.abs(hand[i] - w[i])).toBeLessThanOrEqual((l.symmetric ? step : step / 2) + 1e-6)
      }
    }
  )

  it("rounds scales to float16 before choosing codes, so the stored scale and the codes agree", () => {
    const l: Int4Layout = { n: 2, k: 64, blockSize: 32, symmetric: false }
    const w = weights(128, 5)
    const p = quantizeInt4(w, l, Math.f16round)
    for (const s of p.scales) expect(Math.f16round(s)).toBe(s)
    const [b, scaleBytes, zp] = int4Bytes(w, l, "float16")
    expect([...b]).toEqual([...p.b])
    expect([...new Float16Array(scaleBytes.buffer, scaleBytes.byteOffset, scaleBytes.byteLength / 2)]).toEqual([...p.scales])
    expect([...zp]).toEqual([...p.zeroPoints!])
  })
})

/** One MatMulNBits node over packed weights, run by ORT's CPU kernel. */
const runMatMulNBits = async (a: Float32Array, m: number, w: Float32Array, l: Int4Layout, importance?: Float32Array) => {
  const dir = fs.mkdtempSync(path.join(root, "node-"))
  const parts = int4Bytes(w, l, "float32", importance)
  const names = ["B", "scales", "zero_points"]
  const nb = Math.ceil(l.k / l.blockSize)
  const dims = [[l.n, nb, l.blockSize / 2], [l.n * nb], [parts[2]?.length ?? 0]]
  let offset = 0
  const external: Array<ExternalInitializer> = []
  const data = new Uint8Array(parts.reduce((n, p) => n + p.length + 64, 0))
  parts.forEach((bytes, j) => {
    data.set(bytes, offset)
    external.push({ name: names[j], type: j === 1 ? "float32" : "uint8", dims: dims[j], location: "w.data", offset, length: bytes.length })
    offset += Math.ceil(bytes.length / 64) * 64
  })
  fs.writeFileSync(path.join(dir, "w.data"), data)
  const model = encodeModel({
    name: "nbits",
    nodes: [{
      op: "MatMulNBits",
      domain: "com.microsoft",
      inputs: ["A", ...names.slice(0, parts.length)],
      outputs: ["Y"],
      attributes: { K: l.k, N: l.n, bits: 4, block_size: l.blockSize, accuracy_level: 0 }
    }],
    inputs: [{ name: "A", type: "float32", dims: [m, l.k] }],
    outputs: [{ name: "Y", type: "float32", dims: [m, l.n] }],
    external,
    inline: [],
    opsets: { "": 17, "com.microsoft": 1 }
  })
  fs.writeFileSync(path.join(dir, "m.onnx"), model)
  const session = await ort.InferenceSession.create(path.join(dir, "m.onnx"))
  try {
    const out = await session.run({ A: new ort.Tensor("float32", a, [m, l.k]) })
    return out.Y.data as Float32Array
  } finally {
    await session.release()
  }
}

describe("ONNX Runtime's MatMulNBits (CPU) reads the packed weights as the packer means them", () => {
  it.each(layouts.flatMap((l) => [false, true].map((search) => [`${l.n}x${l.k} block ${l.blockSize} ${l.symmetric ? "symmetric" : "zero points"}${search ? ", clip search" : ""}`, l, search] as const)))(
    "%s: A x dequantized(W)^T within float32 rounding",
    async (_, l, search) => {
      const m = 3
      const w = weights(l.n * l.k, 7 + l.k)
      const a = weights(m * l.k, 11)
      const importance = search ? channelImportance(l.k, 5) : undefined
      const y = await runMatMulNBits(a, m, w, l, importance)
      const wq = handDequantize(...((p) => [p.b, p.scales, p.zeroPoints, l] as const)(quantizeInt4(w, l, Math.fround, importance)))
      let scale = 0
      let diff = 0
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < l.n; j++) {
          let sum = 0
          for (let c = 0; c < l.k; c++) sum += a[i * l.k + c] * wq[j * l.k + c]
          scale = Math.max(scale, Math.abs(sum))
          diff = Math.max(diff, Math.abs(sum - y[i * l.n + j]))
        }
      }
      expect(diff / scale).toBeLessThan(1e-5)
    }
  )
})

/** Per-channel mean x² as a calibration run gives them: positive, spread over two orders of magnitude, a few large. */
const channelImportance = (k: number, seed: number): Float32Array => Float32Array.from(weights(k, seed), (v, c) => (c % 11 === 0 ? 30 : 0.3) * (v * v + 0.01))

describe("the activation-weighted clip search", () => {
  const searched = layouts.flatMap((l) => (["float32", "float16"] as const).map((dtype) => [l, dtype] as const))
  it.each(searched.map(([l, dtype]) => [`${l.n}x${l.k} block ${l.blockSize} ${l.symmetric ? "sym" : "zp"}, ${dtype} scales`, l, dtype] as const))(
    "%s: no block's weighted error is above round to nearest's, and the total is lower",
    (_, l, dtype) => {
      const w = weights(l.n * l.k, 3 + l.n)
      const importance = channelImportance(l.k, 17)
      const round = scaleRounder(dtype)
      const rtn = blockErrors(w, quantizeInt4(w, l, round), l, importance)
      const search = blockErrors(w, quantizeInt4(w, l, round, importance), l, importance)
      let sumRtn = 0
      let sumSearch = 0
      for (let i = 0; i < rtn.length; i++) {
        expect(search[i]).toBeLessThanOrEqual(rtn[i])
        sumRtn += rtn[i]
        sumSearch += search[i]
      }
      // the weights have outliers (every 37th value x3): clipping them pays off in most rows
      expect(sumSearch).toBeLessThan(0.9 * sumRtn)
    }
  )

  it("picks, per block, the best of the clip ratios (checked by trying each ratio by hand)", () => {
    const l: Int4Layout = { n: 6, k: 64, blockSize: 32, symmetric: false }
    const w = weights(l.n * l.k, 23)
    const importance = channelImportance(l.k, 29)
    const chosen = blockErrors(w, quantizeInt4(w, l, Math.fround, importance), l, importance)
    // one block quantized alone at a fixed ratio: its range [min(0, lo), max(0, hi)] times the ratio, over 15 steps
    for (let r = 0; r < l.n; r++) {
      for (let blk = 0; blk < 2; blk++) {
        const v = w.subarray(r * l.k + blk * 32, r * l.k + blk * 32 + 32)
        const imp = importance.subarray(blk * 32, blk * 32 + 32)
        const lo = Math.min(0, ...v)
        const hi = Math.max(0, ...v)
        const best = Math.min(...CLIP_RATIOS.map((ratio) => {
          const scale = Math.fround((hi * ratio - lo * ratio) / 15)
          const zp = Math.min(15, Math.max(0, Math.round(-(lo * ratio) / scale)))
          return v.reduce((e, x, c) => {
            const q = Math.min(15, Math.max(0, Math.round(x / scale) + zp))
            return e + imp[c] * (x - (q - zp) * scale) ** 2
          }, 0)
        }))
        expect(chosen[r * 2 + blk]).toBeCloseTo(best, 10)
      }
    }
  })

  it("is deterministic, and zero importance leaves round to nearest", () => {
    const l: Int4Layout = { n: 8, k: 128, blockSize: 32, symmetric: false }
    const w = weights(l.n * l.k, 31)
    const importance = channelImportance(l.k, 37)
    const a = int4Bytes(w, l, "float16", importance)
    const b = int4Bytes(w, l, "float16", Float32Array.from(importance))
    expect(a.map((p) => Buffer.from(p).toString("hex"))).toEqual(b.map((p) => Buffer.from(p).toString("hex")))
    expect(a.map((p) => Buffer.from(p).toString("hex"))).not.toEqual(int4Bytes(w, l, "float16").map((p) => Buffer.from(p).toString("hex")))
    const zero = int4Bytes(w, l, "float16", new Float32Array(l.k))
    expect(zero.map((p) => Buffer.from(p).toString("hex"))).toEqual(int4Bytes(w, l, "float16").map((p) => Buffer.from(p).toString("hex")))
  })

  it("refuses an importance vector of the wrong length", () => {
    expect(() => quantizeInt4(new Float32Array(64), { n: 1, k: 64, blockSize: 32, symmetric: true }, Math.fround, new Float32Array(32)))
      .toThrow("importance has 32 values, expected 64 (one per input channel)")
  })
})
