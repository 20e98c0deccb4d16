/**
 * Which weight layout ORT's CUDA EP multiplies fastest for decode-shaped products ([B, K] x weights), timed through
 * the native addon: MatMul with weights stored [K, N] (Chorus's graphs today) against Gemm with weights stored
 * [N, K] and transB=1 (PyTorch's nn.Linear layout). Run on a GPU host:  node native/probes/gemm-layout.ts
 */
import * as fs from "node:fs"
import { NativeOrt } from "../../src/core/native/NativeOrt.ts"
import { encodeModel } from "../../src/onnx/OnnxWriter.ts"

const K = 4096, N = 14336, LAYERS = 16
const addon = NativeOrt.load()
const make = (kind: "matmul" | "gemm") => {
  const file = `/tmp/layout-${kind}.onnx`
  const bytes = K * N * 2
  fs.writeFileSync(`${file}.data`, Buffer.alloc(bytes * 2))
  const nodes = []
  let x = "x"
  for (let i = 0; i < LAYERS; i++) {
    const up = `u${i}`, down = `d${i}`
    if (kind === "matmul") {
      nodes.push({ op: "MatMul", inputs: [x, "w_up"], outputs: [up] }, { op: "MatMul", inputs: [up, "w_down"], outputs: [down] })
    } else {
      nodes.push({ op: "Gemm", inputs: [x, "w_up"], outputs: [up], attributes: { transB: 1 } }, { op: "Gemm", inputs: [up, "w_down"], outputs: [down], attributes: { transB: 1 } })
    }
    x = down
  }
  const dimsUp = kind === "matmul" ? [K, N] : [N, K]
  const dimsDown = kind === "matmul" ? [N, K] : [K, N]
  fs.writeFileSync(file, encodeModel({
    name: kind, opsets: { "": 17 }, inline: [], nodes,
    external: [
      { name: "w_up", type: "float16", dims: dimsUp, location: `layout-${kind}.onnx.data`, offset: 0, length: bytes },
      { name: "w_down", type: "float16", dims: dimsDown, location: `layout-${kind}.onnx.data`, offset: bytes, length: bytes }
    ],
    inputs: [{ name: "x", type: "float16", dims: ["B", K] }],
    outputs: [{ name: x, type: "float16", dims: ["B", K] }]
  }))
  return { file, out: x }
}
for (const kind of ["matmul", "gemm"] as const) {
  const { file, out } = make(kind)
  const s = addon.createSession(file, { provider: "cuda" })
  for (const B of [1, 32, 64, 128]) {
    const x = s.allocate("float16", [B, K])
    const y = s.allocate("float16", [B, K])
    for (let i = 0; i < 5; i++) s.run({ x }, { [out]: y })
    const t = performance.now()
    for (let i = 0; i < 20; i++) s.run({ x }, { [out]: y })
    const ms = (performance.now() - t) / 20
    console.log(`${kind.padEnd(6)} B=${String(B).padStart(3)}: ${ms.toFixed(3)} ms for ${LAYERS} x (up, down)  -> ${((LAYERS * 2 * K * N * 2) / (ms / 1000) / 1e12).toFixed(2)} TB/s of weights`)
  }
}
