// The native IO-binding addon. Build-conditional on purpose: CI has no addon (and no GPU), so there this file only
// checks that load() says how to build it; `npm run test:native` builds it and sets CHORUS_NATIVE_REQUIRED=1, which
// turns a missing addon into a failure and runs everything below. The CUDA variants run where the provider is installed.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { convertCheckpoint } from "../../../src/adapters/llama3/Converter.ts"
import { type DeviceTensor, type HostTensor, NativeOrt, type NativeProvider, type NativeSession } from "../../../src/core/native/NativeOrt.ts"
import { ort } from "../../../src/onnx/OrtFloat16Fix.ts"
import { encodeModel } from "../../../src/onnx/OnnxWriter.ts"
import { fixtureDir, readReference, relativeError, repoRoot } from "../../support/fixtures.ts"
import { maskFeeds } from "../../support/maskFeeds.ts"

const required = process.env.CHORUS_NATIVE_REQUIRED === "1"
// Unbuilt, the tests below are not registered at all (none reads as skipped); test:native requires the build.
const built = NativeOrt.isBuilt()
const ortLibDir = path.join(repoRoot, "node_modules/onnxruntime-node/bin/napi-v6/linux/x64")
const cudaInstalled = fs.existsSync(path.join(ortLibDir, "libonnxruntime_providers_cuda.so"))
const providers: ReadonlyArray<NativeProvider> = cudaInstalled ? ["cpu", "cuda"] : ["cpu"]
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-native-"))
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }))

describe("NativeOrt.load", () => {
  it("names npm run build:native when the addon file is missing", () => {
    expect(() => NativeOrt.load(path.join(tmp, "nowhere/chorus_ort.node"))).toThrow(/not built: .*nowhere\/chorus_ort\.node is missing; run `npm run build:native`/)
  })

  it(`${NativeOrt.isBuilt() ? "loads the built addon" : "reports the unbuilt addon"}${required ? " (required by test:native)" : ""}`, () => {
    if (!NativeOrt.isBuilt()) {
      expect(required, `${NativeOrt.addonPath()} missing under test:native`).toBe(false)
      expect(() => NativeOrt.load()).toThrow(/npm run build:native/)
      return
    }
    const addon = NativeOrt.load()
    expect(addon.ortVersion).toBe("1.29.0")
    expect(addon.apiVersion).toBe(21)
  })
})

// ------------------------------------------------------------------------------------------------------ helpers

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length)
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}

/** Deterministic values in [-1, 1). */
const seeded = (seed: number) => (n: number) => {
  let s = seed >>> 0
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    return s / 2 ** 31 - 1
  })
}

const host = <A extends HostTensor["data"]>(data: A, dims: ReadonlyArray<number>): HostTensor<A> => ({ data, dims })
const i64 = (xs: ReadonlyArray<number>) => BigInt64Array.from(xs, (x) => BigInt(x))

// ----------------------------------------------------------------------------------- GroupQueryAttention alone

const heads = 4, kvHeads = 2, headDim = 16, maxLen = 32
const gqaModel = () => {
  const file = path.join(tmp, "gqa.onnx")
  fs.writeFileSync(file, encodeModel({
    name: "gqa", opsets: { "": 17, "com.microsoft": 1 }, external: [], inline: [],
    nodes: [{
      op: "GroupQueryAttention", domain: "com.microsoft", inputs: ["q", "k", "v", "pk", "pv", "seqlens_k", "total", "cos", "sin"],
      outputs: ["o", "prk", "prv"], attributes: { num_heads: heads, kv_num_heads: kvHeads, do_rotary: 1, rotary_interleaved: 0 }
    }],
    inputs: [
      { name: "q", type: "float32", dims: ["B", "S", heads * headDim] }, { name: "k", type: "float32", dims: ["B", "S", kvHeads * headDim] },
      { name: "v", type: "float32", dims: ["B", "S", kvHeads * headDim] },
      { name: "pk", type: "float32", dims: ["B", kvHeads, "P", headDim] }, { name: "pv", type: "float32", dims: ["B", kvHeads, "P", headDim] },
      { name: "seqlens_k", type: "int32", dims: ["B"] }, { name: "total", type: "int32", dims: [] },
      { name: "cos", type: "float32", dims: [maxLen, headDim / 2] }, { name: "sin", type: "float32", dims: [maxLen, headDim / 2] }
    ],
    outputs: [
      { name: "o", type: "float32", dims: ["B", "S", heads * headDim] },
      { name: "prk", type: "float32", dims: ["B", kvHeads, "T", headDim] }, { name: "prv", type: "float32", dims: ["B", kvHeads, "T", headDim] }
    ]
  }))
  return file
}

