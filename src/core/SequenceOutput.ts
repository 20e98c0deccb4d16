/**
 * Turns one sequence's sampled token ids into streamed text and decides when it stops: end-of-turn tokens, stop
 * strings (held back across token boundaries), max tokens, the context limit. Runs on the main thread, where text
 * lives; the shard only ever sends token ids.
 */
import type { TextCodec } from "./ModelAdapter.ts"
import type { FinishReason, ValidatedRequest } from "./Request.ts"
import { ByteTokenDecoder } from "./text/ByteTokenDecoder.ts"
import { IncrementalDecoder } from "./text/IncrementalDecoder.ts"
import { StopMatcher } from "./text/StopMatcher.ts"

export interface Finish {
  readonly finishReason: FinishReason
  readonly stopReason: "eos" | "stop_string" | "max_tokens" | "context"
  /** Text held back until now (a pending multi-byte character or stop-string prefix that did not complete). */
  readonly trailingText: string
}

export interface OutputStep {
  readonly text: string
  readonly finish?: Finish
}

export interface SequenceOutput {
  /** Feeds one sampled token; `totalTokens` is prompt + generated so far including this one. */
  readonly push: (tokenId: number, totalTokens: number) => OutputStep
  readonly addPromptLogits: (logits: Float32Array) => void
  readonly promptLogits: Float32Array | undefined
}

export const makeSequenceOutput = (options: {
  readonly codec: TextCodec
  readonly request: ValidatedRequest
  readonly stopTokenIds: ReadonlyArray<number>
  readonly contextLength: number
}): SequenceOutput => {
  const { request, contextLength } = options
  const stopIds = new Set(request.ignoreEos ? [] : options.stopTokenIds)
  const tokenBytes = options.codec.tokenBytes
  const decoder = tokenBytes !== undefined
    ? new ByteTokenDecoder(tokenBytes)
    : new IncrementalDecoder(options.codec, { context: Array.from(request.promptTokenIds) })
  const matcher = new StopMatcher(request.stop)
  let generated = 0
  let promptLogits: Float32Array | undefined

  const rest = () => matcher.push(decoder.flush()).emit + matcher.flush()

  return {
    push: (tokenId, totalTokens) => {
      generated++
      if (stopIds.has(tokenId)) return { text: "", finish: { finishReason: "stop", stopReason: "eos", trailingText: rest() } }
      const step = matcher.push(decoder.push(tokenId))
      if (step.stopped) return { text: step.emit, finish: { finishReason: "stop", stopReason: "stop_string", trailingText: "" } }
      if (generated >= request.maxTokens) {
        return { text: step.emit, finish: { finishReason: "length", stopReason: "max_tokens", trailingText: rest() } }
      }
      if (totalTokens >= contextLength) {
        return { text: step.emit, finish: { finishReason: "length", stopReason: "context", trailingText: rest() } }
      }
      return { text: step.emit }
    },
    addPromptLogits: (logits) => {
      if (promptLogits === undefined) promptLogits = logits
      else {
        const joined = new Float32Array(promptLogits.length + logits.length)
        joined.set(promptLogits)
        joined.set(logits, promptLogits.length)
        promptLogits = joined
      }
    },
    get promptLogits() {
      return promptLogits
    }
  }
}
