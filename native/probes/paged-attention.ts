/**
 * Probe: ONNX Runtime 1.29's contrib op `com.microsoft.PagedAttention` (CUDA EP, float16) through the native
 * IO-binding addon, in Llama 3 8B's attention shape (32 heads, 8 KV heads, head dim 128). Run on a GPU host:
 *
 *   node native/probes/paged-attention.ts [--block-size 16] [--device 0] [--cases a,b,c,d] [--batch 64] [--past 1000]
 *   node native/probes/paged-attention.ts --cpu-build-only     # no GPU: build the models, run the JS references
 *
 * Cache layout (the op's contract): key_cache / value_cache [num_blocks, block_size, kv_heads, head_size], bound as
 * both input and output (the op requires key_cache_out to be the very buffer of key_cache); block_table
 * [batch, max_blocks] int32; cumulative_sequence_length [batch + 1] int32 over the packed query tokens; past_seqlens
 * [batch] int32; optional attention_metadata [2] int32 in CPU memory = [max_query_len_bound, max_kv_len_bound].
 *
 * Cases (one JSON line each: {case, ok, maxAbsErr, ms, note, ...}; exit 0 unless nothing could run):
 *   a          3 sequences mixed: prefill 37 (no past), chunk of 20 after 33 cached, decode 1 after 70 cached;
 *              shuffled block ids. a-meta: the same with attention_metadata. a-rotary: do_rotary=1 with cos/sin caches.
 *   b          decode of `batch` sequences after `past` cached tokens each.
 *   c / c-nometa  CUDA graph (enable_cuda_graph=1, gpu_graph_id 1): 3 runs of a (b)-shaped step, then two replays with
 *              the uploaded values changed (past lengths +1, new tokens); each checked against the reference.
 *   d          ms per run and K+V read bandwidth of (b), uncaptured and captured, and of GroupQueryAttention with a
 *              share-buffer cache of the same size.
 * Errors are JSON (`ok: false` with the message). ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 is set for the correctness
 * sessions, so ORT prints which attention backend each PagedAttention node chose.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { type DeviceTensor, type HostTensor, NativeOrt, type NativeSession } from "../../src/core/native/NativeOrt.ts"
import { encodeModel, type ValueSpec } from "../../src/onnx/OnnxWriter.ts"

const { values: flags } = parseArgs({
  options: {
    "cpu-build-only": { type: "boolean", default: false },
    "block-size": { type: "string", default: "16" },
    device: { type: "string", default: "0" },
    cases: { type: "string", default: "a,a-meta,a-rotary,b,c,c-nometa,d" },
    batch: { type: "string", default: "64" },
    past: { type: "string", default: "1000" },
    iters: { type: "string", default: "50" }
  }
})
const cpuOnly = flags["cpu-build-only"] === true
const BS = Number(flags["block-size"])
const deviceId = Number(flags.device)
const BATCH = Number(flags.batch)
const PAST = Number(flags.past)
const ITERS = Number(flags.iters)
const wanted = new Set((flags.cases ?? "").split(",").map((s) => s.trim()).filter((s) => s !== ""))

const NH = 32, KVH = 8, HD = 128, GROUP = NH / KVH
const QW = NH * HD, KVW = KVH * HD
const MAX_POS = 4096
const SCALE = 1 / Math.sqrt(HD)

// ---------------------------------------------------------------- output

interface CaseResult {
  readonly case: string
  readonly ok: boolean | null
  readonly maxAbsErr: number | null
  readonly ms: number | null
  readonly note: string
  readonly [extra: string]: unknown
}
const report = (r: CaseResult): void => void fs.writeSync(1, JSON.stringify(r) + "\n")
/** A "# " line on stdout, written synchronously so that it interleaves with ORT's own prints. */
const marker = (text: string): void => void fs.writeSync(1, `# ${text}\n`)
const message = (e: unknown): string => (e instanceof Error ? e.message : String(e)).split("\n").slice(0, 3).join(" | ")

// ---------------------------------------------------------------- numbers

/** mulberry32: a seeded PRNG, so a run is reproducible. */
const rng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
type Rng = ReturnType<typeof rng>

/** float16 bits of `n` uniform values in [-amp, amp). */
const randomHalf = (n: number, r: Rng, amp = 1): Uint16Array => {
  const h = new Float16Array(n)
  for (let i = 0; i < n; i++) h[i] = (r() * 2 - 1) * amp
  return new Uint16Array(h.buffer)
}
const halfView = (u: Uint16Array): Float16Array => new Float16Array(u.buffer, u.byteOffset, u.length)
const toHalf = (f: Float32Array): Uint16Array => new Uint16Array(Float16Array.from(f).buffer)

