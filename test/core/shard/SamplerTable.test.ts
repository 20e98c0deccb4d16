// Logprobs in the last shard: the log-softmax of the raw logits at the sampled token and the top alternatives,
// packed per sample entry in the StepResult; a sequence asking for them is never served from the graph's ArgMax.
// Decode ahead: a plan's feedback ids become the tokens the step before sampled.
import { describe, expect, it } from "vitest"
import { greedy } from "../../../src/core/sampling/SamplingParams.ts"
import { SamplerTable, StepOutputs, tokenLogprobs } from "../../../src/core/shard/SamplerTable.ts"
import { FEEDBACK_TOKEN, type NewSequence, type StepPlan } from "../../../src/core/shard/StepProtocol.ts"

/** Reference: float64 log-softmax, ids sorted by logit descending (ties by id). */
const reference = (row: ReadonlyArray<number>) => {
  const max = Math.max(...row)
  const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0))
  const lp = row.map((x) => x - lse)
  const order = row.map((_, i) => i).sort((a, b) => row[b]! - row[a]! || a - b)
  return { lp, order }
}

const plan = (seqIds: Array<number>, newSequences: Array<NewSequence>): StepPlan => ({
  seqIds: Int32Array.from(seqIds),
  rows: new Int32Array(seqIds.length),
  numTokens: new Int32Array(seqIds.length).fill(1),
  pastLens: new Int32Array(seqIds.length),
  tokenIds: new Int32Array(seqIds.length),
  blockTables: new Int32Array(seqIds.length),
  blocksPerEntry: 1,
  sampleEntries: Int32Array.from(seqIds.map((_, i) => i)),
  newSequences,
  returnLogits: new Uint8Array(seqIds.length)
})

describe("tokenLogprobs", () => {
  it("matches a float64 log-softmax, top ids most likely first", () => {
    const vocab = 50
    const logits = new Float32Array(2 * vocab)
    for (let i = 0; i < logits.length; i++) logits[i] = Math.sin(i * 12.9898) * 7
    const row = Array.from(logits.subarray(vocab, 2 * vocab))
    const { lp, order } = reference(row)
    const got = tokenLogprobs(logits, vocab, vocab, 17, 5)
    expect(got.ids[0]).toBe(17)
    expect(got.values[0]).toBeCloseTo(lp[17]!, 5)
    expect(Array.from(got.ids.subarray(1))).toEqual(order.slice(0, 5))
    for (let j = 0; j < 5; j++) expect(got.values[1 + j]).toBeCloseTo(lp[order[j]!]!, 5)
    expect(tokenLogprobs(logits, 0, vocab, 3, 0).ids).toHaveLength(1)
  })
})

describe("SamplerTable and StepOutputs with logprobs", () => {
  const vocab = 8
  const seq = (seqId: number, logprobs?: number): NewSequence => ({
    seqId,
    params: greedy,
    promptTokenIds: Int32Array.of(1),
    ...(logprobs === undefined ? {} : { logprobs })
  })

  it("a greedy sequence that asks for logprobs is not plain greedy", () => {
    const table = new SamplerTable()
    table.register([seq(1), seq(2, 0)])
    expect(table.greedyOnly(plan([1], []))).toBe(true)
    expect(table.greedyOnly(plan([1, 2], []))).toBe(false)
    table.release([2])
    table.register([seq(2)])
    expect(table.greedyOnly(plan([1, 2], []))).toBe(true)
  })

  it("packs each sampled token's logprobs by sample entry; others get a count of 0", () => {
    const table = new SamplerTable()
    const p = plan([1, 2, 3], [seq(1, 2), seq(2), seq(3, 0)])
    table.register(p.newSequences)
    const outs = new StepOutputs(p, table)
    const logits = Float32Array.from({ length: 3 * vocab }, (_, i) => ((i * 5) % 8) - 3)
    outs.logits(Int32Array.of(0, 1, 2), Int32Array.of(1, 1, 1), logits, vocab)
    const result = outs.result(0)
    expect(Array.from(result.logprobs!.counts)).toEqual([3, 0, 1])
    const tokens = result.tokens!
    // Greedy: the sampled token is the argmax, so its logprob is the top one.
    expect(result.logprobs!.ids[0]).toBe(tokens[0])
    expect(result.logprobs!.ids[1]).toBe(tokens[0])
    expect(result.logprobs!.values[0]).toBeCloseTo(result.logprobs!.values[1]!, 6)
    expect(result.logprobs!.ids[3]).toBe(tokens[2])
    const { lp } = reference(Array.from(logits.subarray(2 * vocab)))
    expect(result.logprobs!.values[3]).toBeCloseTo(lp[tokens[2]!]!, 5)
  })

  it("a step without logprobs has none in its result", () => {
    const table = new SamplerTable()
    const p = plan([1], [seq(1)])
    table.register(p.newSequences)
    const outs = new StepOutputs(p, table)
    outs.logits(Int32Array.of(0), Int32Array.of(1), new Float32Array(vocab), vocab)
    expect(outs.result(0).logprobs).toBeUndefined()
  })
})

describe("decode ahead in the last shard", () => {
  it("a plan's FEEDBACK_TOKEN becomes the token its sequence sampled in the step before; released sequences have none", () => {
    const table = new SamplerTable()
    const first = plan([4, 9], [4, 9].map((seqId) => ({ seqId, params: greedy, promptTokenIds: Int32Array.of(1) })))
    table.register(first.newSequences)
    const outs = new StepOutputs(first, table)
    outs.greedy(Int32Array.of(0, 1), BigInt64Array.of(17n, 23n))
    expect(Array.from(outs.result(0).tokens!)).toEqual([17, 23])
    // The step ahead: sequence 9 first, then 4; a prompt token that is not feedback stays as it is.
    const ahead = plan([9, 4], [])
    ahead.tokenIds.set([FEEDBACK_TOKEN, FEEDBACK_TOKEN])
    table.resolveFeedback(ahead)
    expect(Array.from(ahead.tokenIds)).toEqual([23, 17])
    const known = plan([4], [])
    known.tokenIds[0] = 5
    table.resolveFeedback(known)
    expect(known.tokenIds[0]).toBe(5)
    table.release([4])
    const gone = plan([4], [])
    gone.tokenIds[0] = FEEDBACK_TOKEN
    expect(() => table.resolveFeedback(gone)).toThrow("decode ahead: sequence 4 has no sampled token to continue from")
  })
})
