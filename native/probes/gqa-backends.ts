/**
 * Decode attention's KV read rate on the CUDA EP, by backend: GroupQueryAttention in Llama 3 8B's shape (32 heads,
 * 8 KV heads, head dim 128, packed QKV, rotary inside, share-buffer KV rows as the row cache uses them), one query
 * token per row. ONNX Runtime picks the kernel from the environment when the session is made, so run it once per
 * setting, e.g. on a GPU host:
 *
 *   node native/probes/gqa-backends.ts                          # flash decoding (the default)
 *   ORT_ENABLE_XQA=1 node native/probes/gqa-backends.ts         # TensorRT-LLM's XQA decode kernel
 *   node native/probes/gqa-backends.ts --op chorus              # chorus.DecodeAttention (npm run build:cuda-ops)
 *
 * `--layers` GQA nodes (default 8) run in one session (their own KV buffers, one input), so launch and host overheads
 * are spread over them; the rate is KV bytes read (keys and values of every cached position) over the time per node.
 * `--batches`, `--cached` and `--slot` pick the cases and the cache's row length (one case alone for a profiler).
 * `--layers 32 --graph` is a decode step's attention as the server runs it: 32 layers, replayed from a CUDA graph
 * (`enable_cuda_graph`, one graph per shape), so the per-run synchronization and the host-to-device copy of the
 * sequence lengths are spread over 32 nodes and the launches are the graph's.
 */
import * as fs from "node:fs"
import { parseFlags } from "../../src/cli/Args.ts"
import { cudaOpsLibraryPath } from "../../src/core/native/CudaOps.ts"
import { type DeviceTensor, type HostTensor, NativeOrt } from "../../src/core/native/NativeOrt.ts"
import { encodeModel } from "../../src/onnx/OnnxWriter.ts"

const flags = parseFlags("gqa-backends", process.argv.slice(2), {
  layers: { kind: "integer", description: "GQA nodes in the session (default 8)" },
  graph: { kind: "boolean", description: "replay each shape from a CUDA graph (enable_cuda_graph)" },
  op: { kind: "string", description: "gqa (GroupQueryAttention, default) or chorus (chorus.DecodeAttention, same inputs)" },
  batches: { kind: "list", description: "rows a step (default 1,16,64,128)" },
  cached: { kind: "list", description: "cached tokens a row (default 1024,4001)" },
  slot: { kind: "integer", description: "positions a row's cache holds (default 4096: the server's rows are longer than what they hold)" }
})
const chorusOp = flags.op === "chorus"
if (flags.op !== undefined && flags.op !== "gqa" && !chorusOp) throw new Error(`--op must be gqa or chorus, got ${flags.op}`)
const nh = 32, kvh = 8, hd = 128, slot = flags.slot ?? 4096, LAYERS = flags.layers ?? 8, graph = flags.graph === true
const file = `/tmp/gqa-backends-8b-${LAYERS}${chorusOp ? "-chorus" : ""}.onnx`
const layers = Array.from({ length: LAYERS }, (_, i) => i)
fs.writeFileSync(file, encodeModel({
  name: "gqa", opsets: { "": 17, "com.microsoft": 1, ...(chorusOp ? { chorus: 1 } : {}) }, external: [], inline: [],
  nodes: layers.map((i) => ({
    op: chorusOp ? "DecodeAttention" : "GroupQueryAttention", domain: chorusOp ? "chorus" : "com.microsoft", name: `gqa${i}`,
    inputs: ["qkv", "", "", `pk${i}`, `pv${i}`, "seqlens_k", "total", "cos", "sin"], outputs: [`o${i}`, `prk${i}`, `prv${i}`],
    attributes: { num_heads: nh, kv_num_heads: kvh, do_rotary: 1, rotary_interleaved: 0, scale: { float: 1 / Math.sqrt(hd) } }
  })),
  inputs: [
    { name: "qkv", type: "float16", dims: ["B", "S", (nh + 2 * kvh) * hd] },
    ...layers.flatMap((i) => [
      { name: `pk${i}`, type: "float16" as const, dims: ["B", kvh, "P", hd] },
      { name: `pv${i}`, type: "float16" as const, dims: ["B", kvh, "P", hd] }
    ]),
    { name: "seqlens_k", type: "int32", dims: ["B"] }, { name: "total", type: "int32", dims: [] },
    { name: "cos", type: "float16", dims: [slot, hd / 2] }, { name: "sin", type: "float16", dims: [slot, hd / 2] }
  ],
  outputs: layers.flatMap((i) => [
    { name: `o${i}`, type: "float16" as const, dims: ["B", "S", nh * hd] },
    { name: `prk${i}`, type: "float16" as const, dims: ["B", kvh, "T", hd] },
    { name: `prv${i}`, type: "float16" as const, dims: ["B", kvh, "T", hd] }
  ])
}))
const backend = chorusOp ? "chorus.DecodeAttention"
  : process.env.ORT_ENABLE_XQA === "1" ? "XQA" : process.env.ORT_DISABLE_FLASH_DECODE === "1" ? "flash (no flash decode)" : "flash decoding"
