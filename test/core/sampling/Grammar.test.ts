// Constrained sampling in the shard's sampler, on the real Llama 3 vocabulary and synthetic logits: the grammar decides
// what may be sampled whatever the logits favour, ids past the tokenizer's vocabulary are never sampled, a stop token is
// forced once the JSON is complete, and a constrained sequence is never "plain greedy" (its logits are fetched).
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { loadTokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import { checkJsonSchema, GrammarCompiler, grammarVocab, schemaAccepts } from "../../../src/core/sampling/Grammar.ts"
import { Sampler } from "../../../src/core/sampling/Sampler.ts"
import { greedy } from "../../../src/core/sampling/SamplingParams.ts"
import { SamplerTable } from "../../../src/core/shard/SamplerTable.ts"
import type { StepPlan } from "../../../src/core/shard/StepProtocol.ts"

const EXTRA = 64 // logits wider than the tokenizer, as a padded checkpoint's are
let compiler: GrammarCompiler
let decode: (ids: ReadonlyArray<number>) => string
let stop: ReadonlyArray<number>
let vocab: number
beforeAll(async () => {
  const tokenizer = await Effect.runPromise(loadTokenizer(undefined))
  vocab = tokenizer.vocabSize + EXTRA
  stop = tokenizer.eotTokenIds
  decode = (ids) => tokenizer.decode(ids)
  compiler = new GrammarCompiler(grammarVocab(tokenizer.vocabSize, tokenizer.tokenBytes!, stop), vocab)
}, 60_000)

const schema = JSON.stringify({
  type: "object",
  properties: { ok: { type: "boolean" }, n: { type: "integer", minimum: 0, maximum: 9 } },
  required: ["ok", "n"]
})

describe("constrained sampling", () => {
  it("samples only what the grammar allows, never ids past the tokenizer, and forces a stop token at the end", () => {
    for (const temperature of [0, 1]) {
      const sampler = new Sampler({ ...greedy, temperature, seed: 3 }, [], compiler.matcher({ kind: "json_schema", schema }))
      const logits = new Float32Array(vocab)
      for (let i = 0; i < vocab; i++) logits[i] = Math.sin(i) * 3
      logits.fill(50, vocab - EXTRA) // the padded ids are the most likely: never taken
      const out: Array<number> = []
      for (let step = 0; step < 64; step++) {
        const token = sampler.sample(logits)
        expect(token).toBeLessThan(vocab - EXTRA)
        out.push(token)
        if (stop.includes(token)) break
      }
      expect(stop).toContain(out[out.length - 1])
      const value = JSON.parse(decode(out.slice(0, -1))) as { ok: unknown; n: unknown }
      expect(typeof value.ok).toBe("boolean")
      expect(Number.isInteger(value.n)).toBe(true)
    }
  })

  it("a constrained sequence is never plain greedy; others are", () => {
    const table = new SamplerTable({ grammar: grammarVocab(8, () => new Uint8Array([65]), []), vocabSize: 8 })
    table.register([
      { seqId: 1, params: greedy, promptTokenIds: new Int32Array(0) },
      { seqId: 2, params: { ...greedy, grammar: { kind: "json" } }, promptTokenIds: new Int32Array(0) }
    ])
    const plan = (seqIds: Array<number>) => ({ seqIds: Int32Array.from(seqIds), sampleEntries: Int32Array.from(seqIds.map((_, i) => i)), returnLogits: new Uint8Array(seqIds.length) }) as unknown as StepPlan
    expect(table.greedyOnly(plan([1]))).toBe(true)
    expect(table.greedyOnly(plan([1, 2]))).toBe(false)
    table.release([1, 2])
  })

  it("integer bounds are exact (xgrammar 0.1.27 alone lets maximum 120 admit 121-129) and bounded strings take no raw control characters", () => {
    let seed = 42
    const next = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n
    const bounds: Array<Record<string, number>> = [{ minimum: 0, maximum: 120 }, { maximum: 120 }, { minimum: -120 }, { minimum: 5 }, { exclusiveMinimum: -1, exclusiveMaximum: 10 }]
    for (let i = 0; i < 25; i++) {
      const a = next(4000) - 2000
      bounds.push(next(5) === 0 ? { minimum: a } : { minimum: a, maximum: a + next(3000) })
    }
    for (const b of bounds) {
      const lo = b["minimum"] ?? (b["exclusiveMinimum"] !== undefined ? b["exclusiveMinimum"] + 1 : -Infinity)
      const hi = b["maximum"] ?? (b["exclusiveMaximum"] !== undefined ? b["exclusiveMaximum"] - 1 : Infinity)
      const schema = JSON.stringify({ type: "integer", ...b })
      const probes = [lo, hi, 0, -1, 1].filter(Number.isFinite).flatMap((v) => [v - 10, v - 1, v, v + 1, v + 9])
      for (const v of probes) expect(schemaAccepts(schema, String(v)), `${schema} ${v}`).toBe(v >= lo && v <= hi)
      for (const text of ["-0", "01", "1.5", "+1"]) expect(schemaAccepts(schema, text), `${schema} ${text}`).toBe(false)
    }
    const bounded = JSON.stringify({ type: "string", maxLength: 8 })
    expect(schemaAccepts(bounded, `"a b"`)).toBe(true)
    expect(schemaAccepts(bounded, "\"a\tb\"")).toBe(false) // a raw one
  })

  it("checks schemas before admission", () => {
    expect(checkJsonSchema(schema)).toBeUndefined()
    expect(checkJsonSchema(JSON.stringify({ type: 5 }))).toMatch(/Type should be a string/)
    expect(checkJsonSchema("{not json")).toBeDefined()
  })
})
