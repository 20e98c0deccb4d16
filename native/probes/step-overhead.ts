/**
 * Where a decode step's time goes outside ONNX Runtime's `run`, one sequence at a time (the single-stream case):
 * each step's time on the shards (hand-off to answer), the worker thread's busy time within it and, of that, `run`
 * (graph replay or run, and the token download). So: hand-off and return between the engine and the worker thread
 * (shards - busy), the worker's own work around `run` (busy - run: inputs, uploads, sampling, the answer), and the
 * engine loop between steps.
 *
 *   node native/probes/step-overhead.ts [--model DIR] [--device cpu|cuda:0] [--tokens 256] [--dtype float32|float16] [--cuda-graphs]
 *     [--quantize b128-sym] [--linear-kernels auto|ort|chorus] [--streams N]
 *
 * `--streams N` runs N sequences at once (a decode step of N rows once their 8-token prompts are in), for kernel
 * timelines at batch (PHASE=T of scripts/gpu/serving-session.sh runs it under Nsight Systems); the per-step figures
 * are then those of N-row steps.
 */
import { Effect, ManagedRuntime, Stream } from "effect"
import { parseArgs } from "node:util"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { describeQuant, parseQuantVariant } from "../../src/adapters/llama3/Quantization.ts"
import { Engine } from "../../src/core/Engine.ts"
import { silentObserver, type ShardBusy, type StepTiming } from "../../src/core/EngineObserver.ts"
import type { LinearKernels } from "../../src/core/native/CudaOps.ts"
import { parseDevice } from "../../src/core/shard/StepProtocol.ts"

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "test/fixtures/tiny-llama3-a" },
    device: { type: "string", default: "cpu" },
    tokens: { type: "string", default: "256" },
    dtype: { type: "string", default: "float32" },
    "cuda-graphs": { type: "boolean", default: false },
    quantize: { type: "string" },
    "linear-kernels": { type: "string" },
    streams: { type: "string", default: "1" }
  }
})
const quantize = values.quantize === undefined ? undefined : parseQuantVariant(values.quantize)
if (values.quantize !== undefined && quantize === undefined) throw new Error(`--quantize ${values.quantize}: a variant such as b128-sym or b32-zp`)
const linearKernels = values["linear-kernels"] as LinearKernels | undefined
if (linearKernels !== undefined && !["auto", "ort", "chorus"].includes(linearKernels)) throw new Error(`--linear-kernels ${linearKernels}: auto, ort or chorus`)
const streams = Number(values.streams)
if (!Number.isInteger(streams) || streams < 1) throw new Error(`--streams ${values.streams}: a positive integer`)
const parsed = parseDevice(values.device!)
if (parsed === undefined) throw new Error(`--device ${values.device}: cpu or cuda:N`)
const device = parsed.kind === "cuda" && values["cuda-graphs"] ? { ...parsed, options: { enable_cuda_graph: "1" } } : parsed
const tokens = Number(values.tokens)
const timings: Array<StepTiming> = []
const busy: Array<ShardBusy> = []
const runtime = ManagedRuntime.make(Engine.layer(
  Llama3Adapter,
  { modelDir: values.model!, dtype: values.dtype as "float32" | "float16", maxContext: 2048, attention: "fused", ...(quantize === undefined ? {} : { quantize }) },
  { device, nativeRuntime: true, maxNumSeqs: Math.max(4, streams), ...(linearKernels === undefined ? {} : { linearKernels }), observer: { ...silentObserver, stepTiming: (t) => void timings.push(t), shardBusy: (b) => void busy.push(b) } }
))
const generate = () =>
  runtime.runPromise(Engine.use((e) =>
    Effect.all(
      Array.from({ length: streams }, (_, i) =>
        Stream.runCollect(e.generate({ input: { type: "tokens", tokenIds: [1 + i, 2, 3, 4, 5, 6, 7, 8] }, maxTokens: tokens, sampling: { temperature: 0 }, ignoreEos: true }))),
      { concurrency: "unbounded" }
    )
  ).pipe(Effect.asVoid))
await generate() // warm-up: sessions, graphs
timings.length = 0
busy.length = 0
const t0 = performance.now()
await generate()
const wall = performance.now() - t0
await runtime.dispose()
const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN
// Decode steps only: the first step is the prompt.
const steps = timings.slice(1).map((t, i) => ({ ...t, busy: (busy[i + 1]!.endedAt - busy[i + 1]!.startedAt) / 1000 }))
const ms = (f: (s: (typeof steps)[number]) => number) => (median(steps.map(f)) * 1000).toFixed(3)
const setting = [values.dtype, ...(quantize === undefined ? [] : [describeQuant(quantize)]), ...(linearKernels === undefined ? [] : [`--linear-kernels ${linearKernels}`]), ...(values["cuda-graphs"] ? ["CUDA graphs"] : [])].join(", ")
console.log(`${values.model} on ${values.device} (${setting}): ${streams} x ${tokens} tokens in ${wall.toFixed(0)} ms, ${(wall / tokens).toFixed(3)} ms a step`)
console.log(`median ms a decode step: shards ${ms((s) => s.shardsSeconds)}, worker busy ${ms((s) => s.busy)}, run ${ms((s) => s.runSeconds)}`)
console.log(`  hand-off and return ${ms((s) => s.shardsSeconds - s.busy)}, worker around run ${ms((s) => s.busy - s.runSeconds)}, engine between steps ${ms((s) => s.betweenSeconds)}`)
