// The int4 settings as tools name them, and as a one-line label.
import { Schema } from "effect"
import { describe, expect, it } from "vitest"
import { defaultInt4, describeQuant, Int4Settings, parseQuantVariant } from "../../../src/adapters/llama3/Quantization.ts"

describe("parseQuantVariant", () => {
  it("reads block size, zero points or symmetric, a float LM head and the accuracy level", () => {
    expect(parseQuantVariant("b32-zp")).toEqual(defaultInt4)
    expect(parseQuantVariant("b128-sym")).toEqual({ ...defaultInt4, blockSize: 128, symmetric: true })
    expect(parseQuantVariant("b32-sym-headfloat-acc4")).toEqual({ ...defaultInt4, symmetric: true, lmHead: false, accuracyLevel: 4 })
    expect(parseQuantVariant("b128-zp-actclip")).toEqual({ ...defaultInt4, blockSize: 128, search: "activation-clip" })
    expect(defaultInt4.search).toBe("none")
  })

  it.each(["b64-zp", "b32", "int4", "b32-zp-fast", "b32-zp-act", ""])("refuses '%s'", (name) => {
    expect(parseQuantVariant(name)).toBeUndefined()
  })

  it("labels settings the way the variants read", () => {
    expect(describeQuant(undefined)).toBe("none")
    expect(describeQuant(defaultInt4)).toBe("int4 b32 zp")
    expect(describeQuant(parseQuantVariant("b128-sym-headfloat-acc4"))).toBe("int4 b128 sym head-float acc4")
    expect(describeQuant(parseQuantVariant("b32-zp-actclip"))).toBe("int4 b32 zp act-clip")
  })

  it("decodes settings written before the search existed as search none, and refuses an unknown search", () => {
    const { search: _search, ...older } = defaultInt4
    expect(Schema.decodeUnknownSync(Int4Settings)(older)).toEqual(defaultInt4)
    expect(Schema.decodeUnknownSync(Int4Settings)({ ...older, search: "activation-clip" }).search).toBe("activation-clip")
    expect(() => Schema.decodeUnknownSync(Int4Settings)({ ...older, search: "awq" })).toThrow()
  })
})
