// The byte-level streaming decoder must give exactly the tokenizer's own decode, piece by piece.
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { type Llama3Tokenizer, loadTokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import { ByteTokenDecoder, byteLevelTokenBytes } from "../../../src/core/text/ByteTokenDecoder.ts"

let tokenizer: Llama3Tokenizer
beforeAll(async () => {
  tokenizer = await Effect.runPromise(loadTokenizer(undefined))
})

const stream = (ids: ReadonlyArray<number>) => {
  const d = new ByteTokenDecoder(tokenizer.tokenBytes!)
  const pieces = ids.map((id) => d.push(id))
  return { pieces, text: pieces.join("") + d.flush() }
}

describe("ByteTokenDecoder", () => {
  it("the Llama 3 tokenizer offers token bytes; specials have none", () => {
    expect(tokenizer.tokenBytes).toBeDefined()
    expect(tokenizer.tokenBytes!(128009)).toBeUndefined()
    expect(new TextDecoder().decode(tokenizer.tokenBytes!(tokenizer.encode(" hello")[0]!))).toBe(" hello")
    expect(byteLevelTokenBytes("Ġ")).toEqual(Uint8Array.of(32))
  })

  it.each([
    "Hello, world! Ünïcödé, 日本語のテキスト, emoji 🚀👩‍👩‍👧 and math ∑∫.",
    "line one\nline two\ttabbed  double  spaces",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
  ])("streams %j exactly as decode() gives it, never splitting a character", (text) => {
    const ids = tokenizer.encode(text)
    const { pieces, text: streamed } = stream(ids)
    expect(streamed).toBe(tokenizer.decode(ids, { skipSpecialTokens: true }))
    for (const p of pieces) expect(p.includes("\uFFFD")).toBe(false)
  })

  it("matches decode() on random id sequences, including broken UTF-8", () => {
    let seed = 7
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
    for (let round = 0; round < 200; round++) {
      const ids = Array.from({ length: 1 + Math.floor(rand() * 40) }, () => Math.floor(rand() * 128256))
      expect(stream(ids).text).toBe(tokenizer.decode(ids, { skipSpecialTokens: true }))
    }
  })
})
