/**
 * Turns one sequence's sampled token ids into streamed text and finishes it: on the scheduler's token stop (end of
 * turn, max tokens, context: `StopRule.ts`) or on a stop string, the one stop that needs the text (held back across
 * token boundaries). Runs on the main thread, where text lives; the shard only ever sends token ids.
 */
import type { TextCodec } from "./ModelAdapter.ts"
import type { FinishReason, ValidatedRequest } from "./Request.ts"
import type { TokenStop } from "./StopRule.ts"
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
  /** Feeds one sampled token and the scheduler's verdict on it (a token stop, or undefined to go on). */
  readonly push: (tokenId: number, stop: TokenStop | undefined) => OutputStep
  readonly addPromptLogits: (logits: Float32Array) => void
  readonly promptLogits: Float32Array | undefined
}

export const makeSequenceOutput = (options: {
  readonly codec: TextCodec
  readonly request: ValidatedRequest
}): SequenceOutput => {
  const { request } = options
  const tokenBytes = options.codec.tokenBytes
  const decoder = tokenBytes !== undefined
    ? new ByteTokenDecoder(tokenBytes)
    : new IncrementalDecoder(options.codec, { context: Array.from(request.promptTokenIds) })
  const matcher = new StopMatcher(request.stop)
  let promptLogits: Float32Array | undefined

  const rest = () => matcher.push(decoder.flush()).emit + matcher.flush()

  return {
    push: (tokenId, stop) => {
      // An end-of-turn token is not text.
      if (stop === "eos") return { text: "", finish: { finishReason: "stop", stopReason: "eos", trailingText: rest() } }
      const step = matcher.push(decoder.push(tokenId))
      if (step.stopped) return { text: step.emit, finish: { finishReason: "stop", stopReason: "stop_string", trailingText: "" } }
      if (stop !== undefined) return { text: step.emit, finish: { finishReason: "length", stopReason: stop, trailingText: rest() } }
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
