// chorus.Int4Linear's Marlin path (CHORUS_INT4_KERNEL=marlin: third_party/marlin with the weights rewritten into its
// layout in place at the first run) against ONNX Runtime's MatMulNBits and a float64 product of the same dequantized
// weights, op by op: row counts that take each of Marlin's tilings (up to 16 rows, 17-64, above 64 in parallel
// problems, with a partial last tile), two nodes sharing one weight (rewritten once), a second session over the same
// file after the first is released (its weights rewritten again), and a zero-point weight the path does not take
// (it keeps the default kernels); and Llama 3 8B's QKV shape at 64-512 rows, run again and again, against MatMulNBits
// element by element (Marlin's wrong elements came and went from run to run before the barrier at the end of its
// write_result, native/cuda/third_party/marlin/README.md). That case fails on an H200 today (2026-12-02: 128 rows,
// run 4, 0.44 against a bound of 0.029; another race remains): it is the check Marlin must pass before anything picks
// it. The fixtures' shapes are below Marlin's tiles (K a multiple of 128, N of 256), so this test builds its own
// graphs. CUDA only.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { dequantizeInt4, type Int4Layout, quantizeInt4, scaleRounder } from "../../src/adapters/llama3/MatMulNBitsPacking.ts"
import { encodeFloat32 } from "../../src/checkpoint/FloatCodec.ts"
import { cudaOpsLibrary, cudaOpsLibraryPath } from "../../src/core/native/CudaOps.ts"
import { NativeOrt, type NativeSession } from "../../src/core/native/NativeOrt.ts"
import { encodeModel, type ExternalInitializer, type NodeSpec } from "../../src/onnx/OnnxWriter.ts"
import { deviceUnderTest } from "../support/greedyRuns.ts"
import { asFloat, half, uniform } from "../support/halfData.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-marlin-device-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
const { device } = deviceUnderTest()

const K = 384, N = 768
const ROWS = [1, 5, 16, 17, 64, 65, 130, 300]


const w = uniform(N * K, Math.sqrt(3 / K), 7) // [N, K], MatMulNBits' row order
const sym: Int4Layout = { n: N, k: K, blockSize: 128, symmetric: true }
const zp: Int4Layout = { ...sym, symmetric: false }
const packedSym = quantizeInt4(w, sym, scaleRounder("float16"))
const packedZp = quantizeInt4(w, zp, scaleRounder("float16"))
const wSym = dequantizeInt4(packedSym, sym)
const wZp = dequantizeInt4(packedZp, zp)

// The weights in one external data file: b / scales (symmetric) and bz / sz / zz (zero points).
const dataName = "weights.data"
const external = new Map<string, ExternalInitializer>()
{
  const fd = fs.openSync(path.join(root, dataName), "w")
  let offset = 0
  const put = (name: string, type: "uint8" | "float16", dims: ReadonlyArray<number>, bytes: Uint8Array) => {
    fs.writeSync(fd, bytes, 0, bytes.length, offset)
    external.set(name, { name, type, dims, location: dataName, offset, length: bytes.length })
    offset += Math.ceil(bytes.length / 4096) * 4096
  }
  const nb = K / 128
  put("b", "uint8", [N, nb, 64], packedSym.b)
  put("scales", "float16", [N * nb], encodeFloat32("F16", packedSym.scales))
  put("bz", "uint8", [N, nb, 64], packedZp.b)
  put("sz", "float16", [N * nb], encodeFloat32("F16", packedZp.scales))
  put("zz", "uint8", [N * Math.ceil(nb / 2)], packedZp.zeroPoints!)
  fs.closeSync(fd)
}

