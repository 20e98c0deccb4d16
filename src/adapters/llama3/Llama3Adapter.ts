/**
 * The Llama 3 adapter: Hugging Face checkpoint in, `LoadedModel` out. Converts the checkpoint to ONNX shards (cached
 * on disk, keyed by content and options), loads the real Llama 3 tokenizer and the checkpoint's chat template, and
 * names the generic shard worker as its runtime. Without a model folder it uses the embedded default model.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import * as path from "node:path"
import { moduleUrl } from "../../core/ModuleUrl.ts"
import type { LoadedModel, ModelAdapter } from "../../core/ModelAdapter.ts"
import { convertCheckpoint, type ConvertProgress } from "./Converter.ts"
import { ensureDefaultModel } from "./DefaultModel.ts"
import type { AttentionLayout } from "./GraphBuilder.ts"
import { makeChatRenderer } from "./PromptFormat.ts"
import type { Int4Settings } from "./Quantization.ts"
import { makePromptPool } from "./PromptPool.ts"
import { loadTokenizer } from "./Tokenizer.ts"

/** @category models */
export interface Llama3Options {
  /** A Hugging Face checkpoint folder; omitted: the embedded default model (random weights, real vocabulary). */
  readonly modelDir?: string | undefined
  /** bfloat16 needs the device runtime (`--device cuda`). */
  readonly dtype?: "float32" | "float16" | "bfloat16" | undefined
  /** Split the layers over this many shards (worker threads; GPUs later). Default 1. */
  readonly shards?: number | undefined
  /** Layers per shard (e.g. `planShardsByMemory` for GPUs of different sizes); default: equal counts. */
  readonly layerSplit?: ReadonlyArray<number> | undefined
  /** Longest sequence the graphs support; default min(max_position_embeddings, 8192). */
  readonly maxContext?: number | undefined
  readonly onProgress?: ((progress: ConvertProgress) => void) | undefined
  /**
   * Graph layout: `rotary-outside` for the CPU runtime (default), `fused` for the device runtime (`--device cuda`),
   * whose KV cache is bound in place and which runs fewer, larger kernels.
   */
  readonly attention?: AttentionLayout | undefined
  /** 4-bit weights (`--quantize int4`): MatMulNBits for every linear; omitted: float weights. */
  readonly quantize?: Int4Settings | undefined
  /** With `quantize.search` `activation-clip` (`--quant-calibration`): the text to calibrate on; default: the built-in one. */
  readonly calibrationText?: string | undefined
  /** Threads that render and tokenize prompts off the event loop; default: one per four cores, 1 to 4. */
  readonly promptThreads?: number | undefined
}

const workerUrl = moduleUrl("../../core/shard/ShardWorker.ts", import.meta.url)
const deviceWorkerUrl = moduleUrl("../../core/shard/DeviceShardWorker.ts", import.meta.url)

/** @category models */
export const Llama3Adapter: ModelAdapter<Llama3Options> = {
  name: "llama3",
  load: (options) =>
    Effect.gen(function*() {
      const modelDir = options.modelDir === undefined ? yield* ensureDefaultModel() : path.resolve(options.modelDir)
      const converted = yield* convertCheckpoint({
        modelDir,
        dtype: options.dtype ?? "float32",
        shards: options.shards ?? options.layerSplit?.length ?? 1,
        ...(options.layerSplit === undefined ? {} : { layerSplit: options.layerSplit }),
        ...(options.maxContext === undefined ? {} : { maxContext: options.maxContext }),
        ...(options.attention === undefined ? {} : { attention: options.attention }),
        ...(options.quantize === undefined ? {} : { quantize: options.quantize }),
        ...(options.calibrationText === undefined ? {} : { calibrationText: options.calibrationText }),
        ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress })
      })
      const config = converted.manifest.config
      const prompts = yield* makePromptPool(modelDir, options.promptThreads)
      const tokenizer = yield* loadTokenizer(modelDir)
      // A broken chat template fails the load here, in the caller's thread, with the file named.
      yield* makeChatRenderer(tokenizer)
      yield* prompts.ready
      const stopTokenIds = [...new Set([...config.eosTokenIds, ...tokenizer.eotTokenIds])].filter((id) => id < config.vocabSize)
      const model: LoadedModel = {
        id: options.modelDir === undefined ? "chorus-default-llama3" : path.basename(modelDir),
        contextLength: converted.manifest.maxContext,
        vocabSize: config.vocabSize,
        stopTokenIds,
        codec: tokenizer,
        formatChat: prompts.formatChat,
        formatCompletion: prompts.formatCompletion,
        maxTokenBytes: tokenizer.maxTokenBytes,
        workerUrl,
        deviceWorkerUrl,
        shards: converted.manifest.shards.map((shard) => ({
          graphPath: path.join(converted.dir, shard.file),
          layers: [shard.layers[0], shard.layers[1]] as const,
          isFirst: shard.first,
          isLast: shard.last,
          dtype: converted.manifest.dtype,
          hiddenSize: config.hiddenSize,
          vocabSize: config.vocabSize,
          numKvHeads: config.numKvHeads,
          headDim: config.headDim
        }))
      }
      return model
    })
}
