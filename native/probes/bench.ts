/**
 * Decode-step time of one shard graph through the native addon (KV cache bound in place) against onnxruntime-node
 * (the KV cache passed through `run()`), same model, batch, cache length and provider, in one process.
 *
 *   node native/probes/bench.ts [--provider cpu|cuda] [--device 0] [--model DIR] [--dtype float32|float16]
 *                        [--batch 16] [--kv 1024] [--steps 20] [--threads N]
 *
 * Median step time over 3 rounds of `steps` steps per mode. Default model: the embedded one (ensureDefaultModel), converted to one shard. Modes:
 * - addon: past_key.{i}/present_key.{i} are the same `[batch, kvHeads, kv, headDim]` tensor; only token ids in,
 *   greedy tokens out;
 * - ort-full: onnxruntime-node with the whole `[batch, kvHeads, kv, headDim]` cache in and `present_*` out;
 * - ort-compact: what ShardWorker does today: a past of exactly the rows' length gathered from JS slots per step,
 *   and only `new_key.{i}`/`new_value.{i}` fetched (the gather is part of the measured time).
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { convertCheckpoint } from "../../src/adapters/llama3/Converter.ts"
import { ensureDefaultModel } from "../../src/adapters/llama3/DefaultModel.ts"
import { type DeviceTensor, type HostTensor, NativeOrt } from "../../src/core/native/NativeOrt.ts"
import { ort } from "../../src/onnx/OrtFloat16Fix.ts"

const { values: flags } = parseArgs({
  options: {
    provider: { type: "string", default: "cpu" }, device: { type: "string", default: "0" }, model: { type: "string" },
    dtype: { type: "string", default: "float32" }, batch: { type: "string", default: "16" }, kv: { type: "string", default: "1024" },
    steps: { type: "string", default: "20" }, threads: { type: "string" }
  }
})
const provider = flags.provider === "cuda" ? "cuda" : "cpu"
const device = Number(flags.device), batch = Number(flags.batch), kv = Number(flags.kv), steps = Number(flags.steps)
const dtype = flags.dtype === "float16" ? "float16" : "float32"
const threads = flags.threads === undefined ? undefined : Number(flags.threads)
const WARMUP = 3

const modelDir = flags.model ?? (await Effect.runPromise(ensureDefaultModel()))
const model = await Effect.runPromise(convertCheckpoint({ modelDir, dtype, shards: 1 }))
const graph = model.shardPaths[0]!
const { numLayers, numKvHeads, headDim } = model.manifest.config
const kvDims = [batch, numKvHeads, kv, headDim]
const kvElems = kvDims.reduce((a, b) => a * b, 1)
const newKvArray = (n: number) => (dtype === "float16" ? new Uint16Array(n) : new Float32Array(n))
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const i64 = (xs: ArrayLike<number>) => BigInt64Array.from(Array.from(xs), (x) => BigInt(x))
// Every row decodes one token after `past` positions; the past grows by one per step and ends just under `kv`.
const firstPast = kv - WARMUP - steps - 1
const smallInputs = (past: number) => ({
  input_ids: { data: i64(Array.from({ length: batch }, (_, r) => 1000 + r)), dims: [batch, 1] },
  position_ids: { data: i64(Array.from({ length: batch }, () => past)), dims: [batch, 1] },
  seqlens_k: { data: Int32Array.from({ length: batch }, () => past), dims: [batch] },
  total_sequence_length: { data: Int32Array.of(past + 1), dims: [] },
  logits_index: { data: new BigInt64Array(batch), dims: [batch, 1] }
})

/**
 * Blocks of `steps` steps per mode (after a warm-up), the modes taking turns for 3 rounds: a block keeps its own
 * working set in cache as a real decode loop would, and the turns spread load from other processes over all modes.
 */
const measure = async (modes: Record<string, (past: number) => void | Promise<void>>) => {
  const ms: Record<string, Array<number>> = Object.fromEntries(Object.keys(modes).map((m) => [m, []]))
  for (let round = 0; round < 3; round++) {
    for (const [name, step] of Object.entries(modes)) {
      for (let s = 0; s < WARMUP + steps; s++) {
        const t0 = performance.now()
        await step(firstPast + s)
        if (s >= WARMUP) ms[name]!.push(performance.now() - t0)
      }
    }
  }
  return Object.fromEntries(Object.entries(ms).map(([m, xs]) => [m, +median(xs).toFixed(3)]))
}