const shuffle = (xs: number[], r: Rng): number[] => {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1))
    ;[xs[i], xs[j]] = [xs[j]!, xs[i]!]
  }
  return xs
}

/** Llama-style rotary tables [MAX_POS, HD/2] (float16), non-interleaved halves. */
const ropeTables = (): { cos: Uint16Array; sin: Uint16Array } => {
  const half = HD / 2
  const cos = new Float16Array(MAX_POS * half)
  const sin = new Float16Array(MAX_POS * half)
  for (let p = 0; p < MAX_POS; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * Math.pow(500000, (-2 * i) / HD)
      cos[p * half + i] = Math.cos(a)
      sin[p * half + i] = Math.sin(a)
    }
  }
  return { cos: new Uint16Array(cos.buffer), sin: new Uint16Array(sin.buffer) }
}
type Rope = ReturnType<typeof ropeTables>

// ---------------------------------------------------------------- a paged batch and its reference

/** The block pool: `numBlocks` blocks of BS tokens; block 0 is never handed out (padding entries point at it). */
interface Pool {
  readonly numBlocks: number
  readonly keys: Uint16Array // [numBlocks, BS, KVH, HD] float16: what the device cache must hold
  readonly values: Uint16Array
}

/** One step: per sequence `qlen` new tokens after `past` cached ones, with their block table. */
interface Step {
  readonly past: Int32Array // [B]
  readonly qlen: Int32Array // [B]
  readonly maxBlocks: number
  readonly table: Int32Array // [B, maxBlocks]
  readonly q: Uint16Array // [T, QW]
  readonly k: Uint16Array // [T, KVW]
  readonly v: Uint16Array // [T, KVW]
}
const tokens = (s: Step) => s.qlen.reduce((a, b) => a + b, 0)
const cumulative = (s: Step): Int32Array => {
  const cu = new Int32Array(s.qlen.length + 1)
  for (let b = 0; b < s.qlen.length; b++) cu[b + 1] = cu[b]! + s.qlen[b]!
  return cu
}
const slotOf = (s: Step, b: number, pos: number): number => {
  const blk = s.table[b * s.maxBlocks + Math.floor(pos / BS)]!
  return blk * BS + (pos % BS)
}

/** A pool of `numBlocks` and a block table giving each sequence `blocksPerSeq` shuffled distinct blocks (0 = pad). */
const makeTable = (r: Rng, need: ReadonlyArray<number>, maxBlocks: number, numBlocks: number): Int32Array => {
  const free = shuffle(Array.from({ length: numBlocks - 1 }, (_, i) => i + 1), r)
  const table = new Int32Array(need.length * maxBlocks)
  let next = 0
  need.forEach((n, b) => {
    for (let i = 0; i < n; i++) table[b * maxBlocks + i] = free[next++]!
  })
  return table
}

/** Random cached K/V for positions [0, past) of every sequence, written into the pool through the table. */
const fillPast = (pool: Pool, s: Step, r: Rng): void => {
  for (let b = 0; b < s.past.length; b++) {
    for (let pos = 0; pos < s.past[b]!; pos++) {
      const o = slotOf(s, b, pos) * KVW
      pool.keys.set(randomHalf(KVW, r), o)
      pool.values.set(randomHalf(KVW, r), o)
    }
  }
}

const newStep = (r: Rng, past: ReadonlyArray<number>, qlen: ReadonlyArray<number>, maxBlocks: number, table: Int32Array): Step => {
  const T = qlen.reduce((a, b) => a + b, 0)
  return {
    past: Int32Array.from(past), qlen: Int32Array.from(qlen), maxBlocks, table,
    q: randomHalf(T * QW, r, 2), k: randomHalf(T * KVW, r), v: randomHalf(T * KVW, r)
  }
}

/** Rotates `heads` heads of width HD at `x[off..]` for position `pos` (non-interleaved), rounding to float16. */
const rotate = (x: Float16Array, off: number, heads: number, pos: number, rope: Rope): Float32Array => {
  const half = HD / 2
  const cos = halfView(rope.cos), sin = halfView(rope.sin)
  const out = new Float32Array(heads * HD)
  for (let h = 0; h < heads; h++) {
    const base = off + h * HD
    for (let i = 0; i < half; i++) {
      const c = cos[pos * half + i]!, sn = sin[pos * half + i]!
      const a = x[base + i]!, bb = x[base + i + half]!
      out[h * HD + i] = Math.f16round(a * c - bb * sn)
      out[h * HD + i + half] = Math.f16round(bb * c + a * sn)
    }
  }
  return out
}

/**
 * The float32 reference of one step: writes the new (rotated) K/V into `pool` (so the pool is then what the device
 * cache must hold) and returns causal GQA attention [T, QW] over each sequence's cached plus new tokens.
 */
