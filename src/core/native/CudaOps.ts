/**
 * Chorus's own CUDA kernels (native/cuda/: chorus_cuda_ops.cu and its kernel headers, an ONNX Runtime custom-op
 * library built by `npm run build:cuda-ops`) and how a shard graph comes to use them.
 *
 * `--linear-kernels` (LinearKernels): `auto` (the default) runs a float16 shard's linears (MatMul with a float16 weight
 * [K, N]) as `chorus.Linear` where the library is built (a GEMV up to 2 rows, cuBLAS above: 5-8% more tokens a second
 * at one stream through the server on an H200, docs/benchmarks.md) and leaves everything else to ONNX Runtime;
 * `chorus` also runs the 4-bit linears of an int4 shard as `chorus.Int4Linear` instead of ORT's
 * `com.microsoft.MatMulNBits` (faster at 64 streams, slower at one); `ort` renames nothing.
 * `--decode-attention chorus` (experimental): the same rename for GroupQueryAttention, to `chorus.DecodeAttention`.
 * Each op takes the node's inputs and attributes unchanged, so the converted shard and its cache entry stay as they
 * are: at load time the graph (a small protobuf; the weights are external data) is rewritten into a sibling file
 * named after what was renamed, and that file is what the session opens. With the float16 linears, each MLP's SwiGLU
 * (Split, Sigmoid, Mul, Mul between gate|up and the down projection) is folded into the down projection's
 * `chorus.Linear` (activation "swiglu"): three to four fewer kernels a layer (`CHORUS_FOLD_SWIGLU=0` keeps them, to
 * measure the difference).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import onnxProto from "onnx-proto"

const { onnx } = onnxProto

/** Which kernels run a shard's linears on CUDA (see above); `auto` when not given. */
export type LinearKernels = "auto" | "ort" | "chorus"

export const CUSTOM_DOMAIN = "chorus"

const defaultLibraryPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../native/build-cuda/libchorus_cuda_ops.so")

/** Where the library is looked for: `CHORUS_CUDA_OPS` when set, else native/build-cuda/libchorus_cuda_ops.so. */
export const cudaOpsLibraryPath = (): string => process.env.CHORUS_CUDA_OPS ?? defaultLibraryPath

/** The library's path when it has been built, else undefined. */
export const cudaOpsLibrary = (): string | undefined => {
  const file = cudaOpsLibraryPath()
  return fs.existsSync(file) ? file : undefined
}

/** What `rewriteForChorusOps` did to a graph. */
export interface ChorusOpsGraph {
  readonly path: string
  /** MatMulNBits nodes now `chorus.Int4Linear`. */
  readonly int4Linears: number
  /** MatMul nodes with a float16 weight now `chorus.Linear`. */
  readonly float16Linears: number
  /** GroupQueryAttention nodes now `chorus.DecodeAttention`. */
  readonly attentions: number
  /** MLPs whose SwiGLU is now inside their down projection's `chorus.Linear`. */
  readonly swigluFolds: number
}

/** Which nodes `rewriteForChorusOps` renames. */
export interface ChorusOpsChoice {
  /** MatMul with a float16 weight -> `chorus.Linear`. */
  readonly float16Linears: boolean
  /** 4-bit MatMulNBits -> `chorus.Int4Linear`. */
  readonly int4Linears: boolean
  /** GroupQueryAttention -> `chorus.DecodeAttention`. */
  readonly attention: boolean
  /** Split, Sigmoid, Mul, Mul (SwiGLU) before a float16 down projection -> that `chorus.Linear`, activation "swiglu". */
  readonly swiglu: boolean
}

/** What a CUDA shard's graph gets renamed for `--linear-kernels` and `--decode-attention chorus`, the library built or not. */
export const chorusOpsChoice = (kernels: LinearKernels, attention: boolean, libraryBuilt: boolean): ChorusOpsChoice => {
  const float16Linears = kernels === "chorus" || (kernels === "auto" && libraryBuilt)
  return { float16Linears, int4Linears: kernels === "chorus", attention, swiglu: float16Linears && process.env.CHORUS_FOLD_SWIGLU !== "0" }
}

