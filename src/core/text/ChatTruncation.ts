/**
 * Fitting a long chat into the prompt budget. A chat that no longer fits is truncated from the left: the system
 * messages stay, the oldest other messages go, and the tail from the last user message on always stays (the
 * policy of AIME's Llama 3 chat worker). Tokens are counted on the whole formatted chat, because the template
 * adds per-message overhead (headers, BOS, the generation prompt) that a per-message count would miss.
 */
import { Effect } from "effect"
import { ContextLengthError } from "../Errors.ts"
import type { ChatMessage } from "./ChatMessage.ts"

/** Token count of the prompt that `messages` format to (tokenizing may run elsewhere, and fail). */
export type CountChatTokens<E> = (messages: ReadonlyArray<ChatMessage>) => Effect.Effect<number, E>

/**
 * How many of the oldest non-system messages may go: all before the last user message (and any assistant prefill
 * after it), which is the request itself.
 */
export const droppableMessages = (messages: ReadonlyArray<ChatMessage>): number => {
  const rest = messages.filter((m) => m.role !== "system")
  let lastUser = rest.length - 1
  while (lastUser > 0 && rest[lastUser].role !== "user") lastUser--
  return Math.max(lastUser, 0)
}

/** The chat without its `drop` oldest non-system messages; system messages stay where they were. */
export const dropOldest = (messages: ReadonlyArray<ChatMessage>, drop: number): ChatMessage[] => {
  let seen = 0
  return messages.filter((m) => m.role === "system" || seen++ >= drop)
}

export const fitChat = <E>(
  messages: ReadonlyArray<ChatMessage>,
  budgetTokens: number,
  countTokens: CountChatTokens<E>
): Effect.Effect<ChatMessage[], ContextLengthError | E> =>
  Effect.gen(function*() {
    const total = yield* countTokens(messages)
    if (total <= budgetTokens) return [...messages]

    const minimal = droppableMessages(messages)
    const keep = (drop: number) => dropOldest(messages, drop)
    const minimalTokens = yield* countTokens(keep(minimal))
    if (minimalTokens > budgetTokens) {
      return yield* Effect.fail(
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
      if ((yield* countTokens(keep(mid))) <= budgetTokens) hi = mid
      else lo = mid + 1
    }
    return keep(hi)
  })
