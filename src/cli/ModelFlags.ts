/**
 * Flags shared by every command that loads a model, and how they become adapter and engine options.
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import { splitRanges } from "../adapters/llama3/Converter.ts"
import type { Llama3Options } from "../adapters/llama3/Llama3Adapter.ts"
import { loadLlamaConfig } from "../adapters/llama3/LlamaConfig.ts"
import { defaultInt4, type Int4Settings } from "../adapters/llama3/Quantization.ts"
import { type FloatDType, planShardsByMemory } from "../adapters/llama3/ShardMemory.ts"
import { ValidationError } from "../core/Errors.ts"
import type { EngineOptions } from "../core/Engine.ts"
import { cudaOpsLibrary, cudaOpsLibraryPath } from "../core/native/CudaOps.ts"
import { countGpus, GpuCountUnavailable } from "../core/native/GpuCount.ts"
import { gpuCountOf, parseDevice } from "../core/shard/StepProtocol.ts"
import type { FlagSpecs, ParsedFlags } from "./Args.ts"
import { ProgressBar } from "./ProgressBar.ts"

const bad = (field: string, message: string) => Effect.fail(new ValidationError({ field, message }))

/** The quantization flags, shared by the model-loading commands and `chorus convert`. */
export const quantFlags = {
  quantize: { kind: "string", description: "int4: 4-bit weights through ONNX Runtime's MatMulNBits (default: float weights)" },
  "quant-block-size": { kind: "integer", description: "with --quantize int4: weights per scale, 32 (default) or 128" },
  "quant-symmetric": { kind: "boolean", description: "with --quantize int4: no zero points (codes centred on 8); default: a zero point per block" },
  "quant-lm-head": { kind: "string", description: "with --quantize int4: on (default) | off, quantize the LM head too" },
  "quant-search": {
    kind: "string",
    description:
      "with --quantize int4: none (default: round to nearest) | activation-clip (each block's range clipped to minimize its error weighted by the float model's mean x^2 per input channel over a calibration text; converts and runs the float32 model once; docs/quantized-checkpoints.md)"
  },
  "quant-calibration": {
    kind: "string",
    description: "with --quant-search activation-clip: a UTF-8 text file to calibrate on (default: a built-in text of about 500 tokens)"
  }
} as const satisfies FlagSpecs

export interface QuantChoice {
  readonly quantize: Int4Settings
  /** `--quant-calibration`'s text; undefined: the built-in one. */
  readonly calibrationText: string | undefined
}

/**
 * `--quantize` and its companions as `Int4Settings` plus the calibration text (undefined: float weights); a
 * ValidationError names the flag.
 */
export const resolveQuantFlags = (flags: ParsedFlags<typeof quantFlags>): Effect.Effect<QuantChoice | undefined, ValidationError> =>
  Effect.gen(function*() {
    const companions = (["quant-block-size", "quant-symmetric", "quant-lm-head", "quant-search", "quant-calibration"] as const).filter((f) => flags[f] !== undefined)
    if (flags.quantize === undefined) {
      if (companions.length > 0) return yield* bad(`--${companions[0]}`, `--${companions[0]} needs --quantize int4`)
      return undefined
    }
    if (flags.quantize !== "int4") return yield* bad("--quantize", `--quantize must be int4, got '${flags.quantize}'`)
    const block = flags["quant-block-size"] ?? defaultInt4.blockSize
    if (block !== 32 && block !== 128) return yield* bad("--quant-block-size", `--quant-block-size must be 32 or 128, got ${block}`)
    const head = flags["quant-lm-head"] ?? "on"
    if (head !== "on" && head !== "off") return yield* bad("--quant-lm-head", `--quant-lm-head must be on or off, got '${head}'`)
    const search = flags["quant-search"] ?? defaultInt4.search
    if (search !== "none" && search !== "activation-clip") {
      return yield* bad("--quant-search", `--quant-search must be none or activation-clip, got '${search}'`)
    }
    const file = flags["quant-calibration"]
    if (file !== undefined && search !== "activation-clip") return yield* bad("--quant-calibration", "--quant-calibration needs --quant-search activation-clip")
    const calibrationText = file === undefined ? undefined : yield* Effect.tryPromise({
      try: () => fs.promises.readFile(file, "utf8"),
      catch: (e) => new ValidationError({ field: "--quant-calibration", message: `--quant-calibration: cannot read ${file}: ${e instanceof Error ? e.message : String(e)}` })
    })
    if (calibrationText !== undefined && calibrationText.trim() === "") {
      return yield* bad("--quant-calibration", `--quant-calibration: ${file} is empty (the calibration needs text)`)
    }
    return {
      quantize: { ...defaultInt4, blockSize: block, symmetric: flags["quant-symmetric"] === true, lmHead: head === "on", search },
      calibrationText
    }
  })