if (built) describe.each(providers)("GroupQueryAttention share-buffer mode on %s", (provider) => {
  it("appends prefill and decode keys/values in place in a slot row; outputs match onnxruntime-node within 1e-6", async () => {
    const file = gqaModel()
    const L = 7
    const rnd = seeded(7)
    const q = rnd(L * heads * headDim), k = rnd(L * kvHeads * headDim), v = rnd(L * kvHeads * headDim)
    const cos = new Float32Array(maxLen * headDim / 2), sin = new Float32Array(maxLen * headDim / 2)
    for (let p = 0; p < maxLen; p++) {
      for (let i = 0; i < headDim / 2; i++) {
        const f = p / Math.pow(10000, (2 * i) / headDim)
        cos[p * headDim / 2 + i] = Math.cos(f)
        sin[p * headDim / 2 + i] = Math.sin(f)
      }
    }
    const rope = { cos: host(cos, [maxLen, headDim / 2]), sin: host(sin, [maxLen, headDim / 2]) }

    // Reference: the whole sequence at once with an empty past, through onnxruntime-node.
    const refSession = await ort.InferenceSession.create(file)
    const T = (d: Float32Array | Int32Array, dims: Array<number>) => new ort.Tensor(d instanceof Int32Array ? "int32" : "float32", d, dims)
    const ref = await refSession.run({
      q: T(q, [1, L, heads * headDim]), k: T(k, [1, L, kvHeads * headDim]), v: T(v, [1, L, kvHeads * headDim]),
      pk: T(new Float32Array(0), [1, kvHeads, 0, headDim]), pv: T(new Float32Array(0), [1, kvHeads, 0, headDim]),
      seqlens_k: T(Int32Array.of(L - 1), [1]), total: T(Int32Array.of(L), []), cos: T(cos, [maxLen, headDim / 2]), sin: T(sin, [maxLen, headDim / 2])
    })

    // The sequence lives in row 1 of 3 slots; chunks of 3, 2, 1 and 1 tokens.
    const session = NativeOrt.load().createSession(file, { provider, intraOpThreads: 1 })
    expect(session.inputNames).toEqual(["q", "k", "v", "pk", "pv", "seqlens_k", "total", "cos", "sin"])
    expect(session.outputNames).toEqual(["o", "prk", "prv"])
    const slots = 3, row = 1, perRow = kvHeads * maxLen * headDim
    const keys = session.allocate("float32", [slots, kvHeads, maxLen, headDim])
    const values = session.allocate("float32", [slots, kvHeads, maxLen, headDim])
    expect(keys.location).toBe(provider)
    const pk = keys.view(row * perRow, [1, kvHeads, maxLen, headDim]), pv = values.view(row * perRow, [1, kvHeads, maxLen, headDim])
    const out = new Float32Array(L * heads * headDim)
    for (const [start, n] of [[0, 3], [3, 2], [5, 1], [6, 1]] as const) {
      const slice = (a: Float32Array, w: number) => host(a.slice(start * w, (start + n) * w), [1, n, w])
      const r = session.run(
        { q: slice(q, heads * headDim), k: slice(k, kvHeads * headDim), v: slice(v, kvHeads * headDim), pk, pv,
          seqlens_k: host(Int32Array.of(start + n - 1), [1]), total: host(Int32Array.of(start + n), []), ...rope },
        { o: "host", prk: pk, prv: pv }
      )
      expect(r.o!.dims).toEqual([1, n, heads * headDim])
      expect(Object.keys(r)).toEqual(["o"])
      out.set(r.o!.data as Float32Array, start * heads * headDim)
    }
    expect(maxAbsDiff(out, ref.o!.data as Float32Array)).toBeLessThan(1e-6)

    // The cache holds the rotated keys and the values at positions [0, L) of row 1, and nothing anywhere else.
    for (const [buffer, want] of [[keys, ref.prk!.data], [values, ref.prv!.data]] as const) {
      const all = buffer.download()
      const got = new Float32Array(kvHeads * L * headDim)
      for (let h = 0; h < kvHeads; h++) got.set(all.subarray(row * perRow + h * maxLen * headDim, row * perRow + (h * maxLen + L) * headDim), h * L * headDim)
      expect(maxAbsDiff(got, want as Float32Array)).toBeLessThan(1e-6)
      let outside = 0
      all.forEach((x, i) => {
        const inRow = i >= row * perRow && i < (row + 1) * perRow && (i - row * perRow) % (maxLen * headDim) < L * headDim
        if (!inRow) outside += Math.abs(x)
      })
      expect(outside).toBe(0)
    }
    session.release()
    await refSession.release()
  })
})