// ---- addon
const native = NativeOrt.load().createSession(graph, {
  provider, deviceId: device, ...(threads === undefined ? {} : { intraOpThreads: threads })
})
const keys = Array.from({ length: numLayers }, () => native.allocate(dtype, kvDims))
const vals = Array.from({ length: numLayers }, () => native.allocate(dtype, kvDims))
const addonStep = (past: number) => {
  const inputs: Record<string, HostTensor | DeviceTensor> = smallInputs(past)
  const outputs: Record<string, DeviceTensor | "host"> = { greedy_token: "host" }
  for (let i = 0; i < numLayers; i++) {
    inputs[`past_key.${i}`] = outputs[`present_key.${i}`] = keys[i]!
    inputs[`past_value.${i}`] = outputs[`present_value.${i}`] = vals[i]!
  }
  native.run(inputs, outputs)
}

// ---- onnxruntime-node
const stock = await ort.InferenceSession.create(graph, {
  executionProviders: provider === "cuda" ? [{ name: "cuda", deviceId: device }] : ["cpu"],
  interOpNumThreads: 1, graphOptimizationLevel: "all", logSeverityLevel: 3,
  ...(threads === undefined ? {} : { intraOpNumThreads: threads })
})
const tensorType = dtype === "float16" ? "float16" : "float32"
const feedsOf = (past: number) =>
  Object.fromEntries(Object.entries(smallInputs(past)).map(([k, v]) => [k, new ort.Tensor(v.data instanceof Int32Array ? "int32" : "int64", v.data, v.dims)]))
const full: Array<Float32Array | Uint16Array> = Array.from({ length: 2 * numLayers }, () => newKvArray(kvElems))
const fullStep = async (past: number) => {
  const feeds: Record<string, ort.Tensor> = feedsOf(past)
  for (let i = 0; i < numLayers; i++) {
    feeds[`past_key.${i}`] = new ort.Tensor(tensorType, full[2 * i]!, kvDims)
    feeds[`past_value.${i}`] = new ort.Tensor(tensorType, full[2 * i + 1]!, kvDims)
  }
  const fetches = ["greedy_token", ...Array.from({ length: numLayers }, (_, i) => [`present_key.${i}`, `present_value.${i}`]).flat()]
  const out = await stock.run(feeds, fetches)
  for (let i = 0; i < numLayers; i++) {
    full[2 * i] = out[`present_key.${i}`]!.data as Float32Array | Uint16Array
    full[2 * i + 1] = out[`present_value.${i}`]!.data as Float32Array | Uint16Array
  }
}
const compactStep = async (past: number) => {
  const feeds: Record<string, ort.Tensor> = feedsOf(past)
  const dims = [batch, numKvHeads, past, headDim]
  for (let i = 0; i < 2 * numLayers; i++) {
    const slots = full[i]!
    const gathered = newKvArray(batch * numKvHeads * past * headDim)
    for (let rh = 0; rh < batch * numKvHeads; rh++) gathered.set(slots.subarray(rh * kv * headDim, (rh * kv + past) * headDim), rh * past * headDim)
    feeds[`${i % 2 === 0 ? "past_key" : "past_value"}.${i >> 1}`] = new ort.Tensor(tensorType, gathered, dims)
  }
  await stock.run(feeds, ["greedy_token", ...Array.from({ length: numLayers }, (_, i) => [`new_key.${i}`, `new_value.${i}`]).flat()])
}

const stepMs = await measure({ addon: addonStep, ortFull: fullStep, ortCompact: compactStep })
native.release()
await stock.release()

const kvMiB = (2 * numLayers * kvElems * (dtype === "float16" ? 2 : 4)) / 2 ** 20
console.log(JSON.stringify({
  model: path.basename(modelDir), graph: path.relative(process.cwd(), graph), provider, dtype, batch, kvPositions: kv,
  pastAtFirstTimedStep: firstPast + WARMUP, kvCacheMiB: Math.round(kvMiB * 10) / 10, steps,
  stepMs
}, null, 2))
if (fs.existsSync("/proc/cpuinfo") && provider === "cpu") {
  console.log(`cpu: ${fs.readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? "?"}, ${(await import("node:os")).availableParallelism()} threads`)
}