/** How the layers are split over the shards, shared by the model-loading commands and `chorus convert`. */
export const splitFlags = {
  "layer-split": { kind: "list", description: "layers per shard, e.g. 44,36 (default: equal counts)" },
  "gpu-memory": {
    kind: "list",
    description: "GiB of each shard's GPU (whole numbers), e.g. 80,48: splits the layers so that the smallest shard's KV room is largest (GPUs of different sizes; docs/multi-gpu.md)"
  }
} as const satisfies FlagSpecs

/**
 * `--layer-split` / `--gpu-memory` as layers per shard (undefined: equal counts) and the shard count they imply; a
 * ValidationError names the flag. `--gpu-memory` reads the checkpoint's config.json to plan.
 */
export const resolveSplitFlags = (
  flags: ParsedFlags<typeof splitFlags>,
  model: { readonly dir: string | undefined; readonly dtype: FloatDType; readonly shards: number | undefined; readonly utilization: number | undefined }
): Effect.Effect<{ readonly shards: number | undefined; readonly layerSplit: ReadonlyArray<number> | undefined }, ValidationError> =>
  Effect.gen(function*() {
    const split = flags["layer-split"]
    const memory = flags["gpu-memory"]
    if (split === undefined && memory === undefined) return { shards: model.shards, layerSplit: undefined }
    if (split !== undefined && memory !== undefined) return yield* bad("--gpu-memory", "give --layer-split or --gpu-memory, not both")
    const [flag, values] = split !== undefined ? ["--layer-split", split] as const : ["--gpu-memory", memory!] as const
    if (model.shards !== undefined && values.length !== model.shards) {
      return yield* bad(flag, `${flag} lists ${values.length} value(s) for ${model.shards} shard(s); give one per shard`)
    }
    if (model.dir === undefined) return yield* bad(flag, `${flag} needs --model (the split is checked against its layers)`)
    const config = yield* loadLlamaConfig(model.dir).pipe(Effect.mapError((e) => new ValidationError({ field: flag, message: `${flag}: ${e.message}` })))
    if (split !== undefined) {
      const layers = yield* Effect.try({
        try: () => splitRanges(config.numLayers, split.length, split).map(([l0, l1]) => l1 - l0),
        catch: (e) => new ValidationError({ field: flag, message: `--layer-split: ${e instanceof Error ? e.message : String(e)}` })
      })
      return { shards: layers.length, layerSplit: layers }
    }
    if (memory!.some((g) => !(g > 0))) return yield* bad(flag, `--gpu-memory takes positive GiB per GPU, got ${memory!.join(",")}`)
    const layers = yield* Effect.try({
      try: () => planShardsByMemory(config, model.dtype, memory!.map((g) => g * 2 ** 30), model.utilization ?? 0.9),
      catch: (e) => new ValidationError({ field: flag, message: `--gpu-memory: ${e instanceof Error ? e.message : String(e)}` })
    })
    return { shards: layers.length, layerSplit: layers }
  })

