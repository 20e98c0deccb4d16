/**
 * Weight-only quantization settings of a conversion: what `--quantize int4` and its companion flags mean, as one
 * value that travels from the CLI through the adapter into the graph builder, the cache key and the manifest.
 */
import { Effect, Schema } from "effect"
import type { QuantBlockSize } from "./MatMulNBitsPacking.ts"

export const Int4Settings = Schema.Struct({
  method: Schema.Literal("int4-rtn"),
  /** Weights per scale (and zero point) along K. */
  blockSize: Schema.Literals([32, 128]),
  /** No zero points: codes are centred on ORT's implicit zero point 8. */
  symmetric: Schema.Boolean,
  /** Quantize the LM head too (it stays in the model dtype otherwise). */
  lmHead: Schema.Boolean,
  /** MatMulNBits `accuracy_level` (CPU only: 4 quantizes activations to int8 for the integer kernels; 0 keeps them float). */
  accuracyLevel: Schema.Literals([0, 4]),
  /**
   * How each block's scale (and zero point) is chosen. `none`: round to nearest over the block's full range.
   * `activation-clip`: the range shrunk by the clip ratio (1.0 down to 0.5) that minimizes the activation-weighted
   * squared error of the block, the weights being the float model's mean x² per input channel over a calibration
   * text (`ActivationStats.ts`): AWQ's "auto clip" with the diagonal of E[x xᵀ] for its output error, and without
   * AWQ's per-channel scaling. Manifests written before the field existed decode as `none`.
   */
  search: Schema.Literals(["none", "activation-clip"]).pipe(Schema.withDecodingDefaultKey(Effect.succeed("none" as const)))
})
export type Int4Settings = typeof Int4Settings.Type

/**
 * Defaults, and why (docs/benchmarks.md "4-bit weights" has the figures, from tools/bench-quant.ts):
 * - block 32: lower logit error than block 128 on both fixtures (mean 0.29 / 0.32 against 0.33 / 0.38) for 0.47 more
 *   bits per weight (4.625 against 4.16 with float16 scales and zero points); bench:gpu measures the speed of both.
 * - zero points (asymmetric): slightly lower mean error than symmetric at the same block size, 1/32 byte per block
 *   more; ORT's own quantizer defaults to them too.
 * - the LM head quantized: at 8B it is 1.05 GB of float16 read at every decode step (a fifth of an int4 step's
 *   bytes), and leaving it float bought little on the fixtures (mean 0.29 -> 0.28).
 * - accuracy level 0: float activations, so the CPU error figures are those of the weights alone (level 4 measured no
 *   different on the fixtures; the CUDA kernels ignore the attribute).
 * - search none: the clip search lowered the fixtures' mean error only 4-10% at block 32 (0.29 -> 0.27, 0.32 -> 0.29),
 *   not measured on a real model yet, and it costs a float32 conversion and a CPU run of the float model.
 */
export const defaultInt4: Int4Settings = { method: "int4-rtn", blockSize: 32, symmetric: false, lmHead: true, accuracyLevel: 0, search: "none" }

export const int4BlockSizes: ReadonlyArray<QuantBlockSize> = [32, 128]

/** A one-line summary for logs and tables: `int4 b32 zp` / `int4 b128 sym` / `int4 b32 zp act-clip`. */
export const describeQuant = (q: Int4Settings | undefined): string =>
  q === undefined
    ? "none"
    : `int4 b${q.blockSize} ${q.symmetric ? "sym" : "zp"}${q.lmHead ? "" : " head-float"}${q.accuracyLevel === 0 ? "" : ` acc${q.accuracyLevel}`}${q.search === "none" ? "" : " act-clip"}`

/**
 * A variant named as the tools name them: `b32-zp`, `b128-sym`, with `-headfloat` (LM head left in the model dtype),
 * `-acc4` (MatMulNBits accuracy level 4: int8 activations on the CPU) and `-actclip` (the activation-weighted clip
 * search over the built-in calibration text); undefined when `name` is not one.
 */
export const parseQuantVariant = (name: string): Int4Settings | undefined => {
  const m = /^b(32|128)-(zp|sym)((?:-headfloat|-acc4|-actclip)*)$/.exec(name.trim())
  if (m === null) return undefined
  return {
    ...defaultInt4,
    blockSize: m[1] === "32" ? 32 : 128,
    symmetric: m[2] === "sym",
    lmHead: !m[3].includes("-headfloat"),
    accuracyLevel: m[3].includes("-acc4") ? 4 : 0,
    search: m[3].includes("-actclip") ? "activation-clip" : "none"
  }
}
