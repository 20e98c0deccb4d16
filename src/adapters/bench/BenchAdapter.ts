/**
 * The bench adapter: a model whose steps cost no model time, for measuring Chorus's own overhead. Everything but
 * the model math is real — the Llama 3 tokenizer and chat format, the engine, scheduler, shard actors on piscina
 * threads, detokenizer and streaming — so the throughput it reaches is the ceiling the serving path allows.
 * `stepDelayMs` adds a fixed simulated model time per step, spent blocked in the shard threads (`tokenDelayMs` one per
 * token of the step on top, for a compute-bound model whose step grows with its batch); `promptDelayMs` a
 * simulated prompt-processing time per request (a slow tokenizer), during which the request counts as queued.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import { ModelConfigError } from "../../core/Errors.ts"
import { moduleUrl } from "../../core/ModuleUrl.ts"
import { planShards } from "../llama3/Converter.ts"
import { makePromptPool } from "../llama3/PromptPool.ts"
import { loadTokenizer } from "../llama3/Tokenizer.ts"
import type { LoadedModel, ModelAdapter, ShardSpec } from "../../core/ModelAdapter.ts"
import type { BenchShardLoad } from "./BenchWorker.ts"

/** @category models */
export interface BenchOptions {
  /** Longest sequence (prompt + generated). Default 8192. */
  readonly contextLength?: number | undefined
  /** Simulated model time per step in milliseconds, spent in the worker threads (split over shards by layers). Default 0. */
  readonly stepDelayMs?: number | undefined
  /** Simulated model time per token of a step (decode rows and prompt tokens), split over shards likewise. Default 0. */
  readonly tokenDelayMs?: number | undefined
  /** Simulated prompt rendering and tokenizing time per request in milliseconds, after the real tokenizer. Default 0. */
  readonly promptDelayMs?: number | undefined
  /** Worker threads the (notional) 32 layers are split over, like the real adapter. Default 1. */
  readonly shards?: number | undefined
}

/** Llama 3 8B's layer count: shard layer ranges look like the real model's. */
const NUM_LAYERS = 32
const VOCAB_SIZE = 128256

const workerUrl = moduleUrl("./BenchWorker.ts", import.meta.url)

const invalid = (field: string, expected: string, found: unknown) =>
  new ModelConfigError({ path: `BenchOptions.${field}`, message: `BenchOptions.${field}: expected ${expected}, found ${String(found)}` })

const checkOptions = (options: BenchOptions) =>
  Effect.gen(function*() {
    const contextLength = options.contextLength ?? 8192
    const stepDelayMs = options.stepDelayMs ?? 0
    const tokenDelayMs = options.tokenDelayMs ?? 0
    if (!Number.isFinite(tokenDelayMs) || tokenDelayMs < 0) {
      return yield* Effect.fail(invalid("tokenDelayMs", "a finite number >= 0", tokenDelayMs))
    }
    const shards = options.shards ?? 1
    const promptDelayMs = options.promptDelayMs ?? 0
    if (!Number.isInteger(contextLength) || contextLength < 2) {
      return yield* Effect.fail(invalid("contextLength", "an integer >= 2", contextLength))
    }
    if (!Number.isFinite(stepDelayMs) || stepDelayMs < 0) {
      return yield* Effect.fail(invalid("stepDelayMs", "a finite number >= 0", stepDelayMs))
    }
    if (!Number.isFinite(promptDelayMs) || promptDelayMs < 0) {
      return yield* Effect.fail(invalid("promptDelayMs", "a finite number >= 0", promptDelayMs))
    }
    if (!Number.isInteger(shards) || shards < 1 || shards > NUM_LAYERS) {
      return yield* Effect.fail(invalid("shards", `an integer from 1 to ${NUM_LAYERS}`, shards))
    }
    return { contextLength, stepDelayMs, tokenDelayMs, promptDelayMs, shards }
  })

/** @category models */
export const BenchAdapter: ModelAdapter<BenchOptions> = {
  name: "bench",
  load: (options) =>
    Effect.gen(function*() {
      const { contextLength, stepDelayMs, tokenDelayMs, promptDelayMs, shards } = yield* checkOptions(options)
      // The real prompt path (worker threads), so that the bench measures what serving costs.
      const prompts = yield* makePromptPool(undefined)
      const tokenizer = yield* loadTokenizer(undefined)
      yield* prompts.ready
      const specs = planShards(NUM_LAYERS, shards).map(([l0, l1]): ShardSpec => {
        // The worker reads its share of the step time from the extra field; the engine passes specs through whole.
        const spec: Omit<BenchShardLoad, "maxSeqs" | "maxLen" | "threads" | "device" | "blockSize" | "numBlocks" | "kvMemory"> = {
          graphPath: "",
          layers: [l0, l1] as const,
          isFirst: l0 === 0,
          isLast: l1 === NUM_LAYERS,
          dtype: "float32",
          hiddenSize: 8,
          vocabSize: VOCAB_SIZE,
          numKvHeads: 1,
          headDim: 8,
          stepDelayMs: (stepDelayMs * (l1 - l0)) / NUM_LAYERS,
          ...(tokenDelayMs === 0 ? {} : { tokenDelayMs: (tokenDelayMs * (l1 - l0)) / NUM_LAYERS })
        }
        return spec
      })
      const model: LoadedModel = {
        id: "chorus-bench",
        contextLength,
        vocabSize: VOCAB_SIZE,
        stopTokenIds: tokenizer.eotTokenIds,
        codec: tokenizer,
        formatChat: promptDelayMs === 0 ? prompts.formatChat : (...a) => Effect.delay(prompts.formatChat(...a), promptDelayMs),
        formatCompletion: promptDelayMs === 0
          ? prompts.formatCompletion
          : (...a) => Effect.delay(prompts.formatCompletion(...a), promptDelayMs),
        maxTokenBytes: tokenizer.maxTokenBytes,
        shards: specs,
        workerUrl
      }
      return model
    })
}
