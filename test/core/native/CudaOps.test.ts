// `--linear-kernels` and `--decode-attention chorus` on the CPU side: which renames each choice makes, the shard graph rewrite (MatMulNBits ->
// chorus.Int4Linear, float16 MatMul -> chorus.Linear, GroupQueryAttention -> chorus.DecodeAttention, nothing else
// touched, next to the graph so that its external data is found), the SwiGLU fold into the down projection (or
// chorus.SwiGLU), chorus.GreedyArgMax in place of the greedy ArgMax's nodes, and where the library is looked for. The flags' refusals: test/cli/BadInput.test.ts. The
// kernels run on CUDA only: test/device/ChorusOpsDevice.test.ts.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import onnxProto from "onnx-proto"
import { afterAll, describe, expect, it } from "vitest"
import { convertCheckpoint } from "../../../src/adapters/llama3/Converter.ts"
import { defaultInt4 } from "../../../src/adapters/llama3/Quantization.ts"
import { chorusOpsChoice, CUSTOM_DOMAIN, cudaOpsLibrary, cudaOpsLibraryPath, rewriteForChorusOps } from "../../../src/core/native/CudaOps.ts"
import { NativeOrt } from "../../../src/core/native/NativeOrt.ts"
import { encodeModel } from "../../../src/onnx/OnnxWriter.ts"
import { fixtureDir } from "../../support/fixtures.ts"

const { onnx } = onnxProto
const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-cuda-ops-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

const convert = (name: string, quantize: boolean, dtype: "float16" | "float32" | "bfloat16" = "float16", attention: "fused" | "paged" = "fused") =>
  Effect.runPromise(convertCheckpoint({
    modelDir: fixtureDir("tiny-llama3-a"),
    outDir: path.join(root, name),
    dtype,
    shards: 1,
    attention,
    ...(quantize ? { quantize: defaultInt4 } : {})
  })).then((c) => path.join(c.dir, c.manifest.shards[0]!.file))

const nodesOf = (file: string) => onnx.ModelProto.decode(fs.readFileSync(file))