const linear = (op: "MatMulNBits" | "Int4Linear", inputs: ReadonlyArray<string>, output: string): NodeSpec => ({
  op, domain: op === "MatMulNBits" ? "com.microsoft" : "chorus", name: output, inputs, outputs: [output],
  attributes: { K, N, bits: 4, block_size: 128, accuracy_level: 0 }
})
/** y1 and y2 from the symmetric weight (one initializer, two nodes), yz from the zero-point one. */
const model = (op: "MatMulNBits" | "Int4Linear"): string => {
  const file = path.join(root, `${op}.onnx`)
  fs.writeFileSync(file, encodeModel({
    name: op, opsets: { "": 17, "com.microsoft": 1, ...(op === "Int4Linear" ? { chorus: 1 } : {}) },
    nodes: [linear(op, ["x", "b", "scales"], "y1"), linear(op, ["x", "b", "scales"], "y2"), linear(op, ["x", "bz", "sz", "zz"], "yz")],
    external: [...external.values()], inline: [],
    inputs: [{ name: "x", type: "float16", dims: ["M", K] }],
    outputs: ["y1", "y2", "yz"].map((name) => ({ name, type: "float16" as const, dims: ["M", N] }))
  }))
  return file
}

/** A CUDA session over `file` with CHORUS_INT4_KERNEL=marlin, which the library reads when it makes its kernels. */
const marlinSession = (file: string, op: "MatMulNBits" | "Int4Linear"): NativeSession => {
  const saved = process.env.CHORUS_INT4_KERNEL
  process.env.CHORUS_INT4_KERNEL = "marlin"
  try {
    return NativeOrt.load().createSession(file, { provider: "cuda", ...(op === "Int4Linear" ? { customOpsLibrary: cudaOpsLibraryPath() } : {}) })
  } finally {
    if (saved === undefined) delete process.env.CHORUS_INT4_KERNEL
    else process.env.CHORUS_INT4_KERNEL = saved
  }
}
const openSession = (op: "MatMulNBits" | "Int4Linear"): NativeSession => marlinSession(model(op), op)
const run = (s: NativeSession, x: Uint16Array, M: number) => {
  const out = s.run({ x: { data: x, dims: [M, K] } }, { y1: "host", y2: "host", yz: "host" })
  return { y1: asFloat(out.y1!.data as Uint16Array), y2: asFloat(out.y2!.data as Uint16Array), yz: asFloat(out.yz!.data as Uint16Array) }
}
/** x [M, K] times wq [N, K] transposed, in float64. */
const reference = (x: Float32Array, wq: Float32Array, M: number): Float64Array => {
  const y = new Float64Array(M * N)
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let acc = 0
      for (let k = 0; k < K; k++) acc += x[m * K + k]! * wq[n * K + k]!
      y[m * N + n] = acc
    }
  }
  return y
}
const relErr = (y: ArrayLike<number>, ref: ArrayLike<number>): number => {
  let num = 0, den = 0
  for (let i = 0; i < ref.length; i++) {
    num += (y[i]! - ref[i]!) ** 2
    den += ref[i]! ** 2
  }
  return Math.sqrt(num / den)
}

// Llama 3 8B's QKV projection (K 4096, N 6144): one node a session, its own weight file.
const BIG_K = 4096, BIG_N = 6144
const bigModel = (op: "MatMulNBits" | "Int4Linear"): string => {
  const file = path.join(root, `${op}-big.onnx`)
  if (fs.existsSync(file)) return file
  const dataFile = "big.data"
  if (!fs.existsSync(path.join(root, dataFile))) {
    const l: Int4Layout = { n: BIG_N, k: BIG_K, blockSize: 128, symmetric: true }
    const packed = quantizeInt4(uniform(BIG_N * BIG_K, Math.sqrt(3 / BIG_K), 11), l, scaleRounder("float16"))
    const scales = encodeFloat32("F16", packed.scales)
    fs.writeFileSync(path.join(root, dataFile), Buffer.concat([packed.b, Buffer.alloc((4096 - (packed.b.length % 4096)) % 4096), scales]))
  }
  const codeBytes = BIG_N * BIG_K / 2
  fs.writeFileSync(file, encodeModel({
    name: `${op}-big`, opsets: { "": 17, "com.microsoft": 1, ...(op === "Int4Linear" ? { chorus: 1 } : {}) },
    nodes: [{
      op, domain: op === "MatMulNBits" ? "com.microsoft" : "chorus", name: "y", inputs: ["x", "b", "scales"], outputs: ["y"],
      attributes: { K: BIG_K, N: BIG_N, bits: 4, block_size: 128, accuracy_level: 0 }
    }],
    external: [
      { name: "b", type: "uint8", dims: [BIG_N, BIG_K / 128, 64], location: dataFile, offset: 0, length: codeBytes },
      { name: "scales", type: "float16", dims: [BIG_N * BIG_K / 128], location: dataFile, offset: Math.ceil(codeBytes / 4096) * 4096, length: BIG_N * BIG_K / 64 }
    ],
    inline: [],
    inputs: [{ name: "x", type: "float16", dims: ["M", BIG_K] }],
    outputs: [{ name: "y", type: "float16", dims: ["M", BIG_N] }]
  }))
  return file
}
const openBig = (op: "MatMulNBits" | "Int4Linear"): NativeSession => marlinSession(bigModel(op), op)

