import { afterEach, describe, expect, it } from "vitest"
import { applyDecodeAttention } from "../../../src/core/native/DecodeAttention.ts"

const saved = process.env.ORT_ENABLE_XQA
afterEach(() => {
  if (saved === undefined) delete process.env.ORT_ENABLE_XQA
  else process.env.ORT_ENABLE_XQA = saved
})

describe("applyDecodeAttention", () => {
  it("defaults to XQA and writes ORT's switch into the process environment", () => {
    delete process.env.ORT_ENABLE_XQA
    expect(applyDecodeAttention(undefined)).toBe("xqa")
    expect(process.env.ORT_ENABLE_XQA).toBe("1")
  })

  it("an explicit choice overrides the environment", () => {
    process.env.ORT_ENABLE_XQA = "1"
    expect(applyDecodeAttention("flash")).toBe("flash")
    expect(process.env.ORT_ENABLE_XQA).toBe("0")
    expect(applyDecodeAttention("xqa")).toBe("xqa")
    expect(process.env.ORT_ENABLE_XQA).toBe("1")
  })

  it("without a choice, a value the user set stands", () => {
    process.env.ORT_ENABLE_XQA = "0"
    expect(applyDecodeAttention(undefined)).toBe("flash")
    expect(process.env.ORT_ENABLE_XQA).toBe("0")
  })
})