describe("rewriteForChorusOps", () => {
  it("renames every 4-bit MatMulNBits node and changes nothing else", async () => {
    const graph = await convert("int4", true)
    const before = nodesOf(graph)
    const nbits = before.graph!.node!.filter((n) => n.opType === "MatMulNBits").length
    // Two layers of QKV, O, gate|up and down, and the LM head.
    expect(nbits).toBe(2 * 4 + 1)
    const out = rewriteForChorusOps(graph, { float16Linears: true, int4Linears: true, attention: false, swiglu: true, swigluOp: false, greedyArgmax: false })
    expect(out.int4Linears).toBe(nbits)
    expect(out.float16Linears).toBe(0) // the LM head is 4-bit too
    expect(out.path).not.toBe(graph)
    expect(path.dirname(out.path)).toBe(path.dirname(graph)) // its external data paths are relative to the folder
    const after = nodesOf(out.path)
    expect(after.graph!.node!.filter((n) => n.opType === "MatMulNBits")).toHaveLength(0)
    expect(after.graph!.node!.filter((n) => n.opType === "Int4Linear" && n.domain === CUSTOM_DOMAIN)).toHaveLength(nbits)
    expect(Number(after.opsetImport!.find((o) => o.domain === CUSTOM_DOMAIN)?.version)).toBe(1)
    // Node for node the same inputs, outputs and attributes; only the renamed ones differ, in name and domain.
    expect(after.graph!.node!.length).toBe(before.graph!.node!.length)
    before.graph!.node!.forEach((n, i) => {
      const m = after.graph!.node![i]!
      expect([...m.input!]).toEqual([...n.input!])
      expect([...m.output!]).toEqual([...n.output!])
      expect(m.attribute!.map((a) => a.name)).toEqual(n.attribute!.map((a) => a.name))
      if (n.opType !== "MatMulNBits") expect([m.opType, m.domain]).toEqual([n.opType, n.domain])
    })
    expect(after.graph!.initializer!.length).toBe(before.graph!.initializer!.length)
  })

  it("reuses the rewritten file while it is newer than the graph, and rewrites it when the graph changes", async () => {
    const graph = await convert("int4-reuse", true)
    const first = rewriteForChorusOps(graph)
    const good = fs.readFileSync(first.path)
    // A marker instead of the graph: still there after a reuse, gone after a rewrite. (Contents, not mtimes: a file
    // written within the same clock tick as another gets the same mtime.)
    fs.writeFileSync(first.path, "marker")
    const past = new Date(Date.now() - 60_000)
    fs.utimesSync(graph, past, past)
    expect(rewriteForChorusOps(graph).path).toBe(first.path)
    expect(fs.readFileSync(first.path, "utf8")).toBe("marker")
    const future = new Date(Date.now() + 60_000)
    fs.utimesSync(graph, future, future)
    expect(rewriteForChorusOps(graph).path).toBe(first.path)
    expect(fs.readFileSync(first.path).equals(good)).toBe(true)
    expect(fs.readdirSync(path.dirname(graph)).filter((f) => f.endsWith(".tmp"))).toHaveLength(0)
  })

  it("renames a float16 graph's MatMuls to chorus.Linear, and leaves a float32 or bfloat16 graph as it is", async () => {
    const graph = await convert("float", false)
    const before = nodesOf(graph)
    const matmuls = before.graph!.node!.filter((n) => n.opType === "MatMul").length
    expect(matmuls).toBe(2 * 4 + 1) // QKV, O, gate|up and down a layer, and the LM head
    const out = rewriteForChorusOps(graph, { float16Linears: true, int4Linears: true, attention: false, swiglu: false, swigluOp: false, greedyArgmax: false })
    expect(out).toEqual({ path: graph.replace(/\.onnx$/, ".chorus-linear.onnx"), int4Linears: 0, float16Linears: matmuls, attentions: 0, swigluFolds: 0, swigluOps: 0, greedyArgmax: 0 })
    const after = nodesOf(out.path)
    expect(after.graph!.node!.filter((n) => n.opType === "MatMul")).toHaveLength(0)
    const renamed = after.graph!.node!.filter((n) => n.opType === "Linear" && n.domain === CUSTOM_DOMAIN)
    const original = before.graph!.node!.filter((n) => n.opType === "MatMul")
    expect(renamed.map((n) => [...n.input!])).toEqual(original.map((n) => [...n.input!]))
    expect(after.graph!.node!.filter((n) => n.opType === "GroupQueryAttention")).toHaveLength(2) // not asked for

    const f32 = await convert("float32", false, "float32")
    // Nothing float16 to rename, no float16 SwiGLU or logits: the default choice leaves it as it is.
    expect(rewriteForChorusOps(f32)).toEqual({ path: f32, int4Linears: 0, float16Linears: 0, attentions: 0, swigluFolds: 0, swigluOps: 0, greedyArgmax: 0 })
    // bfloat16 logits and SwiGLU: the float16 kernels do not take them either.
    const bf16 = await convert("bfloat16", false, "bfloat16")
    expect(rewriteForChorusOps(bf16, chorusOpsChoice("auto", false, true))).toEqual({ path: bf16, int4Linears: 0, float16Linears: 0, attentions: 0, swigluFolds: 0, swigluOps: 0, greedyArgmax: 0 })
    expect(fs.readdirSync(path.dirname(f32)).filter((f) => f.includes(".chorus-"))).toHaveLength(0)
  })

  it("--decode-attention chorus: renames every GroupQueryAttention to chorus.DecodeAttention, into its own file", async () => {
    const graph = await convert("float-attention", false)
    const before = nodesOf(graph)
    const gqa = before.graph!.node!.filter((n) => n.opType === "GroupQueryAttention").length
    expect(gqa).toBe(2) // one a layer
    const out = rewriteForChorusOps(graph, { float16Linears: false, int4Linears: false, attention: true, swiglu: true, swigluOp: false, greedyArgmax: false })
    expect(out).toEqual({ path: graph.replace(/\.onnx$/, ".chorus-attention.onnx"), int4Linears: 0, float16Linears: 0, attentions: gqa, swigluFolds: 0, swigluOps: 0, greedyArgmax: 0 })
    const after = nodesOf(out.path)
    expect(after.graph!.node!.filter((n) => n.opType === "GroupQueryAttention")).toHaveLength(0)
    const renamed = after.graph!.node!.filter((n) => n.opType === "DecodeAttention" && n.domain === CUSTOM_DOMAIN)
    expect(renamed).toHaveLength(gqa)
    // The same inputs (packed QKV, the caches, seqlens_k, total_sequence_length, the rotary tables) and attributes.
    const original = before.graph!.node!.filter((n) => n.opType === "GroupQueryAttention")
    renamed.forEach((n, i) => {
      expect([...n.input!]).toEqual([...original[i]!.input!])
      expect(n.attribute!.map((a) => a.name)).toEqual(original[i]!.attribute!.map((a) => a.name))
    })
    // Both at once: a third file, so that either choice alone keeps its own.
    const int4 = await convert("int4-attention", true)
    const both = rewriteForChorusOps(int4, { float16Linears: true, int4Linears: true, attention: true, swiglu: true, swigluOp: false, greedyArgmax: false })
    expect(both.path.endsWith(".chorus-int4-attention.onnx")).toBe(true)
    expect(both.int4Linears).toBe(2 * 4 + 1)
    expect(both.float16Linears).toBe(0)
    expect(both.attentions).toBe(2)
    expect(both.swigluFolds).toBe(0) // a 4-bit down projection keeps its SwiGLU
  })

  it("folds each MLP's Split, Sigmoid and Muls into its down projection's chorus.Linear (activation swiglu)", async () => {
    const graph = await convert("float-swiglu", false)
    const before = nodesOf(graph).graph!
    const out = rewriteForChorusOps(graph, { float16Linears: true, int4Linears: true, attention: false, swiglu: true, swigluOp: true, greedyArgmax: false })
    expect(out).toEqual({ path: graph.replace(/\.onnx$/, ".chorus-linear-swiglu.onnx"), int4Linears: 0, float16Linears: 9, attentions: 0, swigluFolds: 2, swigluOps: 0, greedyArgmax: 0 })
    const after = nodesOf(out.path).graph!
    const gone = before.node!.filter((n) => /^layers\.\d+\.(split|sigmoid|silu|swiglu)$/.test(n.name!))
    expect(gone.map((n) => n.opType)).toEqual(["Split", "Sigmoid", "Mul", "Mul", "Split", "Sigmoid", "Mul", "Mul"])
    expect(after.node!.map((n) => n.name)).toEqual(before.node!.filter((n) => !gone.includes(n)).map((n) => n.name))
    for (const i of [0, 1]) {
      const down = after.node!.find((n) => n.name === `layers.${i}.down`)!
      expect([down.opType, down.domain, ...down.input!]).toEqual(["Linear", CUSTOM_DOMAIN, `layers.${i}.gate_up_out`, `layers.${i}.down`])
      expect(down.attribute!.map((a) => [a.name, new TextDecoder().decode(a.s!)])).toEqual([["activation", "swiglu"]])
    }
    // Every other node as it was: only the down projections changed, and nothing reads a removed tensor.
    const removedTensors = new Set(gone.flatMap((n) => n.output!))
    expect(after.node!.flatMap((n) => n.input!).filter((t) => removedTensors.has(t))).toEqual([])
  })

  it("replaces a float16 graph's greedy ArgMax with one chorus.GreedyArgMax over the float16 logits, row and paged layouts", async () => {
    for (const attention of ["fused", "paged"] as const) {
      const graph = await convert(`float-argmax-${attention}`, false, "float16", attention)
      const before = nodesOf(graph).graph!
      const out = rewriteForChorusOps(graph, { float16Linears: false, int4Linears: false, attention: false, swiglu: false, swigluOp: false, greedyArgmax: true })
      expect(out).toEqual({ path: graph.replace(/\.onnx$/, ".chorus-argmax.onnx"), int4Linears: 0, float16Linears: 0, attentions: 0, swigluFolds: 0, swigluOps: 0, greedyArgmax: 1 })
      const after = nodesOf(out.path).graph!
      const op = after.node!.find((n) => n.opType === "GreedyArgMax")!
      expect([op.domain, ...op.input!, ...op.output!]).toEqual([CUSTOM_DOMAIN, "logits_half", "greedy_token"])
      // The ArgMax's own nodes are gone; the Cast stays for the logits output, and nothing reads a removed tensor.
      expect(after.node!.filter((n) => ["ArgMax", "ReduceMax", "GatherElements"].includes(n.opType!))).toHaveLength(0)
      expect(after.node!.filter((n) => n.opType === "Cast" && n.output![0] === "logits")).toHaveLength(1)
      const kept = new Set(after.node!.flatMap((n) => n.output!))
      const available = new Set([...kept, ...after.input!.map((i) => i.name!), ...after.initializer!.map((t) => t.name!)])
      expect(after.node!.flatMap((n) => n.input!).filter((t) => t !== "" && !available.has(t))).toEqual([])
      expect(after.output!.map((o) => o.name)).toEqual(before.output!.map((o) => o.name))
      expect(after.node!.length).toBeLessThan(before.node!.length)
    }
  })

  it("leaves a SwiGLU whose tensors are read elsewhere, and CHORUS_FOLD_SWIGLU=0 leaves them all", async () => {
    const graph = await convert("float-swiglu-read", false)
    // Layer 0's SwiGLU output also a graph output: that MLP keeps its nodes, layer 1's folds.
    const model = nodesOf(graph)
    model.graph!.output = [...model.graph!.output!, onnx.ValueInfoProto.create({ name: "layers.0.swiglu" })]
    fs.writeFileSync(graph, onnx.ModelProto.encode(model).finish())
    const out = rewriteForChorusOps(graph)
    // Layer 0's SwiGLU cannot fold (its down projection must not overwrite a graph output): one chorus.SwiGLU
    // computes it, under its own name, for both readers.
    expect([out.swigluFolds, out.swigluOps]).toEqual([1, 1])
    const after = nodesOf(out.path).graph!
    expect(after.node!.filter((n) => n.opType === "Sigmoid")).toHaveLength(0)
    const op = after.node!.find((n) => n.opType === "SwiGLU")!
    expect([op.domain, ...op.input!, ...op.output!]).toEqual([CUSTOM_DOMAIN, "layers.0.gate_up_out", "layers.0.swiglu"])
    expect(after.node!.find((n) => n.name === "layers.0.down")!.input![0]).toBe("layers.0.swiglu")

    const saved = process.env.CHORUS_FOLD_SWIGLU
    try {
      process.env.CHORUS_FOLD_SWIGLU = "0"
      const choice = chorusOpsChoice("auto", false, true)
      expect(choice.swiglu).toBe(false)
      expect(choice.swigluOp).toBe(false)
      const plain = rewriteForChorusOps(await convert("float-swiglu-off", false), choice)
      expect([path.basename(plain.path).replace(/^.*?\.chorus-/, ""), plain.swigluFolds, plain.swigluOps]).toEqual(["linear-argmax.onnx", 0, 0])
    } finally {
      if (saved === undefined) delete process.env.CHORUS_FOLD_SWIGLU
      else process.env.CHORUS_FOLD_SWIGLU = saved
    }
  })
})