type Node = onnxProto.onnx.INodeProto

/**
 * Folds each SwiGLU that feeds a `chorus.Linear` (`Split(X, [K, K], axis -1) -> gate, up`; `Sigmoid(gate)`;
 * `Mul(gate, sigmoid)`; `Mul(silu, up)`, either operand order) into that node: its input becomes X (gate | up) and
 * it gets activation "swiglu". Only where X and every tensor between are read by these nodes alone and are no graph
 * output (the op overwrites X's gate half above two rows). Returns the nodes kept and how many folded.
 */
const foldSwiglu = (graph: onnxProto.onnx.IGraphProto, nodes: ReadonlyArray<Node>): { nodes: Array<Node>; folds: number } => {
  const producer = new Map<string, Node>()
  const readers = new Map<string, number>()
  for (const n of nodes) {
    for (const o of n.output ?? []) producer.set(o, n)
    for (const i of n.input ?? []) readers.set(i, (readers.get(i) ?? 0) + 1)
  }
  for (const o of graph.output ?? []) readers.set(o.name ?? "", Number.POSITIVE_INFINITY)
  const readOnlyBy = (tensor: string, count: number) => readers.get(tensor) === count
  const plain = (n: Node | undefined, op: string): n is Node => n !== undefined && n.opType === op && (n.domain ?? "") === ""
  const int64s = new Map((graph.initializer ?? []).map((t) => [t.name ?? "", (t.int64Data ?? []).map((v) => Number(v))]))
  const weightRows = new Map((graph.initializer ?? []).map((t) => [t.name ?? "", Number(t.dims?.[0] ?? -1)]))
  const equalHalves = (sizes: ReadonlyArray<number> | undefined, k: number | undefined) => sizes?.length === 2 && sizes[0] === k && sizes[1] === k
  const removed = new Set<Node>()
  let folds = 0
  for (const linear of nodes) {
    if (linear.opType !== "Linear" || linear.domain !== CUSTOM_DOMAIN || (linear.attribute ?? []).length > 0) continue
    const [swiglu = "", weight = ""] = linear.input ?? []
    const product = producer.get(swiglu)
    if (!plain(product, "Mul") || !readOnlyBy(swiglu, 1)) continue
    const [a = "", b = ""] = product.input ?? []
    // Which operand is silu(gate) = gate * Sigmoid(gate); the other is up.
    const siluOf = (t: string) => {
      const mul = producer.get(t)
      if (!plain(mul, "Mul") || !readOnlyBy(t, 1)) return undefined
      const [p = "", q = ""] = mul.input ?? []
      for (const [gate, sig] of [[p, q], [q, p]] as const) {
        const sigmoid = producer.get(sig)
        if (plain(sigmoid, "Sigmoid") && sigmoid.input?.[0] === gate && readOnlyBy(sig, 1) && readOnlyBy(gate, 2)) return { mul, sigmoid, gate }
      }
      return undefined
    }
    const silu = siluOf(a) ?? siluOf(b)
    if (silu === undefined) continue
    const up = silu.mul === producer.get(a) ? b : a
    const split = producer.get(silu.gate)
    if (!plain(split, "Split") || producer.get(up) !== split || !readOnlyBy(up, 1)) continue
    const [x = "", sizes = ""] = split.input ?? []
    const axis = split.attribute?.find((t) => t.name === "axis")
    const k = weightRows.get(weight)
    if (
      split.output?.length !== 2 || split.output[0] !== silu.gate || split.output[1] !== up || axis === undefined || Number(axis.i) !== -1 ||
      !equalHalves(int64s.get(sizes), k) || !readOnlyBy(x, 1)
    ) continue
    for (const n of [split, silu.sigmoid, silu.mul, product]) removed.add(n)
    linear.input = [x, weight]
    linear.attribute = [onnx.AttributeProto.create({ name: "activation", type: onnx.AttributeProto.AttributeType.STRING, s: new TextEncoder().encode("swiglu") })]
    folds++
  }
  return { nodes: nodes.filter((n) => !removed.has(n)), folds }
}

