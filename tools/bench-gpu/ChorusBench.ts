/**
 * The Chorus side of `npm run bench:gpu`: the PyTorch baseline's workloads run through the public engine API, greedy,
 * `ignoreEos`, timed from the token events a client sees (so host round trips and scheduling are in the numbers).
 *
 * - single stream: a CONTEXT-token prompt and DECODE_STEPS + 1 generated tokens; tokens/s and inter-token latency over
 *   the decode tokens (the first token is the prefill's);
 * - B concurrent: B requests of PROMPT_LEN tokens, GEN_LEN generated each, submitted together; decode tokens/s over the
 *   steady window in which all B sequences decode (from the last first token to the first last token), like the
 *   baseline's lockstep decode; prefill time = until every sequence has its first token;
 * - time to first token: a PROMPT_LEN prompt alone, submit to first token event, median.
 * One engine per concurrency (maxNumSeqs = B) over a model loaded once.
 */
import { Effect, Layer, ManagedRuntime, Scope, Stream } from "effect"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { describeQuant, type Int4Settings } from "../../src/adapters/llama3/Quantization.ts"
import type { LoadedModel } from "../../src/core/ModelAdapter.ts"
import { cudaOpsLibrary, type LinearKernels } from "../../src/core/native/CudaOps.ts"
import type { DecodeAttention } from "../../src/core/native/DecodeAttention.ts"
import { Engine } from "../../src/core/Engine.ts"
import type { GenerateRequest } from "../../src/core/Request.ts"
import type { Device } from "../../src/core/shard/StepProtocol.ts"
import type { ChorusResults } from "./ResultTable.ts"

export interface ChorusBenchOptions {
  readonly modelDir: string
  readonly dtype: "float32" | "float16"
  readonly device: Device
  readonly maxContext: number
  readonly maxBatchedTokens: number
  readonly batches: ReadonlyArray<number>
  readonly promptLen: number
  readonly genLen: number
  readonly context: number
  readonly decodeSteps: number
  readonly ttftRepeats: number
  /** Measurements per row; the median is reported. */
  readonly repeat: number
  /** 4-bit weights (MatMulNBits) instead of float ones; the results carry its `describeQuant` label. */
  readonly quantize?: Int4Settings | undefined
  /** On CUDA: the decode attention kernel and the linears' kernels, as `chorus serve`'s flags pick them. */
  readonly decodeAttention?: DecodeAttention | undefined
  readonly linearKernels?: LinearKernels | undefined
  readonly log: (line: string) => void
  /** Called after every workload with the results so far, so that a run cut short keeps them. */
  readonly onProgress?: (results: ChorusResults) => void
}

/** The benchmark's prompts; llama_torch.py's `prompt_ids` makes the same ids (below Llama 3's special tokens). */
export const benchPrompt = (seq: number, length: number, vocabSize: number): Array<number> => {
  const limit = Math.min(vocabSize, 128000)
  return Array.from({ length }, (_, j) => (seq * 7919 + j * 104729 + 17) % limit)
}

/** The q-th percentile by nearest rank on (n - 1) q / 100, as torch_baseline.py computes it. */
export const percentile = (xs: ReadonlyArray<number>, q: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.round((q / 100) * (s.length - 1))))]!
}

const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/** When a request was submitted and when each of its tokens arrived (performance.now() milliseconds). */
export interface Trace {
  readonly submitted: number
  readonly tokens: ReadonlyArray<number>
}

/** Decode rate and inter-token latency of one stream: the first token is the prefill's, the rest are decode steps. */
export const streamStats = (t: Trace) => {
  if (t.tokens.length < 2) throw new Error(`a stream needs at least 2 tokens to time decode steps, found ${t.tokens.length}`)
  const itl = t.tokens.slice(1).map((x, i) => x - t.tokens[i]!)
  return {
    tokensPerSecond: itl.length / ((t.tokens[t.tokens.length - 1]! - t.tokens[0]!) / 1000),
    itlMeanMs: itl.reduce((a, b) => a + b, 0) / itl.length,
    itlP50Ms: percentile(itl, 50),
    itlP99Ms: percentile(itl, 99),
    prefillMs: t.tokens[0]! - t.submitted
  }
}

/**
 * Aggregate decode rate of concurrent streams over the window where all of them decode: tokens that arrive after the
 * last stream's first token, up to the first stream's last token. Also the overall rate (every decode token over the
 * time from the first first-token to the last token) and the prefill time (first submit to the last first token).
 */
