/**
 * Where a decode step's time goes outside ONNX Runtime's `run`, one sequence at a time (the single-stream case):
 * each step's time on the shards (hand-off to answer), the worker thread's busy time within it and, of that, `run`
 * (graph replay or run, and the token download). So: hand-off and return between the engine and the worker thread
 * (shards - busy), the worker's own work around `run` (busy - run: inputs, uploads, sampling, the answer), and the
 * engine loop between steps.
 *
 *   node native/probes/step-overhead.ts [--model DIR] [--device cpu|cuda:0] [--tokens 256] [--dtype float32|float16] [--cuda-graphs]
 */
import { Effect, ManagedRuntime, Stream } from "effect"
import { parseArgs } from "node:util"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../../src/core/Engine.ts"
import { silentObserver, type ShardBusy, type StepTiming } from "../../src/core/EngineObserver.ts"
import { parseDevice } from "../../src/core/shard/StepProtocol.ts"

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "test/fixtures/tiny-llama3-a" },
    device: { type: "string", default: "cpu" },
    tokens: { type: "string", default: "256" },
    dtype: { type: "string", default: "float32" },
    "cuda-graphs": { type: "boolean", default: false }
  }
})
const parsed = parseDevice(values.device!)
if (parsed === undefined) throw new Error(`--device ${values.device}: cpu or cuda:N`)
const device = parsed.kind === "cuda" && values["cuda-graphs"] ? { ...parsed, options: { enable_cuda_graph: "1" } } : parsed
const tokens = Number(values.tokens)
const timings: Array<StepTiming> = []
const busy: Array<ShardBusy> = []
const runtime = ManagedRuntime.make(Engine.layer(
  Llama3Adapter,
  { modelDir: values.model!, dtype: values.dtype as "float32" | "float16", maxContext: 2048, attention: "fused" },
  { device, nativeRuntime: true, maxNumSeqs: 4, observer: { ...silentObserver, stepTiming: (t) => void timings.push(t), shardBusy: (b) => void busy.push(b) } }
))
const generate = () =>
  runtime.runPromise(Engine.use((e) =>
    Stream.runCollect(e.generate({ input: { type: "tokens", tokenIds: [1, 2, 3, 4, 5, 6, 7, 8] }, maxTokens: tokens, sampling: { temperature: 0 }, ignoreEos: true }))
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
console.log(`${values.model} on ${values.device} (${values.dtype}${values["cuda-graphs"] ? ", CUDA graphs" : ""}): ${tokens} tokens in ${wall.toFixed(0)} ms, ${(wall / tokens).toFixed(3)} ms a token`)
console.log(`median ms a decode step: shards ${ms((s) => s.shardsSeconds)}, worker busy ${ms((s) => s.busy)}, run ${ms((s) => s.runSeconds)}`)
console.log(`  hand-off and return ${ms((s) => s.shardsSeconds - s.busy)}, worker around run ${ms((s) => s.busy - s.runSeconds)}, engine between steps ${ms((s) => s.betweenSeconds)}`)
