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
 * named after what was renamed, and that file is what the session opens.
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
}

/** Which nodes `rewriteForChorusOps` renames. */
export interface ChorusOpsChoice {
  /** MatMul with a float16 weight -> `chorus.Linear`. */
  readonly float16Linears: boolean
  /** 4-bit MatMulNBits -> `chorus.Int4Linear`. */
  readonly int4Linears: boolean
  /** GroupQueryAttention -> `chorus.DecodeAttention`. */
  readonly attention: boolean
}

/** What a CUDA shard's graph gets renamed for `--linear-kernels` and `--decode-attention chorus`, the library built or not. */
export const chorusOpsChoice = (kernels: LinearKernels, attention: boolean, libraryBuilt: boolean): ChorusOpsChoice => ({
  float16Linears: kernels === "chorus" || (kernels === "auto" && libraryBuilt),
  int4Linears: kernels === "chorus",
  attention
})

/**
 * The graph with, as `choice` asks, every `MatMul` whose weight is a float16 initializer [K, N] renamed to
 * `chorus.Linear`, every 4-bit `MatMulNBits` to `chorus.Int4Linear` and every `GroupQueryAttention` to
 * `chorus.DecodeAttention` (same inputs and attributes), written next to `graphPath` so that its external data paths
 * still resolve, in a file named after what was renamed (`<shard>.chorus-linear-int4-attention.onnx` and its subsets);
 * reused while it is newer than the graph. A graph with no such node comes back unchanged.
 */
export const rewriteForChorusOps = (
  graphPath: string,
  choice: ChorusOpsChoice = { float16Linears: true, int4Linears: true, attention: false }
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
  const renamed = [float16Linears > 0 ? "linear" : "", int4Linears > 0 ? "int4" : "", attentions > 0 ? "attention" : ""].filter((k) => k !== "")
  if (renamed.length === 0) return { path: graphPath, int4Linears, float16Linears, attentions }
  const out = `${graphPath.replace(/\.onnx$/, "")}.chorus-${renamed.join("-")}.onnx`
  if (fs.existsSync(out) && fs.statSync(out).mtimeMs >= fs.statSync(graphPath).mtimeMs) return { path: out, int4Linears, float16Linears, attentions }
  if (!(model.opsetImport ?? []).some((o) => o.domain === CUSTOM_DOMAIN)) {
    model.opsetImport = [...(model.opsetImport ?? []), onnx.OperatorSetIdProto.create({ domain: CUSTOM_DOMAIN, version: 1 })]
  }
  // Written whole under a temporary name, then renamed: shards loading at once never read half a file.
  const tmp = `${out}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`
  fs.writeFileSync(tmp, onnx.ModelProto.encode(model).finish())
  fs.renameSync(tmp, out)
  return { path: out, int4Linears, float16Linears, attentions }
}