/**
 * The graph with, as `choice` asks, every `MatMul` whose weight is a float16 initializer [K, N] renamed to
 * `chorus.Linear`, every 4-bit `MatMulNBits` to `chorus.Int4Linear` and every `GroupQueryAttention` to
 * `chorus.DecodeAttention` (same inputs and attributes), written next to `graphPath` so that its external data paths
 * still resolve, in a file named after what was renamed (`<shard>.chorus-linear-swiglu-int4-attention.onnx` and its
 * subsets); reused while it is newer than the graph. A graph with no such node comes back unchanged.
 */
export const rewriteForChorusOps = (
  graphPath: string,
  choice: ChorusOpsChoice = { float16Linears: true, int4Linears: true, attention: false, swiglu: true }
): ChorusOpsGraph => {
  const model = onnx.ModelProto.decode(fs.readFileSync(graphPath))
  const nodes = model.graph?.node ?? []
  const float16Weights = new Set(
    (model.graph?.initializer ?? []).filter((t) => t.dataType === onnx.TensorProto.DataType.FLOAT16 && (t.dims ?? []).length === 2).map((t) => t.name)
  )
  let int4Linears = 0, float16Linears = 0, attentions = 0
  for (const n of nodes) {
    if (choice.float16Linears && n.opType === "MatMul" && (n.domain ?? "") === "" && float16Weights.has(n.input?.[1] ?? "")) {
      n.opType = "Linear"
      n.domain = CUSTOM_DOMAIN
      float16Linears++
      continue
    }
    if (n.domain !== "com.microsoft") continue
    if (choice.int4Linears && n.opType === "MatMulNBits") {
      const bits = n.attribute?.find((a) => a.name === "bits")
      if (bits !== undefined && Number(bits.i) !== 4) continue
      n.opType = "Int4Linear"
      n.domain = CUSTOM_DOMAIN
      int4Linears++
    } else if (choice.attention && n.opType === "GroupQueryAttention") {
      n.opType = "DecodeAttention"
      n.domain = CUSTOM_DOMAIN
      attentions++
    }
  }
  let swigluFolds = 0
  if (choice.swiglu && float16Linears > 0 && model.graph) {
    const folded = foldSwiglu(model.graph, nodes)
    model.graph.node = folded.nodes
    swigluFolds = folded.folds
  }
  const renamed = [float16Linears > 0 ? "linear" : "", swigluFolds > 0 ? "swiglu" : "", int4Linears > 0 ? "int4" : "", attentions > 0 ? "attention" : ""]
    .filter((k) => k !== "")
  const result = { int4Linears, float16Linears, attentions, swigluFolds }
  if (renamed.length === 0) return { path: graphPath, ...result }
  const out = `${graphPath.replace(/\.onnx$/, "")}.chorus-${renamed.join("-")}.onnx`
  if (fs.existsSync(out) && fs.statSync(out).mtimeMs >= fs.statSync(graphPath).mtimeMs) return { path: out, ...result }
  if (!(model.opsetImport ?? []).some((o) => o.domain === CUSTOM_DOMAIN)) {
    model.opsetImport = [...(model.opsetImport ?? []), onnx.OperatorSetIdProto.create({ domain: CUSTOM_DOMAIN, version: 1 })]
  }
  // Written whole under a temporary name, then renamed: shards loading at once never read half a file.
  const tmp = `${out}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`
  fs.writeFileSync(tmp, onnx.ModelProto.encode(model).finish())
  fs.renameSync(tmp, out)
  return { path: out, ...result }
}
