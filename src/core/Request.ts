/**
 * What a caller asks the engine for, and what comes back. Protocol layers (CLI, OpenAI, AIME) build a
 * `GenerateRequest`; `Validation.ts` resolves it into a `ValidatedRequest`; the engine streams `GenerationEvent`s.
 *
 * @since 0.1.0
 */
import type { JobView } from "./JobMachine.ts"
import type { SamplingParams } from "./sampling/SamplingParams.ts"
import type { ChatMessage, ToolDefinition } from "./text/ChatMessage.ts"

/** @category models */
export type PromptInput =
  | {
    readonly type: "chat"
    readonly messages: ReadonlyArray<ChatMessage>
    /** Functions the model may call, rendered into the prompt by the model's chat format. */
    readonly tools?: ReadonlyArray<ToolDefinition> | undefined
  }
  | { readonly type: "text"; readonly text: string }
  | { readonly type: "tokens"; readonly tokenIds: ReadonlyArray<number> }

/** @category models */
export interface GenerateRequest {
  readonly input: PromptInput
  /** Most tokens to generate; default: as many as the context allows. */
  readonly maxTokens?: number
  readonly sampling?: Partial<SamplingParams>
  /** Stop strings: generation ends before the first occurrence, which is not returned. */
  readonly stop?: ReadonlyArray<string>
  /** Keep generating past end-of-turn / end-of-text tokens (benchmarks). */
  readonly ignoreEos?: boolean
  /**
   * Return each generated token's logprob and this many most likely alternatives (0..20) with it, in its `Token`
   * event. Computed in the shard from the raw model logits (before temperature and penalties).
   */
  readonly logprobs?: number
  /** Also return float32 logits at the last prompt position (`"last"`) or at every prompt position (`"all"`). */
  readonly promptLogits?: "none" | "last" | "all"
  /** Lower runs first among waiting requests; FIFO within a priority. Default 0. */
  readonly priority?: number
  /** Milliseconds from submission after which the request ends with DeadlineExceeded; default: the engine's. */
  readonly timeoutMs?: number
}

/** A request with defaults applied, ranges checked and the prompt tokenized. The scheduler accepts nothing else. */
export interface ValidatedRequest {
  readonly promptTokenIds: Int32Array
  readonly maxTokens: number
  readonly sampling: SamplingParams
  readonly stop: ReadonlyArray<string>
  readonly ignoreEos: boolean
  readonly promptLogits: "none" | "last" | "all"
  /** Top alternatives to return with each token's logprob; absent: no logprobs. */
  readonly logprobs?: number
  /** Messages dropped from the front of a chat to fit the context. */
  readonly truncatedMessages: number
  readonly priority: number
  /** Milliseconds after submission; Infinity for none. */
  readonly timeoutMs: number
}

/** A sampled token's logprob (natural log, over the raw model logits) and the most likely ids at its position. */
export interface TokenLogprobs {
  readonly logprob: number
  /** Most likely first. */
  readonly top: ReadonlyArray<{ readonly tokenId: number; readonly logprob: number }>
}

/** Why a generation ended: `stop` (end-of-turn token or stop string) or `length` (max tokens or context). */
export type FinishReason = "stop" | "length"

export interface Usage {
  readonly promptTokens: number
  readonly completionTokens: number
}

/** @category models */
export type GenerationEvent =
  | {
    /** First event: the request is accepted and waiting; `requestId` names it for `Engine.queuePosition`. */
    readonly _tag: "Queued"
    readonly requestId: number
    /** The job's lifecycle machine: where its state (queued, prefilling, decoding, done, ...) is to be read. */
    readonly job: JobView
  }
  | {
    readonly _tag: "Started"
    readonly promptTokens: number
    /** Present when the request asked for prompt logits: `[positions, vocab]` float32. */
    readonly promptLogits?: Float32Array
    /** With `promptLogits`: the prompt's token ids (position i's logits predict token i + 1). */
    readonly promptTokenIds?: Int32Array
  }
  | {
    readonly _tag: "Token"
    readonly tokenId: number
    /** New text this token completes (may be empty while a multi-byte character or a possible stop string is pending). */
    readonly text: string
    /** When the request asked for logprobs: this token's, and the top alternatives'. */
    readonly logprobs?: TokenLogprobs
  }
  | {
    readonly _tag: "Finished"
    readonly finishReason: FinishReason
    /** Finer reason: `eos`, `stop_string`, `max_tokens` or `context`. */
    readonly stopReason: "eos" | "stop_string" | "max_tokens" | "context"
    /** Trailing text held back until the end (an incomplete stop-string prefix). */
    readonly text: string
    readonly usage: Usage
  }
