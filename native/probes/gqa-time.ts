/**
 * GroupQueryAttention's decode cost on the CUDA EP through the native addon, in Llama 3 8B's shape (32 heads,
 * 8 KV heads, head dim 128, packed QKV, rotary inside, share-buffer KV slots), for several batches, cached lengths
 * and `total_sequence_length` values (the CUDA-graph decode passes the slot length there). Run on a GPU host:
 *   node native/probes/gqa-time.ts
 */
import * as fs from "node:fs"
import { NativeOrt } from "../../src/core/native/NativeOrt.ts"
import { encodeModel } from "../../src/onnx/OnnxWriter.ts"

const nh = 32, kvh = 8, hd = 128, slot = 2048
const file = "/tmp/gqa-8b.onnx"
fs.writeFileSync(file, encodeModel({
  name: "gqa", opsets: { "": 17, "com.microsoft": 1 }, external: [], inline: [],
  nodes: [{ op: "GroupQueryAttention", domain: "com.microsoft", inputs: ["qkv", "", "", "pk", "pv", "seqlens_k", "total", "cos", "sin"], outputs: ["o", "prk", "prv"], attributes: { num_heads: nh, kv_num_heads: kvh, do_rotary: 1, rotary_interleaved: 0, scale: { float: 1 / Math.sqrt(hd) } } }],
  inputs: [
    { name: "qkv", type: "float16", dims: ["B", "S", (nh + 2 * kvh) * hd] },
    { name: "pk", type: "float16", dims: ["B", kvh, "P", hd] }, { name: "pv", type: "float16", dims: ["B", kvh, "P", hd] },
    { name: "seqlens_k", type: "int32", dims: ["B"] }, { name: "total", type: "int32", dims: [] },
    { name: "cos", type: "float16", dims: [slot, hd / 2] }, { name: "sin", type: "float16", dims: [slot, hd / 2] }
  ],
  outputs: [{ name: "o", type: "float16", dims: ["B", "S", nh * hd] }, { name: "prk", type: "float16", dims: ["B", kvh, "T", hd] }, { name: "prv", type: "float16", dims: ["B", kvh, "T", hd] }]
}))
const s = NativeOrt.load().createSession(file, { provider: "cuda" })
const cos = s.allocate("float16", [slot, hd / 2])
const sin = s.allocate("float16", [slot, hd / 2])
for (const B of [1, 64]) {
  const k = s.allocate("float16", [B, kvh, slot, hd])
  const v = s.allocate("float16", [B, kvh, slot, hd])
  const qkv = s.allocate("float16", [B, 1, (nh + 2 * kvh) * hd])
  for (const past of [640]) {
    for (const total of [past + 1, slot]) {
      const feeds = { qkv, pk: k, pv: v, cos, sin, seqlens_k: { data: new Int32Array(B).fill(past), dims: [B] }, total: { data: Int32Array.of(total), dims: [] } }
      const outs = { o: s.allocate("float16", [B, 1, nh * hd]), prk: k, prv: v }
      for (let i = 0; i < 5; i++) s.run(feeds, outs)
      const t = performance.now()
      for (let i = 0; i < 50; i++) s.run(feeds, outs)
      const ms = (performance.now() - t) / 50
      const kvBytes = 2 * B * kvh * (past + 1) * hd * 2
      console.log(`GQA B=${String(B).padStart(2)} past=${past} total=${String(total).padStart(4)}: ${(ms * 1000).toFixed(0).padStart(5)} us per layer (x32 = ${(ms * 32).toFixed(2)} ms/step); KV read ${(kvBytes / 1e6).toFixed(1)} MB -> ${(kvBytes / (ms / 1000) / 1e12).toFixed(2)} TB/s`)
    }
  }
}
