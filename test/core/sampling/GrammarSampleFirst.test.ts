// Constrained sampling's two paths on the real Llama 3 vocabulary: sample first (draw from the unmasked row, offer the
// token to the grammar, keep it when accepted) and mask first (the grammar's bitmask, then a draw over the allowed ids).
// Whichever runs, the token must come from the masked distribution: greedy gives the masked argmax, temperature
// sampling the softmax restricted to the allowed ids, and no token the grammar rejects is ever emitted.
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { loadTokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import { GrammarCompiler, type GrammarMatcher, type GrammarSpec, grammarVocab } from "../../../src/core/sampling/Grammar.ts"
import { Rng } from "../../../src/core/sampling/Rng.ts"
import { Sampler } from "../../../src/core/sampling/Sampler.ts"
import { greedy, type SamplingParams } from "../../../src/core/sampling/SamplingParams.ts"
import { SamplerTable } from "../../../src/core/shard/SamplerTable.ts"

const EXTRA = 64 // logits wider than the tokenizer, as a padded checkpoint's are
let compiler: GrammarCompiler
let stop: ReadonlyArray<number>
let vocab: number
let tokenizerVocab: ReturnType<typeof grammarVocab>
let idOf: (text: string) => number
beforeAll(async () => {
  const tokenizer = await Effect.runPromise(loadTokenizer(undefined))
  vocab = tokenizer.vocabSize + EXTRA
  stop = tokenizer.eotTokenIds
  tokenizerVocab = grammarVocab(tokenizer.vocabSize, tokenizer.tokenBytes!, stop)
  compiler = new GrammarCompiler(tokenizerVocab, vocab)
  idOf = (text) => {
    const ids = tokenizer.encode(text)
    if (ids.length !== 1) throw new Error(`${JSON.stringify(text)} is not one token`)
    return ids[0]!
  }
}, 60_000)

const enumSchema: GrammarSpec = { kind: "json_schema", schema: JSON.stringify({ type: "string", enum: ["alpha", "bravo", "charlie"] }) }
const objectSchema: GrammarSpec = {
  kind: "json_schema",
  schema: JSON.stringify({
    type: "object",
    properties: { name: { type: "string", maxLength: 6 }, n: { type: "integer", minimum: 0, maximum: 50 }, tags: { type: "array", items: { enum: ["x", "y"] }, maxItems: 3 } },
    required: ["name", "n", "tags"]
  })
}

const allowedIds = (mask: Int32Array): Array<number> => {
  const out: Array<number> = []
  for (let id = 0; id < vocab; id++) if ((mask[id >> 5]! >>> (id & 31)) & 1) out.push(id)
  return out
}

/** A matcher whose bitmask calls are counted. */
const counted = (m: GrammarMatcher): { matcher: GrammarMatcher; masks: () => number } => {
  let calls = 0
  const real = m.nextTokenBitmask.bind(m)
  m.nextTokenBitmask = (into?: Int32Array) => {
    calls++
    return real(into)
  }
  return { matcher: m, masks: () => calls }
}

const row = (fill: (id: number) => number): Float32Array => Float32Array.from({ length: vocab }, (_, id) => fill(id))

describe("sample first", () => {
  it("offers are safe: a token the grammar rejects (special, padded past the tokenizer, or any other) leaves the matcher as it was", () => {
    let matcher = compiler.matcher(objectSchema)
    const rng = new Rng(5)
    let rejected = 0
    for (let step = 0; step < 60; step++) {
      const before = matcher.nextTokenBitmask()
      const isAllowed = (id: number) => ((before[id >> 5]! >>> (id & 31)) & 1) === 1
      for (const id of [vocab - 1, stop[0]!, 128000, ...Array.from({ length: 30 }, () => Math.floor(rng.next() * vocab))]) {
        if (isAllowed(id)) continue
        expect(matcher.accept(id), `id ${id}`).toBe(false)
        rejected++
      }
      expect(Array.from(matcher.nextTokenBitmask())).toEqual(Array.from(before))
      const next = allowedIds(before).filter((id) => !stop.includes(id))
      if (next.length === 0) {
        // the JSON is complete: start another
        matcher.dispose()
        matcher = compiler.matcher(objectSchema)
        continue
      }
      expect(matcher.accept(next[Math.floor(rng.next() * next.length)]!)).toBe(true)
    }
    expect(rejected).toBeGreaterThan(1000)
    matcher.dispose()
  })

  it("keeps an offered token the grammar accepts, without computing a mask", () => {
    const { matcher, masks } = counted(compiler.matcher(objectSchema))
    const sampler = new Sampler(greedy, [], matcher)
    const brace = idOf("{")
    const token = sampler.sample(row((id) => (id === brace ? 9 : Math.sin(id))))
    expect(token).toBe(brace)
    expect(masks()).toBe(0)
    expect(sampler.grammarStats).toEqual({ fastAccepted: 1, fastRejected: 0, maskFirst: 0, forcedStop: 0 })
    matcher.dispose()
  })

  it("on a rejected offer computes the mask and takes the masked argmax", () => {
    const { matcher, masks } = counted(compiler.matcher(objectSchema))
    const sampler = new Sampler(greedy, [], matcher)
    const brace = idOf("{")
    // the unmasked favourites are a padded id and a word; "{" is only fourth
    const logits = row((id) => (id === vocab - 1 ? 20 : id === idOf("hello") ? 15 : id === idOf("[") ? 12 : id === brace ? 10 : Math.sin(id)))
    expect(sampler.sample(logits)).toBe(brace)
    expect(masks()).toBe(1)
    expect(sampler.grammarStats).toEqual({ fastAccepted: 0, fastRejected: 1, maskFirst: 0, forcedStop: 0 })
    matcher.dispose()
  })

  it("a sequence that reports logprobs computes the full mask every step, never offering", () => {
    const table = new SamplerTable({ grammar: tokenizerVocab, vocabSize: vocab })
    table.register([
      { seqId: 1, params: { ...greedy, grammar: objectSchema }, promptTokenIds: new Int32Array(0), logprobs: 2 },
      { seqId: 2, params: { ...greedy, grammar: objectSchema }, promptTokenIds: new Int32Array(0) }
    ])
    const brace = idOf("{")
    const logits = row((id) => (id === brace ? 9 : Math.sin(id)))
    for (const seqId of [1, 2]) expect(table.get(seqId).sample(logits)).toBe(brace)
    expect(table.get(1).grammarStats).toEqual({ fastAccepted: 0, fastRejected: 0, maskFirst: 1, forcedStop: 0 })
    expect(table.get(2).grammarStats).toEqual({ fastAccepted: 1, fastRejected: 0, maskFirst: 0, forcedStop: 0 })
    table.release([1, 2])
  })

  it("is not used where it would not be exact (top-k, top-p, min-p)", () => {
    for (const params of [{ temperature: 1, topK: 5 }, { temperature: 1, topP: 0.9 }, { temperature: 0.7, minP: 0.05 }]) {
      const matcher = compiler.matcher(objectSchema)
      const sampler = new Sampler({ ...greedy, ...params }, [], matcher)
      sampler.sample(row((id) => Math.sin(id)))
      expect(sampler.grammarStats.maskFirst, JSON.stringify(params)).toBe(1)
      matcher.dispose()
    }
  })

  it("temperature sampling with rejected offers still follows the softmax over the allowed ids alone", () => {
    // After the opening quote of the enum schema's string, the prefixes of its words are allowed ('al', 'b', 'char',
    // ...). Most of the unmasked mass sits on a disallowed id, so most offers are rejected and resampled from the mask.
    const afterQuote = () => {
      const m = compiler.matcher(enumSchema)
      expect(m.accept(idOf('"'))).toBe(true)
      return m
    }
    const probe = afterQuote()
    const allowed = allowedIds(probe.nextTokenBitmask())
    probe.dispose()
    expect(allowed.length).toBeGreaterThan(4)
    const hot = idOf("hello")
    const weights = new Map(allowed.map((id, i) => [id, i * 0.25]))
    const logits = row((id) => (id === hot ? 4.5 : weights.get(id) ?? -30))
    for (const params of [{ temperature: 1 }, { temperature: 1, topK: 3 }] as const) {
      const counts = new Map<number, number>()
      const stats = { fastAccepted: 0, fastRejected: 0, maskFirst: 0 }
      const draws = 3000
      for (let seed = 0; seed < draws; seed++) {
        const matcher = afterQuote()
        const sampler = new Sampler({ ...greedy, ...params, seed }, [], matcher)
        const token = sampler.sample(logits)
        counts.set(token, (counts.get(token) ?? 0) + 1)
        stats.fastAccepted += sampler.grammarStats.fastAccepted
        stats.fastRejected += sampler.grammarStats.fastRejected
        stats.maskFirst += sampler.grammarStats.maskFirst
        matcher.dispose()
      }
      // reference: softmax over the allowed ids (top-k: the k largest of them)
      const ranked = [...allowed].sort((a, b) => logits[b]! - logits[a]! || a - b)
      const kept = params.topK === undefined ? ranked : ranked.slice(0, params.topK)
      const z = kept.reduce((s, id) => s + Math.exp(logits[id]!), 0)
      for (const id of counts.keys()) expect(kept, `token ${id} outside the masked kept set`).toContain(id)
      for (const id of kept) {
        const p = Math.exp(logits[id]!) / z
        const sd = Math.sqrt((p * (1 - p)) / draws)
        expect(Math.abs((counts.get(id) ?? 0) / draws - p), `${JSON.stringify(params)} id ${id}: p ${p.toFixed(3)}`).toBeLessThan(5 * sd + 1e-3)
      }
      if (params.topK === undefined) {
        expect(stats.fastAccepted).toBeGreaterThan(draws / 10)
        expect(stats.fastRejected).toBeGreaterThan(draws / 10)
      } else expect(stats.maskFirst).toBe(draws)
    }
  })
})

describe("constrained sampling never emits a token the grammar rejects", () => {
  const configs: ReadonlyArray<Partial<SamplingParams>> = [
    { temperature: 0 },
    { temperature: 1 },
    { temperature: 0.6, repetitionPenalty: 1.3, presencePenalty: 0.5 },
    { temperature: 1, topK: 1 },
    { temperature: 1, topP: 0.9 },
    { temperature: 0.8, topK: 20, minP: 0.02 }
  ]
  it("over many seeds, on rows that favour allowed ids and rows that do not; greedy is the masked argmax", () => {
    const rng = new Rng(11)
    let offers = 0
    let accepted = 0
    for (const spec of [objectSchema, { kind: "json" } as const]) {
      for (const params of configs) {
        for (let seed = 0; seed < 4; seed++) {
          const matcher = compiler.matcher(spec)
          const shadow = compiler.matcher(spec) // the reference: its own mask, advanced by the emitted tokens
          const sampler = new Sampler({ ...greedy, ...params, seed }, [], matcher)
          for (let step = 0; step < 40; step++) {
            const allowed = allowedIds(shadow.nextTokenBitmask())
            const logits = row(() => 3 * (rng.next() - 0.5))
            // a trained model usually favours an allowed id; a random one usually does not
            if (rng.next() < 0.6) logits[allowed[Math.floor(rng.next() * allowed.length)]!] = 6
            else logits[Math.floor(rng.next() * vocab)] = 6
            const token = sampler.sample(logits)
            expect(allowed, `${JSON.stringify(params)} seed ${seed} step ${step}`).toContain(token)
            if (params.temperature === 0 && !allowed.every((id) => stop.includes(id))) {
              let best = allowed[0]!
              for (const id of allowed) if (logits[id]! > logits[best]!) best = id
              expect(token).toBe(best)
            }
            expect(shadow.accept(token)).toBe(true)
            if (shadow.terminated || stop.includes(token)) break
          }
          offers += sampler.grammarStats.fastAccepted + sampler.grammarStats.fastRejected
          accepted += sampler.grammarStats.fastAccepted
          matcher.dispose()
          shadow.dispose()
        }
      }
    }
    // both outcomes of an offer were exercised
    expect(accepted).toBeGreaterThan(50)
    expect(offers - accepted).toBeGreaterThan(50)
  }, 120_000)
})
