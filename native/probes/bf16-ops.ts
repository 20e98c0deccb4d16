/**
 * Which of the ops a Chorus shard graph uses have bfloat16 kernels on the CUDA EP of this ONNX Runtime: one tiny
 * bfloat16 model per op, each opened with `enable_cuda_graph` (which refuses a session whose nodes are not all on the
 * CUDA EP). Run on a GPU host:  node native/probes/bf16-ops.ts
 */
import * as fs from "node:fs"
import { NativeOrt } from "../../src/core/native/NativeOrt.ts"
import { encodeModel, type NodeSpec, type ValueSpec } from "../../src/onnx/OnnxWriter.ts"

const T = "bfloat16" as const
const v = (name: string, dims: Array<number | string>, type: ValueSpec["type"] = T): ValueSpec => ({ name, type, dims })
interface Case { readonly op: string; readonly node: NodeSpec; readonly inputs: Array<ValueSpec>; readonly outputs: Array<ValueSpec> }
const ms = "com.microsoft"
const cases: Array<Case> = [
  { op: "Gather", node: { op: "Gather", inputs: ["w", "ids"], outputs: ["y"], attributes: { axis: 0 } }, inputs: [v("w", [16, 8]), v("ids", [1, 2], "int64")], outputs: [v("y", [1, 2, 8])] },
  { op: "SimplifiedLayerNormalization", node: { op: "SimplifiedLayerNormalization", inputs: ["x", "g"], outputs: ["y"], attributes: { axis: -1, epsilon: { float: 1e-5 }, stash_type: 1 } }, inputs: [v("x", [1, 2, 8]), v("g", [8])], outputs: [v("y", [1, 2, 8])] },
  { op: "SkipSimplifiedLayerNormalization", node: { op: "SkipSimplifiedLayerNormalization", domain: ms, inputs: ["x", "s", "g"], outputs: ["y", "", "", "sum"], attributes: { epsilon: { float: 1e-5 } } }, inputs: [v("x", [1, 2, 8]), v("s", [1, 2, 8]), v("g", [8])], outputs: [v("y", [1, 2, 8]), v("sum", [1, 2, 8])] },
  { op: "MatMul", node: { op: "MatMul", inputs: ["x", "w"], outputs: ["y"] }, inputs: [v("x", [1, 2, 8]), v("w", [8, 4])], outputs: [v("y", [1, 2, 4])] },
  { op: "Split", node: { op: "Split", inputs: ["x", "sp"], outputs: ["a", "b"], attributes: { axis: -1 } }, inputs: [v("x", [1, 2, 8]), v("sp", [2], "int64")], outputs: [v("a", [1, 2, 4]), v("b", [1, 2, 4])] },
  { op: "Sigmoid", node: { op: "Sigmoid", inputs: ["x"], outputs: ["y"] }, inputs: [v("x", [1, 2, 8])], outputs: [v("y", [1, 2, 8])] },
  { op: "Mul", node: { op: "Mul", inputs: ["x", "z"], outputs: ["y"] }, inputs: [v("x", [1, 2, 8]), v("z", [1, 2, 8])], outputs: [v("y", [1, 2, 8])] },
  { op: "QuickGelu (what ORT fuses x*Sigmoid(x) into)", node: { op: "QuickGelu", domain: ms, inputs: ["x"], outputs: ["y"], attributes: { alpha: { float: 1 } } }, inputs: [v("x", [1, 2, 8])], outputs: [v("y", [1, 2, 8])] },
  { op: "Add", node: { op: "Add", inputs: ["x", "z"], outputs: ["y"] }, inputs: [v("x", [1, 2, 8]), v("z", [1, 2, 8])], outputs: [v("y", [1, 2, 8])] },
  { op: "GatherND", node: { op: "GatherND", inputs: ["x", "i"], outputs: ["y"], attributes: { batch_dims: 1 } }, inputs: [v("x", [1, 2, 8]), v("i", [1, 1, 1], "int64")], outputs: [v("y", [1, 1, 8])] },
  { op: "Cast", node: { op: "Cast", inputs: ["x"], outputs: ["y"], attributes: { to: 1 } }, inputs: [v("x", [1, 2, 8])], outputs: [v("y", [1, 2, 8], "float32")] },
  {
    op: "GroupQueryAttention",
    node: { op: "GroupQueryAttention", domain: ms, inputs: ["qkv", "", "", "pk", "pv", "sl", "tot", "cos", "sin"], outputs: ["o", "pko", "pvo"], attributes: { num_heads: 2, kv_num_heads: 1, do_rotary: 1, rotary_interleaved: 0 } },
    inputs: [v("qkv", [1, 1, 64]), v("pk", [1, 1, 8, 16]), v("pv", [1, 1, 8, 16]), v("sl", [1], "int32"), v("tot", [], "int32"), v("cos", [8, 8]), v("sin", [8, 8])],
    outputs: [v("o", [1, 1, 32]), v("pko", [1, 1, 8, 16]), v("pvo", [1, 1, 8, 16])]
  }
]
const addon = NativeOrt.load()
for (const c of cases) {
  const file = `/tmp/bf16-${c.op.split(" ")[0]}.onnx`
  fs.writeFileSync(file, encodeModel({ name: c.op, opsets: { "": 17, [ms]: 1 }, nodes: [c.node], inputs: c.inputs, outputs: c.outputs, external: [], inline: [] }))
  try {
    addon.createSession(file, { provider: "cuda", cuda: { enable_cuda_graph: "1" } }).release()
    console.log(`bfloat16 on CUDA: ${c.op}: yes`)
  } catch (e) {
    const m = (e instanceof Error ? e.message : String(e)).split("\n")[0]!
    console.log(`bfloat16 on CUDA: ${c.op}: NO (${/partitioned|implementation/i.test(m) ? "not on the CUDA EP" : m.slice(0, 160)})`)
  }
}