describe("which kernels a CUDA shard gets", () => {
  it("auto (the default): the float16 GEMV where the library is built, ORT's kernels otherwise and for 4-bit weights", () => {
    const all = { swiglu: true, swigluOp: true, greedyArgmax: true }
    const none = { swiglu: false, swigluOp: false, greedyArgmax: false }
    expect(chorusOpsChoice("auto", false, true)).toEqual({ float16Linears: true, int4Linears: false, attention: false, ...all })
    expect(chorusOpsChoice("auto", false, false)).toEqual({ float16Linears: false, int4Linears: false, attention: false, ...none })
    expect(chorusOpsChoice("chorus", false, true)).toEqual({ float16Linears: true, int4Linears: true, attention: false, ...all })
    expect(chorusOpsChoice("ort", true, true)).toEqual({ float16Linears: false, int4Linears: false, attention: true, ...none })
    const saved = process.env.CHORUS_GREEDY_ARGMAX
    try {
      process.env.CHORUS_GREEDY_ARGMAX = "0"
      expect(chorusOpsChoice("auto", false, true).greedyArgmax).toBe(false)
    } finally {
      if (saved === undefined) delete process.env.CHORUS_GREEDY_ARGMAX
      else process.env.CHORUS_GREEDY_ARGMAX = saved
    }
  })

  it("auto leaves an int4 shard's 4-bit linears to MatMulNBits (its SwiGLU and ArgMax become Chorus's), and each choice gets a file of its own", async () => {
    const int4 = await convert("int4-auto", true)
    // The LM head is 4-bit too: nothing for the float16 GEMV.
    const quantized = rewriteForChorusOps(int4, chorusOpsChoice("auto", false, true))
    expect(quantized).toEqual({ path: int4.replace(/\.onnx$/, ".chorus-swiglu-op-argmax.onnx"), int4Linears: 0, float16Linears: 0, attentions: 0, swigluFolds: 0, swigluOps: 2, greedyArgmax: 1 })
    expect(nodesOf(quantized.path).graph!.node!.filter((n) => n.opType === "MatMulNBits")).toHaveLength(2 * 4 + 1)
    const float = await convert("float-choices", false)
    const linear = rewriteForChorusOps(float, chorusOpsChoice("auto", false, true))
    const withAttention = rewriteForChorusOps(float, chorusOpsChoice("auto", true, true))
    expect(path.basename(linear.path)).toMatch(/\.chorus-linear-swiglu-argmax\.onnx$/)
    expect(path.basename(withAttention.path)).toMatch(/\.chorus-linear-swiglu-attention-argmax\.onnx$/)
    expect(nodesOf(linear.path).graph!.node!.filter((n) => n.opType === "DecodeAttention")).toHaveLength(0)
    expect(nodesOf(withAttention.path).graph!.node!.filter((n) => n.opType === "DecodeAttention")).toHaveLength(2)
  })
})

