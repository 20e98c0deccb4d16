import { Schema } from "effect"
import { describe, expect, it } from "vitest"
import { ChatMessage } from "../../../src/core/text/ChatMessage.ts"

describe("ChatMessage", () => {
  it("decodes the four roles and rejects others", () => {
    const decode = Schema.decodeUnknownSync(ChatMessage)
    expect(decode({ role: "user", content: "hi" })).toEqual({ role: "user", content: "hi" })
    expect(decode({ role: "system", content: "" })).toEqual({ role: "system", content: "" })
    expect(decode({ role: "tool", content: "x", toolCallId: "call_1" })).toEqual({ role: "tool", content: "x", toolCallId: "call_1" })
    expect(() => decode({ role: "bot", content: "x" })).toThrow()
    expect(() => decode({ role: "user" })).toThrow()
  })
})