const reference = (pool: Pool, s: Step, rope: Rope | undefined): Float32Array => {
  const cu = cumulative(s)
  const T = cu[s.qlen.length]!
  const qh = halfView(s.q), kh = halfView(s.k), vh = halfView(s.v)
  const pk = halfView(pool.keys), pv = halfView(pool.values)
  const q = new Float32Array(T * QW)
  for (let t = 0; t < T; t++) {
    let b = 0
    while (t >= cu[b + 1]!) b++
    const pos = s.past[b]! + t - cu[b]!
    const slot = slotOf(s, b, pos) * KVW
    if (rope === undefined) {
      for (let i = 0; i < QW; i++) q[t * QW + i] = qh[t * QW + i]!
      for (let i = 0; i < KVW; i++) pk[slot + i] = kh[t * KVW + i]!
    } else {
      q.set(rotate(qh, t * QW, NH, pos, rope), t * QW)
      pk.set(rotate(kh, t * KVW, KVH, pos, rope), slot)
    }
    for (let i = 0; i < KVW; i++) pv[slot + i] = vh[t * KVW + i]!
  }
  const out = new Float32Array(T * QW)
  for (let b = 0; b < s.qlen.length; b++) {
    const len = s.past[b]! + s.qlen[b]!
    if (s.qlen[b] === 0) continue
    for (let g = 0; g < KVH; g++) {
      // this sequence's keys and values of KV head g, gathered through the block table
      const K = new Float32Array(len * HD), V = new Float32Array(len * HD)
      for (let j = 0; j < len; j++) {
        const o = slotOf(s, b, j) * KVW + g * HD
        for (let d = 0; d < HD; d++) {
          K[j * HD + d] = pk[o + d]!
          V[j * HD + d] = pv[o + d]!
        }
      }
      const logits = new Float32Array(len)
      for (let t = cu[b]!; t < cu[b + 1]!; t++) {
        const visible = s.past[b]! + (t - cu[b]!) + 1 // causal: positions [0, pos]
        for (let hh = 0; hh < GROUP; hh++) {
          const h = g * GROUP + hh
          const qo = t * QW + h * HD
          let max = -Infinity
          for (let j = 0; j < visible; j++) {
            let dot = 0
            for (let d = 0; d < HD; d++) dot += q[qo + d]! * K[j * HD + d]!
            logits[j] = dot * SCALE
            if (logits[j]! > max) max = logits[j]!
          }
          let sum = 0
          for (let j = 0; j < visible; j++) {
            logits[j] = Math.exp(logits[j]! - max)
            sum += logits[j]!
          }
          for (let j = 0; j < visible; j++) {
            const p = logits[j]! / sum
            for (let d = 0; d < HD; d++) out[qo + d] = out[qo + d]! + p * V[j * HD + d]!
          }
        }
      }
    }
  }
  return out
}

const maxAbsDiff = (got: Uint16Array, want: Float32Array | Uint16Array): number => {
  const g = halfView(got)
  const w = want instanceof Float32Array ? want : halfView(want)
  let m = 0
  for (let i = 0; i < g.length; i++) {
    const d = Math.abs(g[i]! - w[i]!)
    if (d > m) m = d
    else if (Number.isNaN(d)) return Infinity
  }
  return m
}

// ---------------------------------------------------------------- models