// ---------------------------------------------------------------------------------------- a real shard graph

interface Shard {
  readonly session: NativeSession
  readonly keys: ReadonlyArray<DeviceTensor<"float32">>
  readonly values: ReadonlyArray<DeviceTensor<"float32">>
  readonly kvHeads: number
  readonly headDim: number
  readonly vocab: number
}

const SLOTS = 4, SLOT_LEN = 512

const converted = async () => {
  const outDir = path.join(tmp, "tiny-b")
  if (!fs.existsSync(outDir)) await Effect.runPromise(convertCheckpoint({ modelDir: fixtureDir("tiny-llama3-b"), outDir, dtype: "float32", shards: 1 }))
  const manifest = JSON.parse(fs.readFileSync(path.join(outDir, "chorus-model.json"), "utf8"))
  return { graph: path.join(outDir, manifest.shards[0].file as string), config: manifest.config as { numLayers: number; numKvHeads: number; headDim: number; vocabSize: number } }
}

const openShard = async (provider: NativeProvider): Promise<Shard> => {
  const { graph, config } = await converted()
  // float32 parity: the CUDA EP multiplies in TF32 unless told not to (1e-3 relative error on these logits).
  const session = NativeOrt.load().createSession(graph, { provider, intraOpThreads: 2, cuda: { use_tf32: "0" } })
  const slot = (): DeviceTensor<"float32"> => session.allocate("float32", [SLOTS, config.numKvHeads, SLOT_LEN, config.headDim])
  return {
    session, kvHeads: config.numKvHeads, headDim: config.headDim, vocab: config.vocabSize,
    keys: Array.from({ length: config.numLayers }, slot), values: Array.from({ length: config.numLayers }, slot)
  }
}

/**
 * One step over rows [firstRow, firstRow + tokens.length): each row feeds `tokens[r]` after `past[r]` positions.
 * Past and present of every layer are the same view of the slot buffers, so the graph appends in place.
 */
const step = (shard: Shard, firstRow: number, tokens: ReadonlyArray<ReadonlyArray<number>>, past: ReadonlyArray<number>, allLogits: boolean) => {
  const rows = tokens.length, seq = tokens[0]!.length
  const perRow = shard.kvHeads * SLOT_LEN * shard.headDim
  const kvDims = [rows, shard.kvHeads, SLOT_LEN, shard.headDim]
  const inputs: Record<string, HostTensor | DeviceTensor> = {
    input_ids: host(i64(tokens.flat()), [rows, seq]),
    position_ids: host(i64(tokens.flatMap((_, r) => Array.from({ length: seq }, (_, j) => past[r]! + j))), [rows, seq]),
    seqlens_k: host(Int32Array.from(past, (p) => p + seq - 1), [rows]),
    total_sequence_length: host(Int32Array.of(Math.max(...past) + seq), []),
    logits_index: host(i64(tokens.flatMap(() => (allLogits ? Array.from({ length: seq }, (_, j) => j) : [seq - 1]))), [rows, allLogits ? seq : 1]),
    token_bitmask: host(new Int32Array(0), [0, Math.ceil(shard.vocab / 32)]),
    token_bitmask_rows: host(new BigInt64Array(0), [0]),
    allowed_rows: host(new BigInt64Array(0), [0]),
    allowed_ids: host(new BigInt64Array(0), [0, 1])
  }
  const outputs: Record<string, DeviceTensor | "host"> = { greedy_token: "host" }
  if (allLogits) outputs.logits = "host"
  shard.keys.forEach((buffer, i) => {
    const kv = buffer.view(firstRow * perRow, kvDims)
    const vv = shard.values[i]!.view(firstRow * perRow, kvDims)
    inputs[`past_key.${i}`] = kv
    inputs[`past_value.${i}`] = vv
    outputs[`present_key.${i}`] = kv
    outputs[`present_value.${i}`] = vv
  })
  const r = shard.session.run(inputs, outputs)
  return { greedy: Array.from(r.greedy_token!.data as BigInt64Array, Number), logits: r.logits?.data as Float32Array | undefined }
}

