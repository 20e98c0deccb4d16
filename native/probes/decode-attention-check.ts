/**
 * chorus.DecodeAttention against GroupQueryAttention on the same inputs (npm run build:cuda-ops first; a CUDA host):
 * a session a shape with both ops (Llama 3 8B's: 32 heads, 8 KV heads, head dim 128; 70B's 8 query heads a KV head;
 * the test fixtures' head dim 16 with 2 and 3; packed QKV, rotary inside, share-buffer KV rows), each on its own copy
 * of the same random caches: decode steps (one query token a row, rows of different lengths) and prompt chunks. Prints, per case, the largest difference of the attention outputs relative
 * to GroupQueryAttention's largest value, and of the caches after the new keys and values are written; exits 1 past
 * float16's bound (2e-2).
 *
 *   node native/probes/decode-attention-check.ts
 */
import { cudaOpsLibraryPath } from "../../src/core/native/CudaOps.ts"
import { NativeOrt } from "../../src/core/native/NativeOrt.ts"
import { encodeModel } from "../../src/onnx/OnnxWriter.ts"
import * as fs from "node:fs"

let seed = 7
const random = () => {
  seed = (seed * 1103515245 + 12345) >>> 0
  return seed / 2 ** 32
}
const halves = (n: number, f: (i: number) => number): Uint16Array => {
  const a = new Float16Array(n)
  for (let i = 0; i < n; i++) a[i] = f(i)
  return new Uint16Array(a.buffer)
}
const floats = (u: Uint16Array): Float16Array => new Float16Array(u.buffer, u.byteOffset, u.length)

interface Case { readonly B: number; readonly S: number; readonly last: ReadonlyArray<number>; readonly first: boolean }
let worst = 0
const check = (nh: number, kvh: number, hd: number, slot: number, cases: ReadonlyArray<Case>) => {
  const file = `/tmp/decode-attention-check-${nh}-${kvh}-${hd}.onnx`
  const attention = (op: "GroupQueryAttention" | "DecodeAttention", tag: string) => ({
    op, domain: op === "DecodeAttention" ? "chorus" : "com.microsoft", name: tag,
    inputs: ["qkv", "", "", `pk_${tag}`, `pv_${tag}`, "seqlens_k", "total", "cos", "sin"], outputs: [`o_${tag}`, `prk_${tag}`, `prv_${tag}`],
    attributes: { num_heads: nh, kv_num_heads: kvh, do_rotary: 1, rotary_interleaved: 0, scale: { float: 1 / Math.sqrt(hd) } }
  })
  fs.writeFileSync(file, encodeModel({
    name: "decode-attention-check", opsets: { "": 17, "com.microsoft": 1, chorus: 1 }, external: [], inline: [],
    nodes: [attention("GroupQueryAttention", "gqa"), attention("DecodeAttention", "chorus")],
    inputs: [
      { name: "qkv", type: "float16", dims: ["B", "S", (nh + 2 * kvh) * hd] },
      ...["gqa", "chorus"].flatMap((t) => [
        { name: `pk_${t}`, type: "float16" as const, dims: ["B", kvh, "P", hd] },
        { name: `pv_${t}`, type: "float16" as const, dims: ["B", kvh, "P", hd] }
      ]),
      { name: "seqlens_k", type: "int32", dims: ["B"] }, { name: "total", type: "int32", dims: [] },
      { name: "cos", type: "float16", dims: [slot, hd / 2] }, { name: "sin", type: "float16", dims: [slot, hd / 2] }
    ],
    outputs: ["gqa", "chorus"].flatMap((t) => [
      { name: `o_${t}`, type: "float16" as const, dims: ["B", "S", nh * hd] },
      { name: `prk_${t}`, type: "float16" as const, dims: ["B", kvh, "T", hd] },
      { name: `prv_${t}`, type: "float16" as const, dims: ["B", kvh, "T", hd] }
    ])
  }))
  const s = NativeOrt.load().createSession(file, { provider: "cuda", cuda: { arena_extend_strategy: "kSameAsRequested" }, customOpsLibrary: cudaOpsLibraryPath() })

  // Llama 3's rotary table (theta 500,000) for positions 0 .. slot - 1.
  const cos = s.allocate("float16", [slot, hd / 2])
  const sin = s.allocate("float16", [slot, hd / 2])
  const angle = (i: number) => Math.floor(i / (hd / 2)) * 500_000 ** (-(2 * (i % (hd / 2))) / hd)
  cos.upload(halves(slot * hd / 2, (i) => Math.cos(angle(i))))
  sin.upload(halves(slot * hd / 2, (i) => Math.sin(angle(i))))

  for (const { B, S, last, first } of cases) {
    const cacheSize = B * kvh * slot * hd
    const cache = halves(cacheSize, () => random() * 2 - 1)
    const values = halves(cacheSize, () => random() * 2 - 1)
    const pk = { gqa: s.allocate("float16", [B, kvh, slot, hd]), chorus: s.allocate("float16", [B, kvh, slot, hd]) }
    const pv = { gqa: s.allocate("float16", [B, kvh, slot, hd]), chorus: s.allocate("float16", [B, kvh, slot, hd]) }
    for (const t of ["gqa", "chorus"] as const) {
      pk[t].upload(cache)
      pv[t].upload(values)
    }
    const qkv = s.allocate("float16", [B, S, (nh + 2 * kvh) * hd])
    // Queries and new keys in [-3, 3]: scores of a few units, so the softmax has peaks (not a near-uniform average).
    qkv.upload(halves(B * S * (nh + 2 * kvh) * hd, () => random() * 6 - 3))
    const seqlens = s.allocate("int32", [B])
    seqlens.upload(Int32Array.from(last))
    const out = { gqa: s.allocate("float16", [B, S, nh * hd]), chorus: s.allocate("float16", [B, S, nh * hd]) }
    const total = first ? S : Math.max(...last) + 1
    s.run(
      { qkv, seqlens_k: seqlens, total: { data: Int32Array.of(total), dims: [] }, cos, sin, pk_gqa: pk.gqa, pv_gqa: pv.gqa, pk_chorus: pk.chorus, pv_chorus: pv.chorus },
      { o_gqa: out.gqa, o_chorus: out.chorus, prk_gqa: pk.gqa, prv_gqa: pv.gqa, prk_chorus: pk.chorus, prv_chorus: pv.chorus }
    )
    // Only the tokens that are not padding (a first prompt's row b has last[b] + 1 of its S).
    const rowWidth = nh * hd
    const kept = (i: number) => {
      const token = Math.floor(i / rowWidth), b = Math.floor(token / S), t = token % S
      return !first || t <= last[b]!
    }
    const relative = (a: Float16Array, b: Float16Array, keep: (i: number) => boolean = () => true) => {
      let diff = 0, scale = 0
      for (let i = 0; i < a.length; i++) {
        if (!keep(i)) continue
        diff = Math.max(diff, Math.abs(a[i]! - b[i]!))
        scale = Math.max(scale, Math.abs(a[i]!))
      }
      return Number.isFinite(diff) ? diff / Math.max(scale, 1e-6) : Number.POSITIVE_INFINITY
    }
    const o = relative(floats(out.gqa.download()), floats(out.chorus.download()), kept)
    // Cache positions up to each row's last (GroupQueryAttention may also write a first prompt's padding past it).
    const cached = (i: number) => Math.floor(i / hd) % slot <= last[Math.floor(i / (kvh * slot * hd))]!
    const k = relative(floats(pk.gqa.download()), floats(pk.chorus.download()), cached)
    const v = relative(floats(pv.gqa.download()), floats(pv.chorus.download()), cached)
    worst = Math.max(worst, o, k, v)
    console.log(`B=${String(B).padStart(2)} S=${String(S).padStart(3)} last=${last.length > 2 ? `${last[0]}..` : last.join(",")}${first ? " (first prompt)" : ""}: output ${o.toExponential(2)}, keys ${k.toExponential(2)}, values ${v.toExponential(2)} (relative to GQA's largest)`)
    for (const t of [pk.gqa, pk.chorus, pv.gqa, pv.chorus, qkv, seqlens, out.gqa, out.chorus]) t.release()
  }
  for (const t of [cos, sin]) t.release()
  s.release()
}

