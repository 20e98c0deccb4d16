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
 * `chorus.Linear` (activation "swiglu"): three to four fewer kernels a layer; where the down projection is not
 * `chorus.Linear` (4-bit weights under `auto`), the four nodes become one `chorus.SwiGLU` (`CHORUS_FOLD_SWIGLU=0`
 * keeps them, to measure the difference). Under `auto` and `chorus` a float16 graph's greedy ArgMax (a Cast and the
 * chunked ArgMax's nodes) becomes one `chorus.GreedyArgMax` over the float16 logits (`CHORUS_GREEDY_ARGMAX=0` keeps
 * it). Measured on an H200 (docs/benchmarks.md): 7.7 us of Split, QuickGelu and Mul a layer and 93 us of ArgMax a
 * one-row step, against one short kernel each.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import onnxProto from "onnx-proto"
import * as TensorNames from "../shard/TensorNames.ts"

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
  /** MLPs whose SwiGLU is now one `chorus.SwiGLU` node. */
  readonly swigluOps: number
  /** Greedy ArgMax subgraphs now one `chorus.GreedyArgMax` (0 or 1). */
  readonly greedyArgmax: number
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
  /** The same SwiGLU before any other down projection -> one `chorus.SwiGLU`. */
  readonly swigluOp: boolean
  /** The greedy ArgMax of float16 logits (Cast, chunked ArgMax) -> one `chorus.GreedyArgMax`. */
  readonly greedyArgmax: boolean
}

/** What a CUDA shard's graph gets renamed for `--linear-kernels` and `--decode-attention chorus`, the library built or not. */
export const chorusOpsChoice = (kernels: LinearKernels, attention: boolean, libraryBuilt: boolean): ChorusOpsChoice => {
  const float16Linears = kernels === "chorus" || (kernels === "auto" && libraryBuilt)
  const swigluFold = process.env.CHORUS_FOLD_SWIGLU !== "0"
  return {
    float16Linears,
    int4Linears: kernels === "chorus",
    attention,
    swiglu: float16Linears && swigluFold,
    swigluOp: float16Linears && swigluFold,
    greedyArgmax: float16Linears && process.env.CHORUS_GREEDY_ARGMAX !== "0"
  }
}

type Node = onnxProto.onnx.INodeProto

/**
 * Rewrites each SwiGLU (`Split(X, [K, K], axis -1) -> gate, up`; `Sigmoid(gate)`; `Mul(gate, sigmoid)`;
 * `Mul(silu, up)`, either operand order) whose X and every tensor between are read by these nodes alone and are no
 * graph output: where `fold` and it feeds a `chorus.Linear` of K rows, into that node (its input becomes X, gate | up,
 * with activation "swiglu"; the op overwrites X's gate half above two rows); else, where `op`, into one
 * `chorus.SwiGLU(X)` with the last Mul's output. Returns the nodes kept and how many of each.
 */
const rewriteSwiglu = (
  graph: onnxProto.onnx.IGraphProto,
  nodes: ReadonlyArray<Node>,
  want: { readonly fold: boolean; readonly op: boolean }
): { nodes: Array<Node>; folds: number; ops: number } => {
  const producer = new Map<string, Node>()
  const readers = new Map<string, Array<Node>>()
  for (const n of nodes) {
    for (const o of n.output ?? []) producer.set(o, n)
    for (const i of n.input ?? []) {
      const list = readers.get(i)
      if (list === undefined) readers.set(i, [n])
      else list.push(n)
    }
  }
  const graphOutputs = new Set((graph.output ?? []).map((o) => o.name ?? ""))
  const readOnlyBy = (tensor: string, count: number) => !graphOutputs.has(tensor) && (readers.get(tensor)?.length ?? 0) === count
  const plain = (n: Node | undefined, op: string): n is Node => n !== undefined && n.opType === op && (n.domain ?? "") === ""
  const int64s = new Map((graph.initializer ?? []).map((t) => [t.name ?? "", (t.int64Data ?? []).map((v) => Number(v))]))
  const weightRows = new Map((graph.initializer ?? []).map((t) => [t.name ?? "", Number(t.dims?.[0] ?? -1)]))
  const removed = new Set<Node>()
  const added = new Map<Node, Node>()  // the last Mul -> the chorus.SwiGLU taking its place
  let folds = 0, ops = 0
  for (const product of nodes) {
    if (!plain(product, "Mul")) continue
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
    const halves = int64s.get(sizes)
    if (
      split.output?.length !== 2 || split.output[0] !== silu.gate || split.output[1] !== up || axis === undefined || Number(axis.i) !== -1 ||
      halves?.length !== 2 || halves[0] !== halves[1] || !readOnlyBy(x, 1)
    ) continue
    const swiglu = product.output?.[0] ?? ""
    const consumers = readers.get(swiglu) ?? []
    const linear = consumers[0]
    if (
      want.fold && consumers.length === 1 && !graphOutputs.has(swiglu) && linear?.opType === "Linear" && linear.domain === CUSTOM_DOMAIN &&
      (linear.attribute ?? []).length === 0 && linear.input?.[0] === swiglu && weightRows.get(linear.input?.[1] ?? "") === halves[0]
    ) {
      for (const n of [split, silu.sigmoid, silu.mul, product]) removed.add(n)
      linear.input = [x, linear.input[1] ?? ""]
      linear.attribute = [onnx.AttributeProto.create({ name: "activation", type: onnx.AttributeProto.AttributeType.STRING, s: new TextEncoder().encode("swiglu") })]
      folds++
    } else if (want.op) {
      for (const n of [split, silu.sigmoid, silu.mul]) removed.add(n)
      added.set(product, onnx.NodeProto.create({ opType: "SwiGLU", domain: CUSTOM_DOMAIN, input: [x], output: [swiglu], name: `${product.name ?? swiglu}.swiglu` }))
      ops++
    }
  }
  return { nodes: nodes.filter((n) => !removed.has(n)).map((n) => added.get(n) ?? n), folds, ops }
}

