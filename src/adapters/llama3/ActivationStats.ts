/**
 * Activation statistics for `--quant-search activation-clip`: per quantized linear, the mean of x² over calibration
 * tokens of each of its input channels, measured on the float model itself. The calibration text is tokenized with the
 * model's own tokenizer and cut into sequences; the float32 conversion of the checkpoint (`Converter.ts` makes it, in
 * the cache) runs them through a graph that is the float graph plus one `ReduceSumSquare` output per linear input
 * (`ShardOptions.calibration`), over the same data file, in a worker thread (`CalibrationWorker.ts`).
 */
import { Effect } from "effect"
import * as crypto from "node:crypto"
import * as os from "node:os"
import * as path from "node:path"
import { Piscina } from "piscina"
import { type CheckpointError, ConversionError } from "../../core/Errors.ts"
import { moduleUrl } from "../../core/ModuleUrl.ts"
import { encodeModel } from "../../onnx/OnnxWriter.ts"
import type { CalibrationResult, CalibrationTask } from "./CalibrationWorker.ts"
import { buildShardGraph, graphExternals, sumSquaresName } from "./GraphBuilder.ts"
import type { LlamaConfig } from "./LlamaConfig.ts"
import { loadTokenizer } from "./Tokenizer.ts"

/** Tokens per calibration sequence, BOS included (fewer when the graphs' context is shorter). */
export const CALIBRATION_SEQUENCE = 512
/**
 * Calibration tokens used at most; a longer text is cut (and the log says so). AWQ calibrates on 128 x 512 tokens;
 * the statistic here (a per-channel mean of x²) settles with far fewer, and the float run costs CPU time per token.
 */
export const MAX_CALIBRATION_TOKENS = 16384

export interface CalibrationTokens {
  /** Each starts with BOS. */
  readonly sequences: ReadonlyArray<Int32Array>
  readonly tokens: number
  /** sha256 of the sequences (ids and boundaries): what the conversion's cache key and manifest record. */
  readonly digest: string
}

/**
 * `text` as calibration sequences for `config`'s model: the model's tokenizer (`Tokenizer.ts`; special-token strings
 * in the text are text), cut into runs of `CALIBRATION_SEQUENCE - 1` ids, each after BOS. Ids at or past the
 * model's vocabulary (the test fixtures are random models with small vocabularies and Llama 3's tokenizer) are taken
 * modulo its size, so that any text calibrates any model. A ConversionError when the text gives no token.
 */
export const calibrationTokens = (
  modelDir: string,
  config: LlamaConfig,
  text: string,
  maxContext: number
): Effect.Effect<CalibrationTokens, CheckpointError | ConversionError> =>
  Effect.gen(function*() {
    const tokenizer = yield* loadTokenizer(modelDir)
    const all = tokenizer.encode(text)
    if (all.length === 0) return yield* Effect.fail(new ConversionError({ message: "the calibration text holds no token" }))
    const per = Math.max(1, Math.min(CALIBRATION_SEQUENCE, maxContext) - 1)
    const bos = (config.bosTokenId ?? tokenizer.bosTokenId) % config.vocabSize
    const sequences: Array<Int32Array> = []
    let used = 0
    for (let at = 0; at < all.length && used + 2 <= MAX_CALIBRATION_TOKENS; at += per) {
      const ids = all.slice(at, Math.min(at + per, all.length, at + MAX_CALIBRATION_TOKENS - used - 1))
      const seq = Int32Array.from([bos, ...ids.map((id) => id % config.vocabSize)])
      sequences.push(seq)
      used += seq.length
    }
    if (used - sequences.length < all.length) {
      yield* Effect.logInfo(`chorus: the calibration text has ${all.length} tokens; the first ${used - sequences.length} are used (at most ${MAX_CALIBRATION_TOKENS} with BOS)`)
    }
    const hash = crypto.createHash("sha256")
    for (const s of sequences) hash.update(Int32Array.of(s.length)).update(s)
    return { sequences, tokens: used, digest: hash.digest("hex") }
  })

export interface FloatModel {
  /** The `.onnx.data` of a one-shard float32 rotary-outside conversion of the checkpoint (`convertCheckpoint`). */
  readonly dataFile: string
  /** Its `maxContext` (the RoPE caches' rows, which place the weights in the data file). */
  readonly maxContext: number
}

const workerUrl = moduleUrl("./CalibrationWorker.ts", import.meta.url)

/**
 * The mean x² per input channel of every linear of `config`'s model (`layers.{i}.qkv`, `.o_proj`, `.gate_up`,
 * `.down`, and `lm_head`), keyed by the graph's weight name, over the calibration tokens run through `float`.
 * `threads`: ORT threads of the run (default: one per core).
 */
export const collectActivationStats = (
  config: LlamaConfig,
  float: FloatModel,
  calibration: CalibrationTokens,
  threads: number = os.availableParallelism()
): Effect.Effect<Map<string, Float32Array>, ConversionError> =>
  Effect.gen(function*() {
    const graph = yield* Effect.try({
      try: () => buildShardGraph(config, { layers: [0, config.numLayers], dtype: "float32", maxContext: float.maxContext, calibration: true }),
      catch: (e) => new ConversionError({ message: `cannot build the calibration graph: ${e instanceof Error ? e.message : String(e)}` })
    })
    const linears = graph.weights.filter((w) => graph.outputs.some((o) => o.name === sumSquaresName(w.name)))
    const { options: _options, weights: _weights, ...spec } = graph
    const task: CalibrationTask = {
      model: encodeModel({ ...spec, external: graphExternals(graph, path.basename(float.dataFile)) }),
      folder: path.dirname(float.dataFile),
      outputs: linears.map((w) => sumSquaresName(w.name)),
      sequences: calibration.sequences,
      numLayers: config.numLayers,
      numKvHeads: config.numKvHeads,
      headDim: config.headDim,
      vocabSize: config.vocabSize,
      threads: Math.max(1, Math.floor(threads))
    }
    const started = performance.now()
    const result = yield* Effect.acquireUseRelease(
      Effect.sync(() => new Piscina({ filename: workerUrl.href, minThreads: 1, maxThreads: 1 })),
      (pool) =>
        Effect.tryPromise({
          try: () => pool.run(task) as Promise<CalibrationResult>,
          catch: (e) => new ConversionError({ message: `the calibration worker failed: ${e instanceof Error ? e.message : String(e)}` })
        }),
      // close() lets a run in ORT finish: terminating a thread inside session.run aborts the process
      (pool) => Effect.promise(() => pool.close())
    ).pipe(Effect.uninterruptible)
    if (!result.ok) return yield* Effect.fail(new ConversionError({ message: `the calibration run of the float model failed: ${result.message}` }))
    yield* Effect.logInfo(`chorus: activation statistics of ${linears.length} linears over ${result.tokens} calibration tokens in ${((performance.now() - started) / 1000).toFixed(1)} s`)
    return new Map(linears.map((w, j) => [w.name, Float32Array.from(result.sums[j]!, (s) => s / result.tokens)]))
  })
