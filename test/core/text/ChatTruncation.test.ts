import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import type { ChatMessage } from "../../../src/core/text/ChatMessage.ts"
import { fitChat } from "../../../src/core/text/ChatTruncation.ts"

/** One token per character plus 4 per message (a header) plus 5 (BOS and generation prompt). */
const count = (messages: ReadonlyArray<ChatMessage>): number =>
  5 + messages.reduce((sum, m) => sum + 4 + m.content.length, 0)

const msg = (role: ChatMessage["role"], content: string): ChatMessage => ({ role, content })

const chat: ReadonlyArray<ChatMessage> = [
  msg("system", "sys"), // 7
  msg("user", "u1-aaaaaa"), // 13
  msg("assistant", "a1-aaaaaa"), // 13
  msg("user", "u2-aaaaaa"), // 13
  msg("assistant", "a2-aaaaaa"), // 13
  msg("user", "u3") // 6
] // total 5 + 65 = 70

const fit = (messages: ReadonlyArray<ChatMessage>, budget: number, counter = count) =>
  Effect.runPromise(fitChat(messages, budget, (m) => Effect.sync(() => counter(m))))

describe("fitChat", () => {
  it("returns the chat unchanged when it fits", async () => {
    expect(count(chat)).toBe(70)
    expect(await fit(chat, 70)).toEqual(chat)
  })

  it("drops the fewest oldest non-system messages and keeps the system prompt", async () => {
    expect(await fit(chat, 69)).toEqual([chat[0], ...chat.slice(2)]) // 57
    expect(await fit(chat, 57)).toEqual([chat[0], ...chat.slice(2)])
    expect(await fit(chat, 56)).toEqual([chat[0], ...chat.slice(3)]) // 44
    expect(await fit(chat, 18)).toEqual([chat[0], chat[5]]) // 5 + 7 + 6 = 18
  })

  it("truncates a chat without a system prompt", async () => {
    expect(await fit(chat.slice(1), 30)).toEqual([chat[4], chat[5]]) // 5 + 13 + 6 = 24
  })

  it("keeps system messages where they were", async () => {
    const midSystem = [chat[1], chat[2], msg("system", "be brief"), chat[3], chat[5]]
    expect(await fit(midSystem, 5 + 12 + 13 + 6)).toEqual([midSystem[2], chat[3], chat[5]])
  })

  it("keeps the last user message and an assistant prefill after it", async () => {
    const prefill = [...chat, msg("assistant", "Sure")]
    expect(await fit(prefill, 26)).toEqual([chat[0], chat[5], prefill[6]]) // 5 + 7 + 6 + 8
  })

  it("fails with the token counts when the system prompt and last message do not fit", async () => {
    const error = await Effect.runPromise(Effect.flip(fitChat(chat, 17, (m) => Effect.sync(() => count(m)))))
    expect(error._tag).toBe("ContextLengthError")
    expect(error.promptTokens).toBe(18)
    expect(error.contextLength).toBe(17)
    expect(error.message).toContain("18 tokens")
    expect(error.message).toContain("17")
  })

  it("counts the formatted chat O(log n) times for a long chat", async () => {
    const long = [msg("system", "s"), ...Array.from({ length: 400 }, (_, i) => msg(i % 2 ? "assistant" : "user", "xxxx"))]
    let calls = 0
    const counted = (messages: ReadonlyArray<ChatMessage>) => {
      calls++
      return count(messages)
    }
    const kept = await fit(long, 5 + 5 + 8 * 10, counted)
    expect(kept).toEqual([long[0], ...long.slice(-10)])
    expect(calls).toBeLessThanOrEqual(2 + Math.ceil(Math.log2(400)) + 1)
  })
})