export const concurrentStats = (traces: ReadonlyArray<Trace>) => {
  const firsts = traces.map((t) => t.tokens[0] ?? Number.NaN)
  const lasts = traces.map((t) => t.tokens[t.tokens.length - 1] ?? Number.NaN)
  if (traces.length === 0 || traces.some((t) => t.tokens.length < 2)) {
    throw new Error(`every stream needs at least 2 tokens, found ${traces.map((t) => t.tokens.length).join(",")}`)
  }
  const allStarted = Math.max(...firsts)
  const firstFinished = Math.min(...lasts)
  let steadyTokens = 0
  for (const t of traces) for (const x of t.tokens) if (x > allStarted && x <= firstFinished) steadyTokens++
  const decodeTokens = traces.reduce((n, t) => n + t.tokens.length - 1, 0)
  const overallTokensPerSecond = decodeTokens / ((Math.max(...lasts) - Math.min(...firsts)) / 1000)
  return {
    // A window too short to hold a step (tiny runs) falls back to the overall rate.
    tokensPerSecond: steadyTokens > 0 ? steadyTokens / ((firstFinished - allStarted) / 1000) : overallTokensPerSecond,
    overallTokensPerSecond,
    steadyTokens,
    prefillMs: allStarted - Math.min(...traces.map((t) => t.submitted))
  }
}

const request = (tokenIds: Array<number>, maxTokens: number): GenerateRequest => ({
  input: { type: "tokens", tokenIds },
  maxTokens,
  sampling: { temperature: 0 },
  ignoreEos: true
})

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ").trim()

