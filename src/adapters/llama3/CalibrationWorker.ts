/**
 * The calibration run of `--quant-search activation-clip`, in a piscina thread (ORT's `run` is synchronous and would
 * stall the event loop): the float model's graph with its `sum_squares.*` outputs (`ShardOptions.calibration`) over
 * each calibration sequence, one prefill per sequence from an empty cache, the sums of x² per linear input channel
 * added up over every token. Sums travel back in float64, so the mean taken by the caller does not depend on how the
 * tokens were cut into sequences beyond float32 rounding inside ORT's reductions.
 */
import { maskInputs } from "../../core/shard/StepInputs.ts"
import * as TensorNames from "../../core/shard/TensorNames.ts"
import { ort } from "../../onnx/OrtFloat16Fix.ts"

export interface CalibrationTask {
  /** The encoded float32 graph (one shard, every layer) with its calibration outputs; weights stay in `folder`. */
  readonly model: Uint8Array
  /** Folder of the external data file the graph names. */
  readonly folder: string
  /** Output names to fetch (`sum_squares.<weight>`), each float32 `[K]`. */
  readonly outputs: ReadonlyArray<string>
  /** Token ids, one prefill each (batch 1). */
  readonly sequences: ReadonlyArray<Int32Array>
  readonly numLayers: number
  readonly numKvHeads: number
  readonly headDim: number
  readonly vocabSize: number
  /** ORT intra-op threads. */
  readonly threads: number
}

export type CalibrationResult =
  | { readonly ok: true; readonly sums: ReadonlyArray<Float64Array>; readonly tokens: number }
  | { readonly ok: false; readonly message: string }

const tensor = (h: { readonly data: BigInt64Array | Int32Array | Float32Array | Uint16Array; readonly dims: ReadonlyArray<number> }) =>
  new ort.Tensor(h.data instanceof BigInt64Array ? "int64" : h.data instanceof Int32Array ? "int32" : "float32", h.data, [...h.dims])

export const calibrate = async (task: CalibrationTask): Promise<CalibrationResult> => {
  let session: ort.InferenceSession | undefined
  try {
    session = await ort.InferenceSession.create(task.model, {
      intraOpNumThreads: task.threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: "all",
      logSeverityLevel: 3,
      // a model given as bytes resolves its external data against this folder (not the working directory)
      extra: { session: { model_external_initializers_file_folder_path: task.folder } }
    })
    const sums: Array<Float64Array> = []
    let tokens = 0
    const emptyPast = new ort.Tensor("float32", new Float32Array(0), [1, task.numKvHeads, 0, task.headDim])
    for (const ids of task.sequences) {
      const n = ids.length
      const feeds: Record<string, ort.Tensor> = {
        [TensorNames.inputIds]: new ort.Tensor("int64", BigInt64Array.from(ids, (id) => BigInt(id)), [1, n]),
        [TensorNames.positionIds]: new ort.Tensor("int64", BigInt64Array.from({ length: n }, (_, t) => BigInt(t)), [1, n]),
        [TensorNames.seqlensK]: new ort.Tensor("int32", Int32Array.of(n - 1), [1]),
        [TensorNames.totalSequenceLength]: new ort.Tensor("int32", Int32Array.of(n), []),
        [TensorNames.logitsIndex]: new ort.Tensor("int64", BigInt64Array.of(BigInt(n - 1)), [1, 1])
      }
      for (let i = 0; i < task.numLayers; i++) {
        feeds[TensorNames.pastKey(i)] = emptyPast
        feeds[TensorNames.pastValue(i)] = emptyPast
      }
      for (const [name, input] of Object.entries(maskInputs(task.vocabSize))) feeds[name] = tensor(input)
      const out = await session.run(feeds, [...task.outputs])
      task.outputs.forEach((name, j) => {
        const values = out[name]!.data as Float32Array
        const sum = (sums[j] ??= new Float64Array(values.length))
        for (let c = 0; c < values.length; c++) sum[c] += values[c]
      })
      tokens += n
    }
    return { ok: true, sums, tokens }
  } catch (cause) {
    return { ok: false, message: cause instanceof Error ? cause.message : String(cause) }
  } finally {
    await session?.release()
  }
}

export default calibrate