/**
 * Replaces the greedy ArgMax of a float16 graph's logits (`logits = Cast(L)`, L float16, and every node between
 * `logits` and `greedy_token` that nothing else reads) with `greedy_token = chorus.GreedyArgMax(L)`. The Cast stays
 * for the `logits` output. Returns the nodes kept and whether it did.
 */
const rewriteGreedyArgmax = (graph: onnxProto.onnx.IGraphProto, nodes: ReadonlyArray<Node>): { nodes: Array<Node>; done: boolean } => {
  const producer = new Map<string, Node>()
  for (const n of nodes) for (const o of n.output ?? []) producer.set(o, n)
  const cast = producer.get(TensorNames.logits)
  const last = producer.get(TensorNames.greedyToken)
  const to = cast?.attribute?.find((a) => a.name === "to")
  if (cast === undefined || last === undefined || cast.opType !== "Cast" || (cast.domain ?? "") !== "" || Number(to?.i) !== onnx.TensorProto.DataType.FLOAT) {
    return { nodes: [...nodes], done: false }
  }
  const half = cast.input?.[0] ?? ""
  // greedy_token's own subgraph: its producers back to `logits` (or to tensors without a producer: initializers, inputs).
  const subgraph = new Set<Node>()
  const stack = [last]
  while (stack.length > 0) {
    const n = stack.pop()!
    if (subgraph.has(n)) continue
    subgraph.add(n)
    for (const i of n.input ?? []) {
      const p = producer.get(i)
      if (p !== undefined && i !== TensorNames.logits) stack.push(p)
    }
  }
  // Only nodes nothing outside the subgraph reads go; the rest (a Shape of logits_index another node uses) stay.
  const graphOutputs = new Set((graph.output ?? []).map((o) => o.name ?? ""))
  const readOutside = (n: Node) =>
    (n.output ?? []).some((o) => (o !== TensorNames.greedyToken && graphOutputs.has(o)) || nodes.some((r) => !subgraph.has(r) && (r.input ?? []).includes(o)))
  const removed = new Set([...subgraph].filter((n) => !readOutside(n)))
  if (!removed.has(last)) return { nodes: [...nodes], done: false }
  const argmax = onnx.NodeProto.create({ opType: "GreedyArgMax", domain: CUSTOM_DOMAIN, input: [half], output: [TensorNames.greedyToken], name: "greedy" })
  return { nodes: nodes.flatMap((n) => (n === last ? [argmax] : removed.has(n) ? [] : [n])), done: true }
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
  choice: ChorusOpsChoice = { float16Linears: true, int4Linears: true, attention: false, swiglu: true, swigluOp: true, greedyArgmax: true }
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
  let swigluFolds = 0, swigluOps = 0, greedyArgmax = 0
  // chorus.SwiGLU and chorus.GreedyArgMax have float16 kernels only: a float32 graph (no float16 initializer) or a
  // bfloat16 one keeps its nodes.
  const initializerTypes = new Set((model.graph?.initializer ?? []).map((t) => t.dataType))
  const halfGraph = initializerTypes.has(onnx.TensorProto.DataType.FLOAT16) && !initializerTypes.has(onnx.TensorProto.DataType.BFLOAT16)
  if ((choice.swiglu || choice.swigluOp) && model.graph) {
    const rewritten = rewriteSwiglu(model.graph, model.graph.node ?? [], { fold: choice.swiglu && float16Linears > 0, op: choice.swigluOp && halfGraph })
    model.graph.node = rewritten.nodes
    swigluFolds = rewritten.folds
    swigluOps = rewritten.ops
  }
  if (choice.greedyArgmax && halfGraph && model.graph) {
    const rewritten = rewriteGreedyArgmax(model.graph, model.graph.node ?? [])
    model.graph.node = rewritten.nodes
    greedyArgmax = rewritten.done ? 1 : 0
  }
  const renamed = [
    float16Linears > 0 ? "linear" : "",
    swigluFolds > 0 ? "swiglu" : "",
    swigluOps > 0 ? "swiglu-op" : "",
    int4Linears > 0 ? "int4" : "",
    attentions > 0 ? "attention" : "",
    greedyArgmax > 0 ? "argmax" : ""
  ].filter((k) => k !== "")
  const result = { int4Linears, float16Linears, attentions, swigluFolds, swigluOps, greedyArgmax }
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