if (built) describe.each(providers)("tiny-llama3-b shard graph on %s, KV in place", (provider) => {
  const reference = readReference("tiny-llama3-b")

  it("each prompt alone in row 0: prefill logits within 1e-4 of transformers, 24 greedy tokens exact", async () => {
    const shard = await openShard(provider)
    for (const prompt of reference.prompts) {
      const first = step(shard, 0, [prompt.input_ids], [0], true)
      const vocab = prompt.prefill_logits_last.length
      const logits = first.logits!
      expect(relativeError(logits.subarray(logits.length - vocab), prompt.prefill_logits_last)).toBeLessThan(1e-4)
      if (prompt.prefill_logits_all !== null) expect(relativeError(logits, prompt.prefill_logits_all.flat())).toBeLessThan(1e-4)
      const tokens = [first.greedy.at(-1)!]
      let past = prompt.input_ids.length
      while (tokens.length < 24) tokens.push(step(shard, 0, [[tokens.at(-1)!]], [past++], false).greedy[0]!)
      expect(tokens).toEqual(prompt.greedy_continuation)
    }
    shard.session.release()
  })

  it("all four prompts decoded together in rows 0..3 from different past lengths: the same tokens", async () => {
    const shard = await openShard(provider)
    const prompts = reference.prompts
    const tokens = prompts.map((p, r) => [step(shard, r, [p.input_ids], [0], false).greedy[0]!])
    const past = prompts.map((p) => p.input_ids.length)
    while (tokens[0]!.length < 24) {
      const next = step(shard, 0, tokens.map((t) => [t.at(-1)!]), past, false).greedy
      next.forEach((t, r) => { tokens[r]!.push(t); past[r]!++ })
    }
    tokens.forEach((t, r) => expect(t).toEqual(prompts[r]!.greedy_continuation))
    shard.session.release()
  })

  it("two addon sessions and onnxruntime-node in one process give the same logits", async () => {
    const [a, b] = [await openShard(provider), await openShard(provider)]
    const { graph, config } = await converted()
    const prompt = reference.prompts[1]!.input_ids
    const la = step(a, 2, [prompt], [0], true).logits!
    const lb = step(b, 0, [prompt], [0], true).logits!
    const stock = await ort.InferenceSession.create(graph, { intraOpNumThreads: 2 })
    const empty = new ort.Tensor("float32", new Float32Array(0), [1, config.numKvHeads, 0, config.headDim])
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", i64(prompt), [1, prompt.length]),
      position_ids: new ort.Tensor("int64", i64(prompt.map((_, j) => j)), [1, prompt.length]),
      seqlens_k: new ort.Tensor("int32", Int32Array.of(prompt.length - 1), [1]),
      total_sequence_length: new ort.Tensor("int32", Int32Array.of(prompt.length), []),
      logits_index: new ort.Tensor("int64", i64(prompt.map((_, j) => j)), [1, prompt.length]),
      ...maskFeeds(config.vocabSize)
    }
    for (let i = 0; i < config.numLayers; i++) feeds[`past_key.${i}`] = feeds[`past_value.${i}`] = empty
    const ls = (await stock.run(feeds, ["logits"])).logits!.data as Float32Array
    expect(Array.from(la)).toEqual(Array.from(lb))
    expect(relativeError(la, ls)).toBeLessThan(1e-5)
    a.session.release()
    b.session.release()
    await stock.release()
  })
})

// --------------------------------------------------------------------------------------------- API contract

