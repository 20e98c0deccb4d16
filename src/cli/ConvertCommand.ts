/**
 * `chorus convert`: turn a Hugging Face checkpoint into ONNX shards ahead of time (serving converts on demand and
 * caches; this writes to a folder of your choice).
 */
import { Effect } from "effect"
import { convertCheckpoint } from "../adapters/llama3/Converter.ts"
import { describeCheckpointQuant } from "../adapters/llama3/LlamaConfig.ts"
import { describeQuant } from "../adapters/llama3/Quantization.ts"
import { ValidationError } from "../core/Errors.ts"
import type { FlagSpecs, ParsedFlags } from "./Args.ts"
import { quantFlags, resolveQuantFlags, resolveSplitFlags, splitFlags } from "./ModelFlags.ts"
import { ProgressBar } from "./ProgressBar.ts"

export const convertFlags = {
  model: { kind: "string", description: "Hugging Face Llama 3 checkpoint folder (required)" },
  out: { kind: "string", description: "output folder (required)" },
  dtype: { kind: "string", description: "float32 | float16 | bfloat16 (default float32; bfloat16 runs with --device cuda)" },
  shards: { kind: "integer", description: "split the layers over N shards (default 1)" },
  "context-length": { kind: "integer", description: "longest sequence the graphs support (default min(model's, 8192))" },
  ...quantFlags,
  ...splitFlags
} as const satisfies FlagSpecs

export const runConvert = (flags: ParsedFlags<typeof convertFlags>) =>
  Effect.gen(function*() {
    const bad = (field: string, message: string) => Effect.fail(new ValidationError({ field, message }))
    if (flags.model === undefined) return yield* bad("--model", "--model DIR is required")
    if (flags.out === undefined) return yield* bad("--out", "--out DIR is required")
    const dtype = flags.dtype ?? "float32"
    if (dtype !== "float32" && dtype !== "float16" && dtype !== "bfloat16") {
      return yield* bad("--dtype", `--dtype must be float32, float16 or bfloat16, got '${dtype}'`)
    }
    if (flags.shards !== undefined && flags.shards < 1) return yield* bad("--shards", `--shards must be at least 1, got ${flags.shards}`)
    const chosen = yield* resolveQuantFlags(flags)
    const quantize = chosen?.quantize
    const { shards, layerSplit } = yield* resolveSplitFlags(flags, { dir: flags.model, dtype, shards: flags.shards, utilization: undefined })
    const bar = new ProgressBar("converting")
    const started = performance.now()
    const converted = yield* convertCheckpoint({
      modelDir: flags.model,
      outDir: flags.out,
      dtype,
      shards: shards ?? 1,
      ...(layerSplit === undefined ? {} : { layerSplit }),
      ...(flags["context-length"] === undefined ? {} : { maxContext: flags["context-length"] }),
      ...(quantize === undefined ? {} : { quantize }),
      ...(chosen?.calibrationText === undefined ? {} : { calibrationText: chosen.calibrationText }),
      onProgress: (p) => bar.update(p)
    })
    bar.done()
    const seconds = ((performance.now() - started) / 1000).toFixed(1)
    const fromCheckpoint = converted.manifest.config.quantization
    const quant = quantize !== undefined ? `, ${describeQuant(quantize)}` : fromCheckpoint !== undefined ? `, ${describeCheckpointQuant(fromCheckpoint)} from the checkpoint` : ""
    process.stdout.write(`converted ${flags.model} -> ${converted.dir} (${converted.manifest.shards.length} shard(s), ${dtype}${quant}, ${seconds} s)\n`)
  })