export const modelFlags = {
  model: { kind: "string", description: "Hugging Face Llama 3 checkpoint folder (default: the embedded small model)" },
  dtype: { kind: "string", description: "float32 | float16 | bfloat16 (default float32; bfloat16 with --device cuda)" },
  shards: {
    kind: "integer",
    description: "split the layers over N shard workers (default: one per GPU that --device lists, else 1)"
  },
  "pipeline-depth": {
    kind: "integer",
    description: "steps on the shards at once (micro-batches: while shard k+1 runs one, shard k runs the next); default: on CUDA the number of distinct GPUs the shards are on, on the CPU the shard count; 1: one step at a time"
  },
  "max-batch": { kind: "integer", description: "most sequences decoding together (default 16)" },
  "context-length": { kind: "integer", description: "tokens per sequence (default: the model's, at most 8192)" },
  "max-num-batched-tokens": {
    kind: "integer",
    description: "tokens per engine step, decodes plus prompt chunks (default 8192 on cuda, 512 on cpu; at least --max-batch)"
  },
  "block-size": { kind: "integer", description: "tokens per KV-cache block (default 16; a power of two >= 16 on cuda)" },
  "gpu-memory-utilization": {
    kind: "number",
    description: "with --device cuda: fraction of GPU memory for weights, activations and the KV cache (default 0.9)"
  },
  "num-gpu-blocks": { kind: "integer", description: "KV-cache blocks, overriding the size from free memory" },
  "no-prefix-caching": { kind: "boolean", description: "do not reuse the KV blocks of cached prompt prefixes" },
  device: {
    kind: "string",
    description: "cpu (default) | cuda | cuda:N | cuda:A,B,... (shard i on the i-th listed GPU) | cuda:all (every GPU nvidia-smi -L lists, or CUDA_VISIBLE_DEVICES names); cuda needs npm run build:native and the CUDA EP (docs/multi-gpu.md)"
  },
  "cuda-graphs": { kind: "boolean", description: "with --device cuda: replay greedy decode steps from a captured CUDA graph" },
  attention: {
    kind: "string",
    description: "with --device cuda: fused (default: one row per sequence, GroupQueryAttention; float32 always) | paged (block pool with prefix caching through ORT's PagedAttention, float16/bfloat16; slower decode in ORT 1.29, see docs/benchmarks.md). Env CHORUS_ATTENTION sets the default"
  },
  "linear-kernels": {
    kind: "string",
    description: "with --device cuda: auto (default: where npm run build:cuda-ops built its library, Chorus's float16 GEMV up to 2 rows with the MLP's SwiGLU inside, and Chorus's greedy ArgMax and SwiGLU kernels for float16 and int4 models (on an H200: the GEMV 5-8% more tok/s at one stream, the ArgMax and SwiGLU 7% less GPU time a step); ONNX Runtime's kernels otherwise, and for the 4-bit linears) | ort (ONNX Runtime's kernels only) | chorus (the library required, float16: the GEMV, and Chorus's tensor-core 4-bit kernel for int4 models, on an H200 faster than ort at 64 streams and slower at one; docs/native.md)"
  },
  "decode-attention": {
    kind: "string",
    description: "with --device cuda and the fused layout: xqa (default: TensorRT-LLM's XQA decode kernel in ORT) | flash (flash decoding) | chorus (experimental: Chorus's own attention kernel, npm run build:cuda-ops, float16; on an H200 0-4% faster than xqa at one stream, -2% to +8% at 64, docs/native.md); xqa and flash set ORT_ENABLE_XQA for the process, whose value stands when the flag is absent"
  },
  "allow-special-tokens": {
    kind: "boolean",
    description: "parse special tokens (<|eot_id|>) written in prompts and messages; default: they are plain text"
  },
  "cuda-option": {
    kind: "string",
    repeatable: true,
    description: "with --device cuda: a CUDA EP option KEY=VALUE (gpu_mem_limit, arena_extend_strategy, cudnn_conv_algo_search, use_tf32, ...)"
  },
  ...quantFlags,
  ...splitFlags
} as const satisfies FlagSpecs

/**
 * The flags as adapter and engine options, or a ValidationError naming the flag. `gpuCount` answers `--device cuda:all`
 * (asked only then; tests pass their own).
 */