describe("the library's place", () => {
  it("CHORUS_CUDA_OPS names it; a missing file is undefined", () => {
    const saved = process.env.CHORUS_CUDA_OPS
    try {
      process.env.CHORUS_CUDA_OPS = path.join(root, "absent.so")
      expect(cudaOpsLibraryPath()).toBe(path.join(root, "absent.so"))
      expect(cudaOpsLibrary()).toBeUndefined()
      fs.writeFileSync(path.join(root, "present.so"), "")
      process.env.CHORUS_CUDA_OPS = path.join(root, "present.so")
      expect(cudaOpsLibrary()).toBe(path.join(root, "present.so"))
    } finally {
      if (saved === undefined) delete process.env.CHORUS_CUDA_OPS
      else process.env.CHORUS_CUDA_OPS = saved
    }
  })
})

// Where the addon and the library are built here (npm run build:native, npm run build:cuda-ops; neither is on CI):
// ORT loads the library and registers its domain, with any execution provider.
describe.runIf(NativeOrt.isBuilt() && cudaOpsLibrary() !== undefined)("the built library", () => {
  it("registers into a session", () => {
    const file = path.join(root, "relu.onnx")
    fs.writeFileSync(file, encodeModel({
      name: "relu", opsets: { "": 17 }, external: [], inline: [],
      nodes: [{ op: "Relu", inputs: ["x"], outputs: ["y"], name: "relu" }],
      inputs: [{ name: "x", type: "float32", dims: [2] }], outputs: [{ name: "y", type: "float32", dims: [2] }]
    }))
    const session = NativeOrt.load().createSession(file, { provider: "cpu", customOpsLibrary: cudaOpsLibrary()! })
    expect(session.inputNames).toEqual(["x"])
    session.release()
  })
})