if (built) describe("NativeOrt API errors and lifetimes", () => {
  const tiny = () => {
    const file = path.join(tmp, "add.onnx")
    fs.writeFileSync(file, encodeModel({
      name: "add", opsets: { "": 17 }, external: [], inline: [],
      nodes: [{ op: "Add", domain: "", inputs: ["x", "y"], outputs: ["z"], attributes: {} }],
      inputs: [{ name: "x", type: "float32", dims: ["N"] }, { name: "y", type: "float32", dims: ["N"] }],
      outputs: [{ name: "z", type: "float32", dims: ["N"] }]
    }))
    return NativeOrt.load().createSession(file, { provider: "cpu" })
  }

  it("upload, download, views and one-line errors naming what was expected", () => {
    const s = tiny()
    const x = s.allocate("float32", [4])
    expect(Array.from(x.download())).toEqual([0, 0, 0, 0])
    x.upload(Float32Array.of(1, 2, 3, 4))
    expect(x.dtype).toBe("float32")
    expect(x.dims).toEqual([4])
    expect(Array.from(x.view(1, [2]).download())).toEqual([2, 3])
    x.view(2, [2]).upload(Float32Array.of(7, 8))
    expect(Array.from(x.download())).toEqual([1, 2, 7, 8])
    const z = s.allocate("float32", [4])
    expect(s.run({ x, y: host(Float32Array.of(10, 20, 30, 40), [4]) }, { z })).toEqual({})
    expect(Array.from(z.download())).toEqual([11, 22, 37, 48])
    expect(() => x.upload(new Float32Array(3) as Float32Array)).toThrow("DeviceTensor.upload: expected Float32Array of 4 elements for float32 [4], found Float32Array of 3")
    expect(() => x.view(3, [2])).toThrow("DeviceTensor.view: elements [3, 5) exceed the 4 elements of [4]")
    expect(() => s.run({ x }, { z: "host" })).toThrow("Session.run: input y is missing (the model's inputs: x, y)")
    expect(() => s.run({ x, y: x, w: x }, { z: "host" })).toThrow("Session.run: the model has no input w (its inputs: x, y)")
    expect(() => s.run({ x, y: host(new Float64Array(4) as unknown as Float32Array, [4]) }, { z: "host" })).toThrow(/input y.data is a Float64Array/)
    expect(() => s.run({ x, y: host(new Float32Array(3), [4]) }, { z: "host" })).toThrow("Session.run: input y has dims [4] (4 elements) but 3 values")
    expect(() => s.allocate("float64" as "float16", [1])).toThrow(/dtype must be float32, float16, bfloat16, int32 or int64, found float64/)
    expect(() => s.run({ x, y: { data: new Float32Array(4), dims: [4], dtype: "bfloat16" } }, { z: "host" })).toThrow(/input y.dtype does not fit its Float32Array/)
    expect(() => s.run({ x, y: s.allocate("int32", [4]) }, { z: "host" })).toThrow(/ONNX Runtime: .*(type|Type)/)
    // Tensors outlive the session that allocated them; the session itself is gone.
    s.release()
    expect(Array.from(z.download())).toEqual([11, 22, 37, 48])
    expect(() => s.run({ x, y: x }, { z: "host" })).toThrow("Session: used after release()")
    z.release()
    expect(() => z.download()).toThrow("DeviceTensor: used after release()")
  })

  it("bind: one binding for repeated runs, device inputs read as they are at each run, host inputs copied once", () => {
    const s = tiny()
    const x = s.allocate("float32", [4])
    const z = s.allocate("float32", [4])
    const y = Float32Array.of(10, 20, 30, 40)
    const bound = s.bind({ x, y: host(y, [4]) }, { z })
    y.fill(0) // the binding kept its own copy
    x.upload(Float32Array.of(1, 2, 3, 4))
    expect(bound.run()).toEqual({})
    expect(Array.from(z.download())).toEqual([11, 22, 33, 44])
    x.upload(Float32Array.of(5, 5, 5, 5))
    bound.run()
    expect(Array.from(z.download())).toEqual([15, 25, 35, 45])
    // Host outputs come back at every run, as from run().
    const toHost = s.bind({ x, y: x }, { z: "host" })
    expect(Array.from(toHost.run().z!.data as Float32Array)).toEqual([10, 10, 10, 10])
    expect(() => s.bind({ x }, { z })).toThrow("Session.bind: input y is missing (the model's inputs: x, y)")
    expect(() => s.bind({ x, y: x }, { w: z })).toThrow("Session.bind: the model has no output w (its outputs: z)")
    // The bound tensors stay alive with the binding, after the session and the tensors' own handles are released.
    s.release()
    x.release()
    bound.run()
    expect(Array.from(z.download())).toEqual([15, 25, 35, 45])
    bound.release()
    expect(() => bound.run()).toThrow("BoundRun: used after release()")
  })

  if (!cudaInstalled) it("provider cuda without the provider library: names the package to install", () => {
    const file = path.join(tmp, "add.onnx")
    tiny().release()
    expect(() => NativeOrt.load().createSession(file, { provider: "cuda" })).toThrow(
      /libonnxruntime_providers_cuda\.so.*com\.github\.asus4\.onnxruntime\.linux-x64-gpu@0\.4\.9.*LD_LIBRARY_PATH/
    )
  })
})
