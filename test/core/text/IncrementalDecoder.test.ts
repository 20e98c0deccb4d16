import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { loadTokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import type { Llama3Tokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import { IncrementalDecoder } from "../../../src/core/text/IncrementalDecoder.ts"
import type { Detokenizer } from "../../../src/core/text/IncrementalDecoder.ts"

let tok: Llama3Tokenizer
beforeAll(async () => {
  tok = await Effect.runPromise(loadTokenizer(undefined))
})

const stream = (detok: Detokenizer, ids: ReadonlyArray<number>, context?: ReadonlyArray<number>): string[] => {
  const decoder = new IncrementalDecoder(detok, context === undefined ? undefined : { context })
  const pieces = ids.map((id) => decoder.push(id))
  pieces.push(decoder.flush())
  return pieces
}

const TEXTS = {
  emoji: "🚀🎉 launch 👨‍👩‍👧‍👦 family 🏳️‍🌈 and 🤔🤔🤔",
  cjk: "日本語のテキストと中文文本，还有한국어 텍스트。",
  mixed: "Hello, wörld! naïve café — “quotes” ∑x² ≤ 10 🚀 終わり\n\tindent  two  spaces ..."
}

describe("IncrementalDecoder with the Llama 3 tokenizer", () => {
  for (const [name, text] of Object.entries(TEXTS)) {
    it(`streams ${name} text piecewise equal to the full decode, never splitting a character`, () => {
      const ids = tok.encode(text)
      // The byte-level tokens really split characters: token-by-token decoding would show U+FFFD.
      if (name !== "mixed") expect(ids.some((id) => tok.decode([id]).includes("\uFFFD"))).toBe(true)
      const pieces = stream(tok, ids)
      expect(pieces.join("")).toBe(tok.decode(ids))
      expect(pieces.join("")).toBe(text)
      for (const piece of pieces) expect(piece).not.toContain("\uFFFD")
    })
  }

  it("holds back an incomplete character and gives it out on flush as the full decode does", () => {
    const ids = tok.encode("ok 🚀")
    const cut = ids.slice(0, -1)
    const decoder = new IncrementalDecoder(tok)
    const pieces = cut.map((id) => decoder.push(id))
    expect(pieces.join("")).toBe("ok")
    const rest = decoder.flush()
    expect(pieces.join("") + rest).toBe(tok.decode(cut))
    expect(rest.endsWith("\uFFFD")).toBe(true)
  })

  it("skips special tokens", () => {
    const ids = tok.encode("<|start_header_id|>assistant<|end_header_id|>\n\nHi 🚀<|eot_id|>")
    expect(stream(tok, ids).join("")).toBe("assistant\n\nHi 🚀")
  })

  it("does not emit the context tokens", () => {
    const prompt = tok.encode("Say hi:")
    const generated = tok.encode(" hi 👋 there")
    expect(stream(tok, generated, prompt).join("")).toBe(" hi 👋 there")
  })

  it("decodes a small window per token however long the stream is", () => {
    const text = Object.values(TEXTS).join(" ").repeat(40)
    const ids = tok.encode(text)
    expect(ids.length).toBeGreaterThan(2000)
    let longest = 0
    let calls = 0
    const spy: Detokenizer = {
      decode: (window, options) => {
        longest = Math.max(longest, window.length)
        calls++
        return tok.decode(window, options)
      }
    }
    expect(stream(spy, ids).join("")).toBe(text)
    expect(longest).toBeLessThanOrEqual(12)
    expect(calls).toBeLessThanOrEqual(2 * ids.length + 2)
  })
})

/** A model-free detokenizer: ids are UTF-8 bytes, 256 is a special token. */
const bytes: Detokenizer = {
  decode: (ids, options) => {
    const kept = options?.skipSpecialTokens === true ? ids.filter((id) => id < 256) : ids
    return new TextDecoder().decode(Uint8Array.from(kept.map((id) => (id < 256 ? id : 0x21))))
  }
}

describe("IncrementalDecoder with a byte detokenizer", () => {
  it("is model-independent: one byte per token still never splits a character", () => {
    const text = "a🚀b日本c é 🏳️‍🌈"
    const ids = [...new TextEncoder().encode(text)]
    const pieces = stream(bytes, [...ids.slice(0, 3), 256, ...ids.slice(3)])
    expect(pieces.join("")).toBe(text)
    expect(pieces.filter((p) => p !== "")).toEqual(["a", "🚀", "b", "日", "本", "c", " ", "é", " ", "🏳", "️", "‍", "🌈"])
  })

  it("emits a real replacement character once later text follows it", () => {
    const ids = [0x61, 0xff, 0x62] // 0xFF is never valid UTF-8
    const pieces = stream(bytes, ids)
    expect(pieces.join("")).toBe(bytes.decode(ids))
    expect(pieces.join("")).toBe("a\uFFFDb")
  })
})