/** Runs every workload; a workload that fails is recorded with its error and the others still run. */
export const runChorusBench = async (o: ChorusBenchOptions): Promise<ChorusResults> => {
  const t0 = performance.now()
  let lastPercent = -1
  // The model's prompt workers live as long as this process: its scope is never closed.
  const modelScope = Effect.runSync(Scope.make())
  const model: LoadedModel = await Effect.runPromise(Llama3Adapter.load({
    modelDir: o.modelDir,
    dtype: o.dtype,
    maxContext: o.maxContext,
    ...(o.quantize === undefined ? {} : { quantize: o.quantize }),
    // The device runtime binds the KV cache in place: one row per sequence (fused), as `chorus serve` does by default;
    // CHORUS_ATTENTION=paged picks the block pools (half precision only: float32 has no PagedAttention kernel).
    ...(o.device.kind === "cuda"
      ? { attention: o.dtype !== "float32" && process.env.CHORUS_ATTENTION === "paged" ? "paged" as const : "fused" as const }
      : {}),
    onProgress: (p) => {
      const percent = Math.floor((20 * p.bytesDone) / Math.max(1, p.bytesTotal)) * 5
      if (percent !== lastPercent) o.log(`converting: ${percent}% of ${(p.bytesTotal / 1e9).toFixed(2)} GB`)
      lastPercent = percent
    }
  }).pipe(Scope.provide(modelScope)))
  const device = o.device.kind === "cpu" ? "cpu" : `cuda:${o.device.id}`
  const quantize = o.quantize === undefined ? {} : { quantize: describeQuant(o.quantize) }
  // What `auto` (the default) picks depends on whether Chorus's library is built here, so the table says which.
  const linearKernels = o.linearKernels ?? "auto"
  const kernels = [
    ...(o.decodeAttention === undefined ? [] : [`--decode-attention ${o.decodeAttention}`]),
    ...(o.device.kind !== "cuda"
      ? []
      : linearKernels !== "auto"
      ? [`--linear-kernels ${linearKernels}`]
      : [`--linear-kernels auto (${cudaOpsLibrary() === undefined ? "no Chorus library: ORT's kernels" : "Chorus's library built: its GEMV for float16 MatMuls"})`])
  ]
  let results: ChorusResults = {
    device,
    model: model.id,
    dtype: o.dtype,
    ...quantize,
    ...(kernels.length === 0 ? {} : { kernels: kernels.join(" ") }),
    loadSeconds: (performance.now() - t0) / 1000,
    batches: []
  }
  o.log(`loaded ${model.id} (${o.dtype}${o.quantize === undefined ? "" : `, ${describeQuant(o.quantize)}`}) in ${results.loadSeconds.toFixed(1)} s`)
  const update = (patch: Partial<ChorusResults>) => {
    results = { ...results, ...patch }
    o.onProgress?.(results)
  }
  const vocab = model.vocabSize
  let seq = 0
  const prompt = (length: number) => benchPrompt(seq++, length, vocab)

  const engines = [...new Set([1, ...o.batches])]
  for (const batch of engines) {
    // CHORUS_CUDA_GRAPHS=1 replays decode steps from captured CUDA graphs (DeviceShardWorker).
    const device = o.device.kind === "cuda" && process.env.CHORUS_CUDA_GRAPHS === "1"
      ? { ...o.device, options: { ...o.device.options, enable_cuda_graph: "1" } }
      : o.device
    const runtime = ManagedRuntime.make(Layer.fresh(Engine.layerFor(model, {
      device,
      maxNumSeqs: batch,
      maxNumBatchedTokens: o.maxBatchedTokens,
      ...(o.decodeAttention === undefined ? {} : { decodeAttention: o.decodeAttention }),
      ...(o.linearKernels === undefined ? {} : { linearKernels: o.linearKernels })
    })))
    const run = (reqs: ReadonlyArray<GenerateRequest>): Promise<Array<Trace>> =>
      runtime.runPromise(Engine.use((engine) =>
        Effect.all(
          reqs.map((r) =>
            Effect.suspend(() => {
              const trace = { submitted: performance.now(), tokens: [] as Array<number> }
              return Stream.runForEach(engine.generate(r), (e) => Effect.sync(() => e._tag === "Token" && trace.tokens.push(performance.now()))).pipe(
                Effect.as(trace)
              )
            })
          ),
          { concurrency: "unbounded" }
        )
      ))
    const attempt = async <T>(name: string, f: () => Promise<T>): Promise<T | { readonly error: string }> => {
      try {
        return await f()
      } catch (e) {
        o.log(`${name} failed: ${message(e)}`)
        return { error: message(e) }
      }
    }
    const tEngine = performance.now()
    const started = await attempt(`engine with maxNumSeqs ${batch}`, () => run([request(prompt(8), 2)]))
    if ("error" in started) {
      if (batch === 1) update({ singleStream: started, ttft: started })
      if (o.batches.includes(batch)) update({ batches: [...results.batches, { batch, ...started }] })
      await runtime.dispose().catch(() => undefined)
      continue
    }
    o.log(`engine with maxNumSeqs ${batch} ready in ${((performance.now() - tEngine) / 1000).toFixed(1)} s`)

    if (batch === 1) {
      const single = await attempt("single stream", async () => {
        await run([request(prompt(o.context), 4)])
        const runs = []
        for (let k = 0; k < o.repeat; k++) runs.push(streamStats((await run([request(prompt(o.context), o.decodeSteps + 1)]))[0]!))
        return { context: o.context, ...runs.sort((a, b) => a.tokensPerSecond - b.tokensPerSecond)[Math.floor(runs.length / 2)]! }
      })
      update({ singleStream: single })
      o.log(`single stream: ${JSON.stringify(single)}`)
      const ttft = await attempt("time to first token", async () => {
        for (let k = 0; k < 2; k++) await run([request(prompt(o.promptLen), 1)])
        const samples: Array<number> = []
        for (let k = 0; k < o.ttftRepeats; k++) {
          const [t] = await run([request(prompt(o.promptLen), 1)])
          samples.push(t!.tokens[0]! - t!.submitted)
        }
        return { promptLen: o.promptLen, medianMs: median(samples), samplesMs: samples }
      })
      update({ ttft })
      o.log(`time to first token: ${JSON.stringify(ttft)}`)
    }
    if (o.batches.includes(batch)) {
      const row = await attempt(`${batch} concurrent`, async () => {
        await run(Array.from({ length: batch }, () => request(prompt(o.promptLen), 4)))
        const runs = []
        for (let k = 0; k < o.repeat; k++) {
          runs.push(concurrentStats(await run(Array.from({ length: batch }, () => request(prompt(o.promptLen), o.genLen)))))
        }
        return runs.sort((a, b) => a.tokensPerSecond - b.tokensPerSecond)[Math.floor(runs.length / 2)]!
      })
      update({ batches: [...results.batches, { batch, ...row }] })
      o.log(`${batch} concurrent: ${JSON.stringify(row)}`)
    }
    await runtime.dispose()
  }
  return results
}