interface ModelOptions {
  readonly rotary: boolean
  readonly metadata: boolean
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-paged-"))

/** A one-node PagedAttention model; returns its path. Optional inputs left out are "" (trailing ones dropped). */
const pagedModel = (o: ModelOptions): string => {
  const slots: string[] = new Array<string>(17).fill("")
  ;["query", "key", "value", "key_cache", "value_cache", "cumulative_sequence_length", "past_seqlens", "block_table"].forEach((n, i) => (slots[i] = n))
  if (o.rotary) {
    slots[8] = "cos_cache"
    slots[9] = "sin_cache"
  }
  if (o.metadata) slots[16] = "attention_metadata"
  while (slots.length > 0 && slots[slots.length - 1] === "") slots.pop()
  const cache: ReadonlyArray<number | string> = ["NB", BS, KVH, HD]
  const inputs: ValueSpec[] = [
    { name: "query", type: "float16", dims: ["T", QW] },
    { name: "key", type: "float16", dims: ["T", KVW] },
    { name: "value", type: "float16", dims: ["T", KVW] },
    { name: "key_cache", type: "float16", dims: cache },
    { name: "value_cache", type: "float16", dims: cache },
    { name: "cumulative_sequence_length", type: "int32", dims: ["B1"] },
    { name: "past_seqlens", type: "int32", dims: ["B"] },
    { name: "block_table", type: "int32", dims: ["B", "MB"] }
  ]
  if (o.rotary) {
    inputs.push({ name: "cos_cache", type: "float16", dims: [MAX_POS, HD / 2] }, { name: "sin_cache", type: "float16", dims: [MAX_POS, HD / 2] })
  }
  if (o.metadata) inputs.push({ name: "attention_metadata", type: "int32", dims: [2] })
  const file = path.join(tmp, `paged-bs${BS}${o.rotary ? "-rotary" : ""}${o.metadata ? "-meta" : ""}.onnx`)
  fs.writeFileSync(file, encodeModel({
    name: "paged_attention_probe", opsets: { "": 17, "com.microsoft": 1 }, external: [], inline: [],
    nodes: [{
      op: "PagedAttention", domain: "com.microsoft", name: "paged", inputs: slots,
      outputs: ["output", "key_cache_out", "value_cache_out"],
      attributes: { num_heads: NH, kv_num_heads: KVH, scale: { float: SCALE }, ...(o.rotary ? { do_rotary: 1, rotary_interleaved: 0 } : {}) }
    }],
    inputs,
    outputs: [
      { name: "output", type: "float16", dims: ["T", QW] },
      { name: "key_cache_out", type: "float16", dims: cache },
      { name: "value_cache_out", type: "float16", dims: cache }
    ]
  }))
  return file
}

/** GroupQueryAttention with a share-buffer cache [B, KVH, S, HD] (as the device shard uses it), no rotary. */
const gqaModel = (): string => {
  const file = path.join(tmp, "gqa.onnx")
  fs.writeFileSync(file, encodeModel({
    name: "gqa", opsets: { "": 17, "com.microsoft": 1 }, external: [], inline: [],
    nodes: [{
      op: "GroupQueryAttention", domain: "com.microsoft", inputs: ["q", "k", "v", "pk", "pv", "seqlens_k", "total"],
      outputs: ["o", "prk", "prv"], attributes: { num_heads: NH, kv_num_heads: KVH, scale: { float: SCALE } }
    }],
    inputs: [
      { name: "q", type: "float16", dims: ["B", 1, QW] }, { name: "k", type: "float16", dims: ["B", 1, KVW] },
      { name: "v", type: "float16", dims: ["B", 1, KVW] },
      { name: "pk", type: "float16", dims: ["B", KVH, "S", HD] }, { name: "pv", type: "float16", dims: ["B", KVH, "S", HD] },
      { name: "seqlens_k", type: "int32", dims: ["B"] }, { name: "total", type: "int32", dims: [] }
    ],
    outputs: [{ name: "o", type: "float16", dims: ["B", 1, QW] }, { name: "prk", type: "float16", dims: ["B", KVH, "S", HD] }, { name: "prv", type: "float16", dims: ["B", KVH, "S", HD] }]
  }))
  return file
}

// ---------------------------------------------------------------- the cases' data

/** Case (a): prefill 37 / chunk 20 after 33 / decode 1 after 70, shuffled blocks, 8 table columns (padding = 0). */
const caseA = (seed: number) => {
  const r = rng(seed)
  const past = [0, 33, 70], qlen = [37, 20, 1]
  const maxBlocks = Math.max(8, Math.ceil(71 / BS))
  const need = past.map((p, b) => Math.ceil((p + qlen[b]!) / BS))
  const numBlocks = need.reduce((a, b) => a + b, 0) + 9
  const pool: Pool = { numBlocks, keys: randomHalf(numBlocks * BS * KVW, r), values: randomHalf(numBlocks * BS * KVW, r) }
  const step = newStep(r, past, qlen, maxBlocks, makeTable(r, need, maxBlocks, numBlocks))
  fillPast(pool, step, r)
  return { pool, step, metadata: Int32Array.of(37, maxBlocks * BS) }
}

/** Cases (b)-(d): `batch` decodes; sequence i has `past - (i % 17)` cached tokens (varied, some cross a block). */
const caseDecode = (seed: number, uniform: boolean) => {
  const r = rng(seed)
  const past = Array.from({ length: BATCH }, (_, i) => (uniform ? PAST : PAST - (i % 17)))
  const maxBlocks = Math.ceil((PAST + 8) / BS)
  const numBlocks = BATCH * maxBlocks + 1
  const pool: Pool = { numBlocks, keys: new Uint16Array(numBlocks * BS * KVW), values: new Uint16Array(numBlocks * BS * KVW) }
  const table = makeTable(r, past.map(() => maxBlocks), maxBlocks, numBlocks)
  const step = newStep(r, past, past.map(() => 1), maxBlocks, table)
  fillPast(pool, step, r)
  return { pool, step, r, metadata: Int32Array.of(1, maxBlocks * BS) }
}

// ---------------------------------------------------------------- running on the device

interface DeviceBatch {
  readonly q: DeviceTensor<"float16">
  readonly k: DeviceTensor<"float16">
  readonly v: DeviceTensor<"float16">
  readonly cu: DeviceTensor<"int32">
  readonly past: DeviceTensor<"int32">
  readonly table: DeviceTensor<"int32">
  readonly out: DeviceTensor<"float16">
}
const allocBatch = (s: NativeSession, step: Step): DeviceBatch => {
  const T = tokens(step), B = step.past.length
  return {
    q: s.allocate("float16", [T, QW]), k: s.allocate("float16", [T, KVW]), v: s.allocate("float16", [T, KVW]),
    cu: s.allocate("int32", [B + 1]), past: s.allocate("int32", [B]), table: s.allocate("int32", [B, step.maxBlocks]),
    out: s.allocate("float16", [T, QW])
  }
}
const uploadBatch = (d: DeviceBatch, step: Step): void => {
  d.q.upload(step.q)
  d.k.upload(step.k)
  d.v.upload(step.v)
  d.cu.upload(cumulative(step))
  d.past.upload(step.past)
  d.table.upload(step.table)
}
interface DeviceCache {
  readonly keys: DeviceTensor<"float16">
  readonly values: DeviceTensor<"float16">
}
const allocCache = (s: NativeSession, pool: Pool): DeviceCache => {
  const dims = [pool.numBlocks, BS, KVH, HD]
  const c = { keys: s.allocate("float16", dims), values: s.allocate("float16", dims) }
  c.keys.upload(pool.keys)
  c.values.upload(pool.values)
  return c
}
const feedsOf = (d: DeviceBatch, c: DeviceCache, extra: Readonly<Record<string, HostTensor | DeviceTensor>>) => ({
  feeds: {
    query: d.q, key: d.k, value: d.v, key_cache: c.keys, value_cache: c.values,
    cumulative_sequence_length: d.cu, past_seqlens: d.past, block_table: d.table, ...extra
  },
  // the cache outputs are the input buffers themselves: the op updates them in place (and insists on it)
  outputs: { output: d.out, key_cache_out: c.keys, value_cache_out: c.values }
})

const cudaOptions = (graph: boolean): Readonly<Record<string, string>> => ({
  arena_extend_strategy: "kSameAsRequested",
  ...(graph ? { enable_cuda_graph: "1" } : {})
})

const OUT_TOL = 1e-2

// ---------------------------------------------------------------- cpu-build-only

const cpuBuildOnly = async (): Promise<void> => {
  const files = [pagedModel({ rotary: false, metadata: false }), pagedModel({ rotary: false, metadata: true }), pagedModel({ rotary: true, metadata: false })]
  // ONNX Runtime (CPU build, the same 1.29 core) loads each model: schema and type inference must pass, and the only
  // complaint allowed is the missing CPU kernel (PagedAttention has CUDA and WebGPU kernels only).
  const { ort } = await import("../../src/onnx/OrtFloat16Fix.ts")
  for (const f of files) {
    let note: string
    let ok: boolean
    try {
      await ort.InferenceSession.create(f, { executionProviders: ["cpu"] })
      ok = true
      note = "session created on CPU (unexpected: no CPU kernel is known)"
    } catch (e) {
      note = message(e)
      // A node the schema rejects fails at "Load model ... failed"; ours loads, passes type inference, and fails later
      // when the CPU EP (which has no PagedAttention kernel) tries to run it in float32 behind inserted casts.
      ok = !note.includes("Load model") && /InsertedPrecisionFreeCast|implementation/.test(note)
    }
    report({ case: `schema:${path.basename(f)}`, ok, maxAbsErr: null, ms: null, note })
  }
  // The references: the paged reference against a dense one built from the same logical sequences.
  for (const rotary of [false, true]) {
    const { pool, step } = caseA(1)
    const denseRef = denseReference(pool, step, rotary ? ropeTables() : undefined)
    const t0 = performance.now()
    const out = reference(pool, step, rotary ? ropeTables() : undefined)
    const ms = performance.now() - t0
    let err = 0
    for (let i = 0; i < out.length; i++) err = Math.max(err, Math.abs(out[i]! - denseRef[i]!))
    report({ case: `ref:a${rotary ? "-rotary" : ""}`, ok: err < 1e-4, maxAbsErr: err, ms, note: `paged reference vs dense reference, ${tokens(step)} tokens` })
  }
  const { pool, step } = caseDecode(2, true)
  const t0 = performance.now()
  const out = reference(pool, step, undefined)
  report({
    case: "ref:b", ok: out.every(Number.isFinite), maxAbsErr: null, ms: performance.now() - t0,
    note: `reference of ${BATCH} decodes after ${PAST} tokens built (block_size ${BS}, ${pool.numBlocks} blocks); models in ${tmp}`
  })
  // (c)'s chain: a decode, then the next step (past +1) must see the first step's token through the block table,
  // checked against the dense reference that reads only the pool as the first step left it.
  const c = caseDecode(3, false)
  reference(c.pool, c.step, undefined)
  const next = newStep(c.r, Array.from(c.step.past, (p) => p + 1), Array.from(c.step.qlen), c.step.maxBlocks, c.step.table)
  const dense = denseReference(c.pool, next, undefined)
  const paged = reference(c.pool, next, undefined)
  let err = 0
  for (let i = 0; i < paged.length; i++) err = Math.max(err, Math.abs(paged[i]! - dense[i]!))
  report({ case: "ref:c", ok: err < 1e-4, maxAbsErr: err, ms: null, note: "second decode step: paged vs dense reference" })
}

/** Cross-check of `reference`: per sequence, cached rows via the table plus new rows straight from the step's inputs, then plain attention. */
const denseReference = (pool0: Pool, s: Step, rope: Rope | undefined): Float32Array => {
  const cu = cumulative(s)
  const pk = halfView(pool0.keys), pv = halfView(pool0.values)
  const qh = halfView(s.q), kh = halfView(s.k), vh = halfView(s.v)
  const out = new Float32Array(cu[s.qlen.length]! * QW)
  for (let b = 0; b < s.qlen.length; b++) {
    const len = s.past[b]! + s.qlen[b]!
    const K: Float32Array[] = [], V: Float32Array[] = []
    for (let j = 0; j < len; j++) {
      if (j < s.past[b]!) {
        const o = slotOf(s, b, j) * KVW
        K.push(Float32Array.from(pk.subarray(o, o + KVW)))
        V.push(Float32Array.from(pv.subarray(o, o + KVW)))
      } else {
        const t = cu[b]! + j - s.past[b]!
        K.push(rope === undefined ? Float32Array.from(kh.subarray(t * KVW, (t + 1) * KVW)) : rotate(kh, t * KVW, KVH, j, rope))
        V.push(Float32Array.from(vh.subarray(t * KVW, (t + 1) * KVW)))
      }
    }
    for (let t = cu[b]!; t < cu[b + 1]!; t++) {
      const pos = s.past[b]! + t - cu[b]!
      const q = rope === undefined ? Float32Array.from(qh.subarray(t * QW, (t + 1) * QW)) : rotate(qh, t * QW, NH, pos, rope)
      for (let h = 0; h < NH; h++) {
        const g = Math.floor(h / GROUP)
        const w = Array.from({ length: pos + 1 }, (_, j) => {
          let dot = 0
          for (let d = 0; d < HD; d++) dot += q[h * HD + d]! * K[j]![g * HD + d]!
          return dot * SCALE
        })
        const m = Math.max(...w)
        const e = w.map((x) => Math.exp(x - m))
        const z = e.reduce((a, x) => a + x, 0)
        for (let d = 0; d < HD; d++) {
          let acc = 0
          for (let j = 0; j <= pos; j++) acc += (e[j]! / z) * V[j]![g * HD + d]!
          out[t * QW + h * HD + d] = acc
        }
      }
    }
  }
  return out
}

// ---------------------------------------------------------------- GPU cases

/** Runs one step uncaptured and checks output and the whole cache. */
const checkStep = (name: string, s: NativeSession, data: { pool: Pool; step: Step; metadata: Int32Array }, o: ModelOptions, rope: Rope | undefined): void => {
  try {
    const cache = allocCache(s, data.pool)
    const d = allocBatch(s, data.step)
    uploadBatch(d, data.step)
    const extra: Record<string, HostTensor | DeviceTensor> = {}
    if (rope !== undefined) {
      const cos = s.allocate("float16", [MAX_POS, HD / 2]), sin = s.allocate("float16", [MAX_POS, HD / 2])
      cos.upload(rope.cos)
      sin.upload(rope.sin)
      extra.cos_cache = cos
      extra.sin_cache = sin
    }
    if (o.metadata) extra.attention_metadata = { data: data.metadata, dims: [2] }
    const { feeds, outputs } = feedsOf(d, cache, extra)
    const t0 = performance.now()
    s.run(feeds, outputs)
    const ms = performance.now() - t0
    const want = reference(data.pool, data.step, rope)
    const err = maxAbsDiff(d.out.download(), want)
    const kErr = maxAbsDiff(cache.keys.download(), data.pool.keys)
    const vErr = maxAbsDiff(cache.values.download(), data.pool.values)
    const cacheTol = rope === undefined ? 0 : 2e-2
    report({
      case: name, ok: err < OUT_TOL && kErr <= cacheTol && vErr <= cacheTol, maxAbsErr: err, ms,
      note: `tokens ${tokens(data.step)}, batch ${data.step.past.length}, block_size ${BS}; cache max diff K ${kErr} V ${vErr} (tol ${cacheTol}; includes the new slots and every untouched entry)`,
      cacheErrK: kErr, cacheErrV: vErr
    })
  } catch (e) {
    report({ case: name, ok: false, maxAbsErr: null, ms: null, note: message(e) })
  }
}

/**
 * Case (c): CUDA graph. Runs 1-4 use the same uploaded values (ORT runs a graph id uncaptured a few times before it
 * captures); runs 5-7 see past lengths +1..+3 and new tokens in the same device buffers. The session prints ORT's
 * attention debug line on every executed (not replayed) run; the "# " markers on stdout show where replays began.
 */
const checkGraph = (name: string, s: NativeSession, metadata: boolean): { ms: number | null; bytes: number } => {
  const { pool, step, r, metadata: meta } = caseDecode(3, false)
  const cache = allocCache(s, pool)
  const d = allocBatch(s, step)
  const extra: Record<string, HostTensor | DeviceTensor> = metadata ? { attention_metadata: { data: meta, dims: [2] } } : {}
  const { feeds, outputs } = feedsOf(d, cache, extra)
  let cur = step
  const errs: number[] = []
  let stage = "upload"
  try {
    uploadBatch(d, cur)
    const want0 = reference(pool, cur, undefined)
    for (let i = 0; i < 4; i++) {
      stage = `run ${i + 1}`
      marker(`${name}: run ${i + 1} (same values)`)
      s.run(feeds, outputs, { cudaGraphId: 1 })
      errs.push(maxAbsDiff(d.out.download(), want0))
    }
    for (let i = 0; i < 3; i++) {
      stage = `replay with past +${i + 1}`
      marker(`${name}: run ${i + 5} (past +${i + 1}, new tokens)`)
      cur = newStep(r, Array.from(cur.past, (p) => p + 1), Array.from(cur.qlen), cur.maxBlocks, cur.table)
      uploadBatch(d, cur)
      const want = reference(pool, cur, undefined)
      s.run(feeds, outputs, { cudaGraphId: 1 })
      errs.push(maxAbsDiff(d.out.download(), want))
    }
    stage = "cache check"
    const kErr = maxAbsDiff(cache.keys.download(), pool.keys)
    const vErr = maxAbsDiff(cache.values.download(), pool.values)
    stage = "timing replays"
    marker(`${name}: ${ITERS} timed replays`)
    const past = Array.from(cur.past)
    const t0 = performance.now()
    for (let i = 0; i < ITERS; i++) s.run(feeds, outputs, { cudaGraphId: 1 })
    const ms = (performance.now() - t0) / ITERS
    const bytes = kvBytes(past.map((p) => p + 1))
    const maxErr = Math.max(...errs)
    report({
      case: name, ok: maxErr < OUT_TOL && kErr === 0 && vErr === 0, maxAbsErr: maxErr, ms,
      note: `${metadata ? "with" : "without"} attention_metadata; errors per run [${errs.map((e) => e.toExponential(2)).join(", ")}] (runs 5-7 replay with past +1..+3 and new tokens); cache diff K ${kErr} V ${vErr}; replay ${gbps(bytes, ms)}`
    })
    return { ms, bytes }
  } catch (e) {
    report({ case: name, ok: false, maxAbsErr: errs.length > 0 ? Math.max(...errs) : null, ms: null, note: `failed at ${stage}: ${message(e)}` })
    return { ms: null, bytes: 0 }
  }
}

const kvBytes = (lens: ReadonlyArray<number>) => 2 * lens.reduce((a, b) => a + b, 0) * KVW * 2
const gbps = (bytes: number, ms: number) => `${(bytes / 1e6).toFixed(1)} MB K+V -> ${(bytes / (ms / 1000) / 1e12).toFixed(2)} TB/s`

const timeRuns = (run: () => void): number => {
  for (let i = 0; i < 5; i++) run()
  const t0 = performance.now()
  for (let i = 0; i < ITERS; i++) run()
  return (performance.now() - t0) / ITERS
}

const gpu = (): number => {
  const want = (c: string) => wanted.has(c)
  let native: ReturnType<typeof NativeOrt.load>
  const open = (file: string, graph: boolean, debug: boolean): NativeSession => {
    // ORT reads the attention kernel options when the CUDA EP is created
    if (debug) process.env.ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO = "1"
    else delete process.env.ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO
    return native.createSession(file, { provider: "cuda", deviceId, graphOptimization: "all", cuda: cudaOptions(graph) })
  }
  const plainFile = pagedModel({ rotary: false, metadata: false })
  const metaFile = pagedModel({ rotary: false, metadata: true })
  let plain: NativeSession
  try {
    native = NativeOrt.load()
    plain = open(plainFile, false, true)
  } catch (e) {
    const m = message(e)
    const why = /CUDA execution provider|addon/i.test(m) ? "no CUDA provider" : "PagedAttention session could not be created"
    console.error(`paged-attention probe: ${why}: ${m}`)
    report({ case: "setup", ok: false, maxAbsErr: null, ms: null, note: `${why}: ${m}` })
    return 1
  }
  console.error(`paged-attention probe: ONNX Runtime ${native.ortVersion}, block_size ${BS}, models in ${tmp}`)
  const attempt = (name: string, f: () => void) => {
    try {
      f()
    } catch (e) {
      report({ case: name, ok: false, maxAbsErr: null, ms: null, note: message(e) })
    }
  }
  if (want("a")) checkStep("a", plain, caseA(1), { rotary: false, metadata: false }, undefined)
  if (want("a-meta")) attempt("a-meta", () => checkStep("a-meta", open(metaFile, false, true), caseA(1), { rotary: false, metadata: true }, undefined))
  if (want("a-rotary")) {
    attempt("a-rotary", () => {
      const o = { rotary: true, metadata: false }
      checkStep("a-rotary", open(pagedModel(o), false, true), caseA(1), o, ropeTables())
    })
  }
  if (want("b")) checkStep("b", plain, caseDecode(2, true), { rotary: false, metadata: false }, undefined)
  plain.release()


  if (want("d")) {
    attempt("d", () => {
      for (const meta of [false, true]) {
        const s = open(meta ? metaFile : plainFile, false, false)
        const { pool, step, metadata } = caseDecode(2, true)
        const cache = allocCache(s, pool)
        const d = allocBatch(s, step)
        uploadBatch(d, step)
        const { feeds, outputs } = feedsOf(d, cache, meta ? { attention_metadata: { data: metadata, dims: [2] } } : {})
        const ms = timeRuns(() => void s.run(feeds, outputs))
        const bytes = kvBytes(Array.from(step.past, (p) => p + 1))
        report({ case: `d-paged${meta ? "-meta" : ""}`, ok: true, maxAbsErr: null, ms, note: `batch ${BATCH}, past ${PAST}, uncaptured run() incl. binding + sync: ${gbps(bytes, ms)}` })
        s.release()
      }
    })
    attempt("d-gqa", () => {
      const s = open(gqaModel(), false, false)
      const S = Math.ceil((PAST + 8) / BS) * BS
      const pk = s.allocate("float16", [BATCH, KVH, S, HD]), pv = s.allocate("float16", [BATCH, KVH, S, HD])
      const r = rng(4)
      const q = s.allocate("float16", [BATCH, 1, QW]), k = s.allocate("float16", [BATCH, 1, KVW]), v = s.allocate("float16", [BATCH, 1, KVW])
      q.upload(randomHalf(BATCH * QW, r))
      k.upload(randomHalf(BATCH * KVW, r))
      v.upload(randomHalf(BATCH * KVW, r))
      const seq = s.allocate("int32", [BATCH])
      seq.upload(new Int32Array(BATCH).fill(PAST))
      const o = s.allocate("float16", [BATCH, 1, QW])
      const feeds = { q, k, v, pk, pv, seqlens_k: seq, total: { data: Int32Array.of(PAST + 1), dims: [] } }
      const ms = timeRuns(() => void s.run(feeds, { o, prk: pk, prv: pv }))
      const bytes = kvBytes(new Array<number>(BATCH).fill(PAST + 1))
      report({ case: "d-gqa", ok: true, maxAbsErr: null, ms, note: `GroupQueryAttention share-buffer [${BATCH}, ${KVH}, ${S}, ${HD}], total ${PAST + 1}, uncaptured: ${gbps(bytes, ms)}` })
      s.release()
    })
  }
  // Graph cases last: a failed capture can leave the CUDA context unusable for whatever follows it.
  if (want("c")) {
    attempt("c", () => {
      const g = checkGraph("c", open(metaFile, true, true), true)
      if (want("d") && g.ms !== null) {
        report({ case: "d-paged-graph", ok: true, maxAbsErr: null, ms: g.ms, note: `captured replay of case c (varied past): ${gbps(g.bytes, g.ms)}` })
      }
    })
  }
  if (want("c-nometa")) attempt("c-nometa", () => void checkGraph("c-nometa", open(plainFile, true, true), false))
  return 0
}

const main = async (): Promise<number> => {
  if (!(BS >= 16 && (BS & (BS - 1)) === 0)) {
    console.error(`--block-size must be a power of two >= 16 (the op's rule), got ${BS}`)
    return 2
  }
  if (cpuOnly) {
    await cpuBuildOnly()
    return 0
  }
  return gpu()
}

const code = await main()
fs.rmSync(tmp, { recursive: true, force: true })
process.exit(code)