// Decode steps (one token a row; rows of different lengths), then prompt chunks: a later chunk of one row (S tokens
// ending at its last position) and a first prompt of two rows padded to S (positions from 0; padding not compared).
const decode = (Bs: ReadonlyArray<number>, pasts: ReadonlyArray<number>): Array<Case> =>
  Bs.flatMap((B) => pasts.map((past) => ({ B, S: 1, last: Array.from({ length: B }, (_, r) => Math.max(0, past - r)), first: false })))
console.log("Llama 3 8B: 32 heads, 8 KV heads, head dim 128")
check(32, 8, 128, 4096, [
  ...decode([1, 4, 16], [0, 31, 1023, 4000]),
  { B: 1, S: 64, last: [1063], first: false },
  { B: 1, S: 256, last: [255], first: true },
  { B: 2, S: 64, last: [63, 39], first: true }
])
console.log("70B's group: 16 heads, 2 KV heads, head dim 128")
check(16, 2, 128, 4096, [...decode([1, 8], [0, 100, 4000]), { B: 2, S: 64, last: [63, 39], first: true }])
for (const [nh, kvh] of [[4, 2], [6, 2]] as const) {
  console.log(`the fixtures': ${nh} heads, ${kvh} KV heads, head dim 16`)
  check(nh, kvh, 16, 512, [...decode([1, 4], [0, 5, 40, 300]), { B: 1, S: 20, last: [60], first: false }, { B: 2, S: 30, last: [29, 11], first: true }])
}
console.log(worst <= 2e-2 ? `chorus.DecodeAttention equals GroupQueryAttention within float16 (worst ${worst.toExponential(2)})` : `MISMATCH: worst ${worst.toExponential(2)} > 2e-2`)
process.exit(worst <= 2e-2 ? 0 : 1)
