/**
 * Fitting a long chat into the prompt budget. A chat that no longer fits is truncated from the left: the system
 * messages stay, the oldest other messages go, and the tail from the last user message on always stays (the
 * policy of AIME's Llama 3 chat worker). Tokens are counted on the whole formatted chat, because the template
 * adds per-message overhead (headers, BOS, the generation prompt) that a per-message count would miss.
 */
import { Effect } from "effect"
import { ContextLengthError } from "../Errors.ts"
import type { ChatMessage } from "./ChatMessage.ts"

/** Token count of the prompt that `messages` format to. */
export type CountChatTokens = (messages: ReadonlyArray<ChatMessage>) => number

export const fitChat = (
  messages: ReadonlyArray<ChatMessage>,
  budgetTokens: number,
  countTokens: CountChatTokens
): Effect.Effect<ChatMessage[], ContextLengthError> =>
  Effect.suspend(() => {
    const total = countTokens(messages)
    if (total <= budgetTokens) return Effect.succeed([...messages])

    const rest = messages.filter((m) => m.role !== "system")
    // The last user message (and any assistant prefill after it) is the request itself: never dropped.
    let lastUser = rest.length - 1
    while (lastUser > 0 && rest[lastUser].role !== "user") lastUser--
    // Drops the `drop` oldest non-system messages, leaving system messages where they were.
    const keep = (drop: number): ChatMessage[] => {
      let seen = 0
      return messages.filter((m) => m.role === "system" || seen++ >= drop)
    }

    const minimal = Math.max(lastUser, 0)
    const minimalTokens = countTokens(keep(minimal))
    if (minimalTokens > budgetTokens) {
      return Effect.fail(
        new ContextLengthError({
          promptTokens: minimalTokens,
          contextLength: budgetTokens,
          message: `chat prompt needs ${minimalTokens} tokens with only the system prompt and the last user message ` +
            `(${total} with all ${messages.length} messages), but the prompt budget is ${budgetTokens} tokens`
        })
      )
    }
    // Fewer messages never format to more tokens, so the smallest number of dropped messages that fits is found
    // by binary search: O(log n) counts of the formatted chat instead of one per dropped message.
    let lo = Math.min(1, minimal) // dropping 0 does not fit (checked above)
    let hi = minimal // dropping `minimal` fits
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (countTokens(keep(mid)) <= budgetTokens) hi = mid
      else lo = mid + 1
    }
    return Effect.succeed(keep(hi))
  })
