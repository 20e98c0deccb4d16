/**
 * The contract between the engine and a model family. An adapter turns a checkpoint into everything the engine
 * needs — a tokenizer, a prompt format, a shard plan and a runtime (the worker module that executes shard steps) —
 * and holds no scheduling or HTTP code. The Llama 3 adapter (`Llama3Adapter.ts`) is the reference implementation;
 * `examples/custom-adapter.ts` shows another.
 *
 * It lives in core because it is core's interface (what the engine needs from a model): adapters depend on core,
 * never the other way round, so nothing under `src/core` imports from `src/adapters`.
 *
 * @since 0.1.0
 */
import type { Effect, Scope } from "effect"
import type { CheckpointError, ConversionError, GenerationError, ModelConfigError, ValidationError } from "./Errors.ts"
import type { ShardLoad } from "./shard/StepProtocol.ts"
import type { ChatMessage, ToolDefinition } from "./text/ChatMessage.ts"

/** Text <-> token ids, as the engine needs it (detokenization, stop strings, counting). */
export interface TextCodec {
  readonly encode: (text: string) => ReadonlyArray<number>
  readonly decode: (ids: ReadonlyArray<number>, options?: { readonly skipSpecialTokens?: boolean }) => string
  /**
   * Optional fast path for streaming: the bytes of each token (byte-level BPE), undefined for tokens that produce
   * no text. Without it, streaming re-decodes a small window of tokens per step.
   */
  readonly tokenBytes?: ((id: number) => Uint8Array | undefined) | undefined
}

/**
 * How the engine asks for a prompt.
 *
 * @category models
 */
export interface PromptOptions {
  /**
   * Special-token strings in the caller's text (`<|eot_id|>`) become the special tokens. Off (the default of the
   * engine): they are encoded as ordinary text, so only the chat format itself writes control tokens and a message
   * cannot end its turn or forge another one. On for trusted callers only.
   */
  readonly allowSpecialTokens: boolean
  /** Functions the model may call (chat prompts only); the chat format renders them. */
  readonly tools?: ReadonlyArray<ToolDefinition> | undefined
}

/**
 * One shard of the plan: what its worker loads. The engine adds the runtime settings (`maxSeqs`, `maxLen`, `threads`).
 *
 * @category models
 */
export type ShardSpec = Omit<ShardLoad, "maxSeqs" | "maxLen" | "threads" | "device" | "blockSize" | "numBlocks" | "kvMemory">

/**
 * A model ready to run: the result of `ModelAdapter.load`.
 *
 * @category models
 */
export interface LoadedModel {
  /** The name clients use for it (`model` in OpenAI requests). */
  readonly id: string
  /** The most tokens (prompt + generated) one sequence may hold; graphs support no more. */
  readonly contextLength: number
  readonly vocabSize: number
  /** Token ids that end a generation (end of turn, end of text). */
  readonly stopTokenIds: ReadonlyArray<number>
  readonly codec: TextCodec
  /**
   * Prompt token ids of a chat, in the model's own chat format. Prompts may be megabytes long: run the work off the
   * event loop (the Llama 3 adapter uses a worker pool). Fails with a ValidationError when the format refuses the
   * messages.
   */
  readonly formatChat: (
    messages: ReadonlyArray<ChatMessage>,
    options: PromptOptions
  ) => Effect.Effect<ReadonlyArray<number>, ValidationError | GenerationError>
  /** Prompt token ids of a plain completion prompt; off the event loop like `formatChat`. */
  readonly formatCompletion: (text: string, options: PromptOptions) => Effect.Effect<ReadonlyArray<number>, GenerationError>
  /**
   * The most UTF-8 bytes of text one prompt token can stand for (byte-level BPE: the longest vocabulary entry).
   * When given, the engine refuses a prompt whose bytes cannot fit the context before any tokenizer runs.
   */
  readonly maxTokenBytes?: number | undefined
  /** Consecutive layer ranges, first to last; logits and sampling live in the last. */
  readonly shards: ReadonlyArray<ShardSpec>
  /** The runtime factory: the worker module that implements `load` / `step` / `release` of `StepProtocol.ts`. */
  readonly workerUrl: URL
  /** The same contract on an accelerator (device-resident KV cache), used with `--device cuda`; absent: CPU only. */
  readonly deviceWorkerUrl?: URL | undefined
}

/**
 * A model family. `load` resolves a checkpoint (converting it when needed) into a `LoadedModel`. Resources the model
 * needs (worker threads for prompts) live in the scope `load` runs in.
 *
 * @category models
 */
export interface ModelAdapter<Options> {
  readonly name: string
  readonly load: (
    options: Options
  ) => Effect.Effect<LoadedModel, CheckpointError | ModelConfigError | ConversionError, Scope.Scope>
}
