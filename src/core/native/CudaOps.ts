/**
 * Chorus's own CUDA kernels (native/cuda/: chorus_cuda_ops.cu and its kernel headers, an ONNX Runtime custom-op
 * library built by `npm run build:cuda-ops`) and how a shard graph comes to use them.
 *
 * `--decode-attention chorus` (experimental): the same rename for GroupQueryAttention, to `chorus.DecodeAttention`.
 *
 * `--linear-kernels chorus`: the 4-bit linears of an int4 shard run as `chorus.Int4Linear` instead of ORT's
 * `com.microsoft.MatMulNBits`, and the float16 linears (MatMul with a float16 weight [K, N]) as `chorus.Linear`
 * (experimental, written 2026-12-01g and not yet run on a GPU: a GEMV up to 4 rows, cuBLAS above). Each op takes
 * the node's inputs and attributes unchanged, so the converted shard and its cache entry stay as they are: at load
 * time the graph (a small protobuf; the weights are external data) is rewritten into a sibling file
 * `<shard>.chorus-ops.onnx` whose nodes are renamed, and that file is what the session opens. Why:
 * docs/benchmarks.md, "What limits int4" (ORT's kernels stream packed weights at about 1 TB/s at one row and
 * dequantize to float16 before a GEMM above it).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import onnxProto from "onnx-proto"

const { onnx } = onnxProto

/** Which kernels run a shard's linears on CUDA: ONNX Runtime's own, or Chorus's (the custom-op library). */
export type LinearKernels = "ort" | "chorus"

export const CUSTOM_DOMAIN = "chorus"
const SUFFIX = ".chorus-ops.onnx"

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

/** Which nodes `rewriteForChorusOps` renames: linears (`--linear-kernels chorus`), attention (`--decode-attention chorus`). */
export interface ChorusOpsChoice {
  readonly linears: boolean
  readonly attention: boolean
}

/**
 * The graph with every 4-bit `MatMulNBits` node renamed to `chorus.Int4Linear`, every `MatMul` whose weight is a
 * float16 initializer [K, N] to `chorus.Linear` and, asked for, every
 * `GroupQueryAttention` to `chorus.DecodeAttention` (same inputs and attributes), written next to `graphPath` so that
 * its external data paths still resolve (one file per choice); reused while it is newer than the graph. A graph with
 * no such node comes back unchanged.
 */
export const rewriteForChorusOps = (graphPath: string, choice: ChorusOpsChoice = { linears: true, attention: false }): ChorusOpsGraph => {
  const model = onnx.ModelProto.decode(fs.readFileSync(graphPath))
  const nodes = model.graph?.node ?? []
  const float16Weights = new Set(
    (model.graph?.initializer ?? []).filter((t) => t.dataType === onnx.TensorProto.DataType.FLOAT16 && (t.dims ?? []).length === 2).map((t) => t.name)
  )
  let int4Linears = 0, float16Linears = 0, attentions = 0
  for (const n of nodes) {
    if (choice.linears && n.opType === "MatMul" && (n.domain ?? "") === "" && float16Weights.has(n.input?.[1] ?? "")) {
      n.opType = "Linear"
      n.domain = CUSTOM_DOMAIN
      float16Linears++
      continue
    }
    if (n.domain !== "com.microsoft") continue
    if (choice.linears && n.opType === "MatMulNBits") {
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
  const linears = int4Linears + float16Linears
  if (linears + attentions === 0) return { path: graphPath, int4Linears, float16Linears, attentions }
  const out = graphPath.replace(/\.onnx$/, "") + (attentions > 0 ? (linears > 0 ? ".chorus-ops-attention.onnx" : ".chorus-attention.onnx") : SUFFIX)
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