describe.runIf(device.kind === "cuda")("chorus.Int4Linear's Marlin path on CUDA", () => {
  it("the library is built (npm run build:cuda-ops)", () => {
    expect(cudaOpsLibrary(), cudaOpsLibraryPath()).toBeDefined()
  })

  it("equals MatMulNBits and the float64 product at every row count, twice over a released session", () => {
    const ort = openSession("MatMulNBits")
    const inputs = ROWS.map((M, i) => {
      const xBits = half(uniform(M * K, 1, 100 + i))
      return { M, xBits, x: asFloat(xBits) }
    })
    const expected = inputs.map(({ M, xBits, x }) => ({ ort: run(ort, xBits, M), sym: reference(x, wSym, M), zp: reference(x, wZp, M) }))
    ort.release()
    for (const pass of [1, 2]) {
      const chorus = openSession("Int4Linear")
      inputs.forEach(({ M, xBits }, i) => {
        const got = run(chorus, xBits, M), want = expected[i]!
        const where = `pass ${pass}, M=${M}`
        // float16 outputs of float32 sums over K = 384: MatMulNBits itself is within ~1e-3 of float64.
        expect(relErr(want.ort.y1, want.sym), `MatMulNBits, ${where}`).toBeLessThan(3e-3)
        expect(relErr(got.y1, want.sym), `Marlin, ${where}`).toBeLessThan(3e-3)
        expect(relErr(got.y1, want.ort.y1), `Marlin against MatMulNBits, ${where}`).toBeLessThan(3e-3)
        // The second node reads the same initializer, already in Marlin's layout: the same numbers.
        expect(Array.from(got.y2), where).toEqual(Array.from(got.y1))
        // Zero points: not Marlin's; the default kernels, on MatMulNBits' layout, unchanged by the rewrite beside it.
        expect(relErr(got.yz, want.zp), `zero points, ${where}`).toBeLessThan(3e-3)
      })
      chorus.release()
    }
  })

  it("stays equal to MatMulNBits element by element at 8B's QKV shape, run after run", () => {
    const ort = openBig("MatMulNBits"), chorus = openBig("Int4Linear")
    try {
      for (const M of [64, 128, 512]) {
        const xBits = half(uniform(M * BIG_K, 1, 1000 + M))
        const y = (s: NativeSession) => asFloat(s.run({ x: { data: xBits, dims: [M, BIG_K] } }, { y: "host" }).y!.data as Uint16Array)
        const want = y(ort)
        let scale = 0
        for (const v of want) scale = Math.max(scale, Math.abs(v))
        for (let run = 0; run < 8; run++) {
          const got = y(chorus)
          let worst = 0
          for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!))
          // float16 outputs of float32 sums over K = 4096 differ by a few units of the last place (about 2e-3 here);
          // the race gave single elements off by 0.04-0.13.
          expect(worst, `M=${M}, run ${run}: worst element against MatMulNBits (largest output ${scale.toFixed(2)})`).toBeLessThan(1e-2 * scale)
        }
      }
    } finally {
      ort.release()
      chorus.release()
    }
  })
})