const s = NativeOrt.load().createSession(file, {
  provider: "cuda",
  cuda: { arena_extend_strategy: "kSameAsRequested", ...(graph ? { enable_cuda_graph: "1" } : {}) },
  ...(chorusOp ? { customOpsLibrary: cudaOpsLibraryPath() } : {})
})
let graphId = 0
const cos = s.allocate("float16", [slot, hd / 2])
const sin = s.allocate("float16", [slot, hd / 2])
const cachedLengths = flags.cached ?? [1024, 4001]
if (cachedLengths.some((c) => c < 1 || c > slot)) throw new Error(`--cached must be 1 .. --slot (${slot})`)
for (const B of flags.batches ?? [1, 16, 64, 128]) {
  const caches = layers.map(() => ({ k: s.allocate("float16", [B, kvh, slot, hd]), v: s.allocate("float16", [B, kvh, slot, hd]) }))
  const qkv = s.allocate("float16", [B, 1, (nh + 2 * kvh) * hd])
  for (const past of cachedLengths.map((c) => c - 1)) {
    const lengths = new Int32Array(B).fill(past)
    let seqlens: HostTensor | DeviceTensor = { data: lengths, dims: [B] }
    if (graph) {
      // A graph replays device addresses: the lengths live on the device, as the server's graphs have them.
      const d = s.allocate("int32", [B])
      d.upload(lengths)
      seqlens = d
    }
    const feeds: Record<string, HostTensor | DeviceTensor> = { qkv, cos, sin, seqlens_k: seqlens, total: { data: Int32Array.of(past + 1), dims: [] } }
    const outs: Record<string, DeviceTensor> = {}
    for (const i of layers) {
      feeds[`pk${i}`] = caches[i]!.k
      feeds[`pv${i}`] = caches[i]!.v
      outs[`o${i}`] = s.allocate("float16", [B, 1, nh * hd])
      outs[`prk${i}`] = caches[i]!.k
      outs[`prv${i}`] = caches[i]!.v
    }
    const opts = graph ? { cudaGraphId: ++graphId } : {}
    for (let i = 0; i < 5; i++) s.run(feeds, outs, opts)
    const runs = 30
    const t = performance.now()
    for (let i = 0; i < runs; i++) s.run(feeds, outs, opts)
    const us = ((performance.now() - t) / runs / LAYERS) * 1000
    const kvBytes = 2 * B * kvh * (past + 1) * hd * 2
    console.log(`${backend}${graph ? ", CUDA graph" : ""}, ${LAYERS} layers: B=${String(B).padStart(3)} cached=${String(past + 1).padStart(4)}: ${us.toFixed(0).padStart(5)} us per layer (x32 = ${(us * 32 / 1000).toFixed(2)} ms a step); KV ${(kvBytes / 1e6).toFixed(0)} MB -> ${(kvBytes / (us / 1e6) / 1e12).toFixed(2)} TB/s`)
    for (const i of layers) outs[`o${i}`]!.release()
    if (graph) (seqlens as DeviceTensor).release()
  }
  // 32 layers of 128 rows x 4,096 slots are 69 GB: free each batch size's caches before the next.
  for (const c of caches) {
    c.k.release()
    c.v.release()
  }
  qkv.release()
}