export const resolveModelFlags = (flags: ParsedFlags<typeof modelFlags>, gpuCount: () => number = countGpus) =>
  Effect.gen(function*() {
    const dtype = flags.dtype ?? "float32"
    if (dtype !== "float32" && dtype !== "float16" && dtype !== "bfloat16") {
      return yield* bad("--dtype", `--dtype must be float32, float16 or bfloat16, got '${dtype}'`)
    }
    if (flags.shards !== undefined && flags.shards < 1) return yield* bad("--shards", `--shards must be at least 1, got ${flags.shards}`)
    if (flags["max-batch"] !== undefined && flags["max-batch"] < 1) {
      return yield* bad("--max-batch", `--max-batch must be at least 1, got ${flags["max-batch"]}`)
    }
    if (flags["context-length"] !== undefined && flags["context-length"] < 2) {
      return yield* bad("--context-length", `--context-length must be at least 2, got ${flags["context-length"]}`)
    }
    const tokens = flags["max-num-batched-tokens"]
    if (tokens !== undefined && tokens < 1) return yield* bad("--max-num-batched-tokens", `--max-num-batched-tokens must be at least 1, got ${tokens}`)
    // Every running sequence takes a token a step, so the engine would raise a smaller budget to the batch (vLLM
    // refuses it the same way); said here instead of run silently with another number than the one asked for.
    const batch = flags["max-batch"] ?? 16
    if (tokens !== undefined && tokens < batch) {
      return yield* bad("--max-num-batched-tokens", `--max-num-batched-tokens ${tokens} is below --max-batch ${batch}: each running sequence takes a token a step`)
    }
    const blockSize = flags["block-size"]
    if (blockSize !== undefined && (blockSize < 1 || (blockSize & (blockSize - 1)) !== 0)) {
      return yield* bad("--block-size", `--block-size must be a power of two, got ${blockSize}`)
    }
    const util = flags["gpu-memory-utilization"]
    if (util !== undefined && !(util > 0 && util <= 1)) {
      return yield* bad("--gpu-memory-utilization", `--gpu-memory-utilization must be in (0, 1], got ${util}`)
    }
    const blocks = flags["num-gpu-blocks"]
    if (blocks !== undefined && blocks < 2) return yield* bad("--num-gpu-blocks", `--num-gpu-blocks must be at least 2, got ${blocks}`)
    const gpus = flags.device === "cuda:all" ? yield* countForAll(gpuCount) : undefined
    const parsed = parseDevice(flags.device ?? "cpu", gpus)
    if (parsed === undefined) return yield* bad("--device", `--device must be cpu, cuda, cuda:N, cuda:A,B,... or cuda:all, got '${flags.device}'`)
    // Shards go to the listed GPUs round robin: fewer shards than GPUs would leave some idle.
    const listedGpus = gpuCountOf(parsed)
    if (flags.shards !== undefined && listedGpus > 1 && flags.shards < listedGpus) {
      return yield* bad("--shards", `--shards ${flags.shards} leaves GPUs idle: --device ${flags.device} lists ${listedGpus}; use at least ${listedGpus} shards or list fewer GPUs`)
    }
    const { shards, layerSplit } = yield* resolveSplitFlags(flags, {
      dir: flags.model,
      dtype,
      shards: flags.shards ?? (listedGpus > 1 ? listedGpus : undefined),
      utilization: util
    })
    const depth = flags["pipeline-depth"]
    if (depth !== undefined && depth < 1) return yield* bad("--pipeline-depth", `--pipeline-depth must be at least 1, got ${depth}`)
    if (depth !== undefined && depth > 1 && (shards ?? 1) === 1) {
      return yield* bad("--pipeline-depth", `--pipeline-depth ${depth} needs --shards 2 or more (one shard runs one step at a time)`)
    }
    if (flags["cuda-graphs"] === true && parsed.kind !== "cuda") return yield* bad("--cuda-graphs", "--cuda-graphs needs --device cuda")
    if (util !== undefined && parsed.kind !== "cuda") return yield* bad("--gpu-memory-utilization", "--gpu-memory-utilization needs --device cuda")
    const cudaOptions: Record<string, string> = {}
    for (const kv of flags["cuda-option"] ?? []) {
      const eq = kv.indexOf("=")
      if (eq <= 0) return yield* bad("--cuda-option", `--cuda-option expects KEY=VALUE, got '${kv}'`)
      cudaOptions[kv.slice(0, eq)] = kv.slice(eq + 1)
    }
    if (flags["cuda-option"] !== undefined && parsed.kind !== "cuda") return yield* bad("--cuda-option", "--cuda-option needs --device cuda")
    if (flags["cuda-graphs"] === true) cudaOptions.enable_cuda_graph = "1"
    const device = parsed.kind === "cuda" && Object.keys(cudaOptions).length > 0 ? { ...parsed, options: cudaOptions } : parsed
    if (dtype === "bfloat16" && device.kind !== "cuda") {
      return yield* bad("--dtype", "--dtype bfloat16 needs --device cuda (the CPU runtime has no bfloat16 kernels)")
    }
    // The device runtime's attention layout: PagedAttention over a block pool where ORT has the kernel (float16 and
    // bfloat16), GroupQueryAttention with a row cache otherwise; the CPU runtime always uses rotary-outside graphs.
    const asked = flags.attention ?? process.env.CHORUS_ATTENTION
    if (asked !== undefined && asked !== "paged" && asked !== "fused") {
      return yield* bad("--attention", `--attention must be paged or fused, got '${asked}'`)
    }
    if (flags.attention !== undefined && device.kind !== "cuda") return yield* bad("--attention", "--attention needs --device cuda")
    if (asked === "paged" && dtype === "float32") {
      return yield* bad("--attention", "--attention paged needs --dtype float16 or bfloat16 (PagedAttention has no float32 kernel)")
    }
    const decodeAttention = flags["decode-attention"]
    if (decodeAttention !== undefined && decodeAttention !== "xqa" && decodeAttention !== "flash" && decodeAttention !== "chorus") {
      return yield* bad("--decode-attention", `--decode-attention must be xqa, flash or chorus, got '${decodeAttention}'`)
    }
    if (decodeAttention !== undefined && device.kind !== "cuda") return yield* bad("--decode-attention", "--decode-attention needs --device cuda")
    if (decodeAttention === "chorus" && dtype !== "float16") return yield* bad("--decode-attention", "--decode-attention chorus needs --dtype float16")
    if (decodeAttention === "chorus" && asked === "paged") return yield* bad("--decode-attention", "--decode-attention chorus needs --attention fused")
    if (decodeAttention === "chorus" && cudaOpsLibrary() === undefined) {
      return yield* bad("--decode-attention", `--decode-attention chorus needs ${cudaOpsLibraryPath()}: build it with npm run build:cuda-ops (nvcc)`)
    }
    const linearKernels = flags["linear-kernels"]
    if (linearKernels !== undefined && linearKernels !== "auto" && linearKernels !== "ort" && linearKernels !== "chorus") {
      return yield* bad("--linear-kernels", `--linear-kernels must be auto, ort or chorus, got '${linearKernels}'`)
    }
    if (linearKernels !== undefined && device.kind !== "cuda") return yield* bad("--linear-kernels", "--linear-kernels needs --device cuda")
    if (linearKernels === "chorus" && dtype !== "float16") return yield* bad("--linear-kernels", "--linear-kernels chorus needs --dtype float16")
    if (linearKernels === "chorus" && cudaOpsLibrary() === undefined) {
      return yield* bad("--linear-kernels", `--linear-kernels chorus needs ${cudaOpsLibraryPath()}: build it with npm run build:cuda-ops (nvcc)`)
    }
    const quant = yield* resolveQuantFlags(flags)
    const attention = device.kind !== "cuda" ? undefined : dtype === "float32" ? "fused" as const : asked ?? "fused"
    const bar = new ProgressBar("converting")
    const adapter: Llama3Options = {
      modelDir: flags.model,
      dtype,
      shards,
      ...(layerSplit === undefined ? {} : { layerSplit }),
      maxContext: flags["context-length"],
      attention,
      ...(quant === undefined ? {} : { quantize: quant.quantize }),
      ...(quant?.calibrationText === undefined ? {} : { calibrationText: quant.calibrationText }),
      onProgress: (p) => bar.update(p)
    }
    const engine: EngineOptions = {
      device,
      ...(flags["max-batch"] === undefined ? {} : { maxNumSeqs: flags["max-batch"] }),
      ...(depth === undefined ? {} : { pipelineDepth: depth }),
      ...(flags["context-length"] === undefined ? {} : { contextLength: flags["context-length"] }),
      ...(tokens === undefined ? {} : { maxNumBatchedTokens: tokens }),
      ...(blockSize === undefined ? {} : { blockSize }),
      ...(util === undefined ? {} : { gpuMemoryUtilization: util }),
      ...(blocks === undefined ? {} : { numBlocks: blocks }),
      ...(flags["no-prefix-caching"] === true ? { enablePrefixCaching: false } : {}),
      ...(decodeAttention === undefined ? {} : { decodeAttention }),
      ...(linearKernels === undefined ? {} : { linearKernels }),
      ...(flags["allow-special-tokens"] === true ? { allowSpecialTokens: true } : {})
    }
    return { adapter, engine, done: () => bar.done() }
  })

/** GPUs for `--device cuda:all`: at least one, or a ValidationError saying why not. */
const countForAll = (gpuCount: () => number) =>
  Effect.gen(function*() {
    const counted = yield* Effect.try({
      try: gpuCount,
      catch: (e) => new ValidationError({ field: "--device", message: `--device cuda:all: ${e instanceof GpuCountUnavailable ? e.message : String(e)}` })
    })
    if (counted < 1) return yield* bad("--device", "--device cuda:all: no GPU found (nvidia-smi -L lists none, or CUDA_VISIBLE_DEVICES is empty)")
    return counted
  })
