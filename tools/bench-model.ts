/**
 * `npm run bench:model`: prompt and generated tokens/s of a model on this machine at several batch sizes.
 * Default: the embedded model on the CPU, batches 1, 4 and 16, 128-token prompts, 128 generated tokens, greedy, median of 3.
 *
 *   node tools/bench-model.ts [--model DIR] [--quantize b32-zp|b128-sym|...] [--batches 1,4,16] [--prompt-len 128] [--gen-len 128] [--repeat 3] [--json FILE] [--chart FILE.svg]
 */
import { Effect, Layer, ManagedRuntime, Scope, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import { Llama3Adapter } from "../src/adapters/llama3/Llama3Adapter.ts"
import { describeQuant, parseQuantVariant } from "../src/adapters/llama3/Quantization.ts"
import { Engine } from "../src/core/Engine.ts"
import type { GenerateRequest } from "../src/core/Request.ts"
import { parseDevice } from "../src/core/shard/StepProtocol.ts"
import { renderBarChart } from "../src/bench/SvgChart.ts"
import { parseToolFlags, toolScript } from "./ToolFlags.ts"

const flags = parseToolFlags(toolScript("bench-model.ts"), "[options]", {
  model: { kind: "string", description: "checkpoint folder (default: embedded model)" },
  batches: { kind: "list", description: "batch sizes" },
  "prompt-len": { kind: "integer", description: "prompt tokens per sequence" },
  "gen-len": { kind: "integer", description: "generated tokens per sequence" },
  repeat: { kind: "integer", description: "measurements per batch size; the median is reported" },
  device: { kind: "string", description: "cpu (default) | cuda | cuda:N" },
  native: { kind: "boolean", description: "CPU shards through the native IO-binding runtime (npm run build:native)" },
  dtype: { kind: "string", description: "float32 (default) | float16" },
  quantize: { kind: "string", description: "int4 weights, a tools/bench-quant.ts variant: b32-zp, b128-sym, ... (default: float)" },
  json: { kind: "string", description: "write the results here" },
  chart: { kind: "string", description: "write an SVG bar chart here" }
})
const batches = flags.batches ?? [1, 4, 16]
const promptLen = flags["prompt-len"] ?? 128
const genLen = flags["gen-len"] ?? 128
const repeat = flags.repeat ?? 3
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

// Deterministic prompts of ordinary-word ids, different per sequence so no two rows are identical.
const prompt = (i: number) => Array.from({ length: promptLen }, (_, j) => 1000 + ((i * 7919 + j * 104729) % 50000))

const request = (i: number, maxTokens: number): GenerateRequest => ({
  input: { type: "tokens", tokenIds: prompt(i) },
  maxTokens,
  sampling: { temperature: 0 },
  ignoreEos: true
})

const main = async () => {
  const device = parseDevice(flags.device ?? "cpu")
  if (device === undefined) throw new Error(`--device must be cpu, cuda or cuda:N, got '${flags.device}'`)
  const dtype = flags.dtype === "float16" ? "float16" : "float32"
  // The model's prompt workers live as long as this process: its scope is never closed.
  const modelScope = Effect.runSync(Scope.make())
  const quantize = flags.quantize === undefined ? undefined : parseQuantVariant(flags.quantize)
  if (flags.quantize !== undefined && quantize === undefined) throw new Error(`--quantize: '${flags.quantize}' is not b32|b128 - zp|sym [-headfloat] [-acc4]`)
  const model = await Effect.runPromise(Llama3Adapter.load({ modelDir: flags.model, dtype, quantize }).pipe(Scope.provide(modelScope)))
  const rows: Array<Record<string, number>> = []
  for (const batch of batches) {
    const runtime = ManagedRuntime.make(Layer.fresh(Engine.layerFor(model, { maxNumSeqs: batch, maxNumBatchedTokens: promptLen, device, nativeRuntime: flags.native === true })))
    const run = (reqs: ReadonlyArray<GenerateRequest>, onStarted?: () => void) =>
      runtime.runPromise(
        Engine.use((engine) =>
          Effect.all(
            reqs.map((r) => Stream.runForEach(engine.generate(r), (e) => Effect.sync(() => e._tag === "Started" && onStarted?.()))),
            { concurrency: "unbounded" }
          )
        )
      )
    // Warm-up at this batch size: session init, first-run allocations, KV slots grown.
    await run(Array.from({ length: batch }, (_, i) => request(1000 + i, 8)))
    const promptRates: Array<number> = []
    const decodeRates: Array<number> = []
    for (let k = 0; k < repeat; k++) {
      // Prompt throughput: prefill only (one generated token each).
      const t = performance.now()
      await run(Array.from({ length: batch }, (_, i) => request(k * 100 + i, 1)))
      promptRates.push((batch * promptLen) / ((performance.now() - t) / 1000))
      // Generation throughput: from the moment every sequence has its first token to the end.
      let started = 0
      let decodeStart = 0
      await run(Array.from({ length: batch }, (_, i) => request(k * 100 + i + 50, genLen)), () => {
        if (++started === batch) decodeStart = performance.now()
      })
      decodeRates.push((batch * (genLen - 1)) / ((performance.now() - decodeStart) / 1000))
    }
    await runtime.dispose()
    const row = {
      batch,
      promptTokensPerSecond: median(promptRates),
      generatedTokensPerSecond: median(decodeRates),
      msPerDecodeStep: (1000 * batch) / median(decodeRates)
    }
    rows.push(row)
    process.stdout.write(
      `batch ${String(batch).padStart(3)}: prompt ${row.promptTokensPerSecond.toFixed(0).padStart(7)} tok/s, generated ${
        row.generatedTokensPerSecond.toFixed(1).padStart(8)
      } tok/s (${row.msPerDecodeStep.toFixed(2)} ms/step)\n`
    )
  }
  const base = rows.find((r) => r.batch === 1)
  const top = rows[rows.length - 1]!
  if (base !== undefined && top !== base) {
    process.stdout.write(`batch ${top.batch} / batch 1 generated tokens/s: ${(top.generatedTokensPerSecond! / base.generatedTokensPerSecond!).toFixed(2)}x\n`)
  }
  const machine = `${os.cpus()[0]?.model ?? "cpu"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`
  const runtime = device.kind === "cuda" ? `cuda:${device.id}` : flags.native === true ? "cpu, native runtime" : "cpu, onnxruntime-node"
  process.stdout.write(`runtime ${runtime}, ${dtype}${quantize === undefined ? "" : `, ${describeQuant(quantize)}`}; model ${model.id}, ${promptLen}-token prompts, ${genLen} generated, greedy, median of ${repeat}; ${machine}\n`)
  if (flags.chart !== undefined) {
    fs.writeFileSync(flags.chart, renderBarChart({
      title: `Chorus on the CPU: ${model.id} (${machine})`,
      groups: rows.map((r) => `batch ${r.batch}`),
      xLabel: "concurrent sequences",
      yLabel: "tokens/s",
      series: [
        { name: "generated tokens/s", values: rows.map((r) => r.generatedTokensPerSecond!) },
        { name: "prompt tokens/s ÷ 10", values: rows.map((r) => r.promptTokensPerSecond! / 10) }
      ]
    }))
  }
  if (flags.json !== undefined) {
    fs.writeFileSync(flags.json, JSON.stringify({ model: model.id, machine, date: new Date().toISOString(), promptLen, genLen, rows }, null, 2))
  }
}

await main()
