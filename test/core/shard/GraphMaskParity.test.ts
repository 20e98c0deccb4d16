// Constrained greedy through the graph's masked ArgMax (`StepOutputs.prepareMasks` / `maskedGreedy`, what the CPU
// shard worker does at temperature 0) against the logits path (`StepOutputs.logits`, the sampler's sample-first /
// mask-first): the same tokens, step after step, on the real Llama 3 vocabulary (padded, as a checkpoint's logits
// can be), for several schemas batched with an unconstrained row. The graph is played here by the same masked
// ArgMax in JS over the fed id lists and bitmasks (`GraphMask.ts`); `test/adapters/llama3/MaskedGreedy.test.ts` checks the graph computes exactly that.
import { Effect } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { loadTokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import { type GrammarSpec, grammarVocab } from "../../../src/core/sampling/Grammar.ts"
import { Rng } from "../../../src/core/sampling/Rng.ts"
import { greedy, type SamplingParams } from "../../../src/core/sampling/SamplingParams.ts"
import type { GraphMask } from "../../../src/core/shard/GraphMask.ts"
import { SamplerTable, StepOutputs } from "../../../src/core/shard/SamplerTable.ts"
import type { NewSequence, StepPlan } from "../../../src/core/shard/StepProtocol.ts"

const EXTRA = 64
let vocab: number
let stop: ReadonlyArray<number>
let tokenizerVocab: ReturnType<typeof grammarVocab>
beforeAll(async () => {
  const tokenizer = await Effect.runPromise(loadTokenizer(undefined))
  vocab = tokenizer.vocabSize + EXTRA
  stop = tokenizer.eotTokenIds
  tokenizerVocab = grammarVocab(tokenizer.vocabSize, tokenizer.tokenBytes!, stop)
}, 60_000)

const schema = (s: object): GrammarSpec => ({ kind: "json_schema", schema: JSON.stringify(s) })
const schemas: ReadonlyArray<GrammarSpec> = [
  schema({ type: "string", enum: ["alpha", "bravo", "charlie"] }),
  schema({
    type: "object",
    properties: { name: { type: "string", maxLength: 6 }, n: { type: "integer", minimum: 0, maximum: 50 }, tags: { type: "array", items: { enum: ["x", "y"] }, maxItems: 3 } },
    required: ["name", "n", "tags"]
  }),
  schema({ type: "array", items: { type: "boolean" }, minItems: 1, maxItems: 4 }),
  schema({ type: "object", properties: { ok: { type: "boolean" }, score: { type: "number" } }, required: ["ok"] }),
  { kind: "json" }
]

/** A plan of one decode token per sequence, every entry sampled, no logits returned. */
const planOf = (seqIds: ReadonlyArray<number>, newSequences: ReadonlyArray<NewSequence>): StepPlan => {
  const n = seqIds.length
  return {
    seqIds: Int32Array.from(seqIds),
    rows: Int32Array.from(seqIds, (_, i) => i),
    numTokens: new Int32Array(n).fill(1),
    pastLens: new Int32Array(n).fill(4),
    tokenIds: new Int32Array(n),
    blockTables: Int32Array.from(seqIds, (_, i) => i),
    blocksPerEntry: 1,
    sampleEntries: Int32Array.from(seqIds, (_, i) => i),
    newSequences,
    returnLogits: new Uint8Array(n)
  }
}

/** Row `r`'s allowed ids as the graph gets them: its list (padding dropped), its bitmask, or undefined (unconstrained). */
const allowedOf = (mask: GraphMask, r: number): ReadonlyArray<number> | undefined => {
  const s = [...mask.sparseRows].indexOf(BigInt(r))
  if (s >= 0) return [...new Set([...mask.sparseIds.subarray(s * mask.sparseK, (s + 1) * mask.sparseK)].map(Number))]
  const d = [...mask.denseRows].indexOf(BigInt(r))
  if (d < 0) return undefined
  const words = Math.ceil(vocab / 32)
  return [...Array(vocab).keys()].filter((v) => ((mask.bitmask[d * words + (v >> 5)]! >>> (v & 31)) & 1) === 1)
}

/**
 * The graph's `masked_greedy_token`: per row, the lowest id of the largest logit among the ids its list or bitmask
 * allows, or of the whole row when it has neither.
 */
const maskedArgmax = (logits: Float32Array, mask: GraphMask, rows: number): BigInt64Array => {
  const out = new BigInt64Array(rows)
  for (let r = 0; r < rows; r++) {
    let best = -1
    for (const v of allowedOf(mask, r) ?? Array(vocab).keys()) {
      if (best < 0 || logits[r * vocab + v]! > logits[r * vocab + best]! || (logits[r * vocab + v] === logits[r * vocab + best] && v < best)) best = v
    }
    out[r] = BigInt(best)
  }
  return out
}

const sequences = (params: ReadonlyArray<Partial<SamplingParams>>): Array<NewSequence> =>
  params.map((p, i) => ({ seqId: 100 + i, params: { ...greedy, ...p }, promptTokenIds: new Int32Array(0) }))

describe("constrained greedy through the graph mask", () => {
  it("gives the logits path's tokens, token for token, over schemas and seeds (forced stops included)", () => {
    let graphMasked = 0
    let forcedStops = 0
    let sparseRows = 0
    let denseRows = 0
    const widths = new Set<number>()
    for (const seed of [1, 2, 3, 4]) {
      // five constrained rows (one per schema, the batch order turned by the seed) and one unconstrained
      const specs = schemas.map((_, i) => schemas[(i + seed) % schemas.length]!)
      const params = [...specs.map((grammar) => ({ grammar })), {}]
      const viaGraph = new SamplerTable({ grammar: tokenizerVocab, vocabSize: vocab })
      const viaLogits = new SamplerTable({ grammar: tokenizerVocab, vocabSize: vocab })
      const seqs = sequences(params)
      const ids = seqs.map((s) => s.seqId)
      viaGraph.register(seqs)
      viaLogits.register(seqs)
      const rng = new Rng(seed)
      for (let step = 0; step < 60; step++) {
        const plan = planOf(ids, [])
        expect(viaGraph.graphMasked(plan)).toBe(true)
        // random rows, some with a hot id (a trained model favours one token; here it is allowed or not by chance)
        const logits = new Float32Array(ids.length * vocab)
        for (let i = 0; i < logits.length; i++) logits[i] = 3 * (rng.next() - 0.5)
        for (let r = 0; r < ids.length; r++) if (rng.next() < 0.7) logits[r * vocab + Math.floor(rng.next() * vocab)] = 6
        const rows = plan.sampleEntries

        const reference = new StepOutputs(plan, viaLogits)
        reference.logits(rows, new Int32Array(ids.length).fill(1), logits, vocab)
        const graph = new StepOutputs(plan, viaGraph)
        const masks = graph.prepareMasks(rows, vocab)
        // the unconstrained row (the last) is in neither list
        expect(allowedOf(masks, ids.length - 1)).toBeUndefined()
        sparseRows += masks.sparseRows.length
        denseRows += masks.denseRows.length
        if (masks.sparseRows.length > 0) widths.add(masks.sparseK)
        expect(graph.maskedGreedy(rows, maskedArgmax(logits, masks, ids.length))).toEqual([])
        expect([...graph.result(0).tokens!], `seed ${seed} step ${step}`).toEqual([...reference.result(0).tokens!])
      }
      for (const id of ids.slice(0, -1)) {
        graphMasked += viaGraph.get(id).graphMaskedTokens
        forcedStops += viaGraph.get(id).grammarStats.forcedStop
      }
      viaGraph.release(ids)
      viaLogits.release(ids)
    }
    // both ways a constrained graph-masked row ends: the graph's ArgMax, and a stop the grammar forces
    expect(graphMasked).toBeGreaterThan(100)
    expect(forcedStops).toBeGreaterThan(10)
    // both forms the graph takes: id lists (of several widths) and bitmask rows (free strings, any JSON)
    expect(sparseRows).toBeGreaterThan(100)
    expect(denseRows).toBeGreaterThan(10)
    expect(widths.size).toBeGreaterThan(1)
  }, 120_000)

  it("a token the grammar rejects is not taken: the row is reported, its matcher unchanged, and the logits path then picks it", () => {
    const table = new SamplerTable({ grammar: tokenizerVocab, vocabSize: vocab })
    table.register(sequences([{ grammar: schemas[0]! }]))
    const plan = planOf([100], [])
    const outputs = new StepOutputs(plan, table)
    const masks = outputs.prepareMasks(plan.sampleEntries, vocab)
    const allowed = allowedOf(masks, 0)!
    const disallowed = [...Array(vocab).keys()].find((v) => !allowed.includes(v))!
    expect(outputs.maskedGreedy(plan.sampleEntries, BigInt64Array.of(BigInt(disallowed)))).toEqual([0])
    const logits = new Float32Array(vocab).fill(-1)
    logits[disallowed] = 9
    logits[allowed[allowed.length - 1]!] = 5
    outputs.logits(plan.sampleEntries, Int32Array.of(1), logits, vocab)
    expect([...outputs.result(0).tokens!]).toEqual([allowed[allowed.length - 1]])
    table.release([100])
  })

  it("is chosen only for steps whose sampled rows are all greedy without penalties or logprobs, some constrained", () => {
    const table = new SamplerTable({ grammar: tokenizerVocab, vocabSize: vocab })
    // [params, alone, batched with sequence 0 (constrained greedy), logprobs]
    const cases: ReadonlyArray<readonly [Partial<SamplingParams>, boolean, boolean, number | undefined]> = [
      [{ grammar: schemas[1]! }, true, true, undefined],
      [{ grammar: schemas[1]!, topK: 1, temperature: 0.7 }, true, true, undefined],
      [{ grammar: schemas[1]!, temperature: 0.7 }, false, false, undefined],
      [{ grammar: schemas[1]!, repetitionPenalty: 1.2 }, false, false, undefined],
      [{ grammar: schemas[1]! }, false, false, 0],
      [{}, false, true, undefined],
      [{ temperature: 1 }, false, false, undefined]
    ]
    cases.forEach(([params, alone, batched, logprobs], i) => {
      const seq = { seqId: i, params: { ...greedy, ...params }, promptTokenIds: new Int32Array(0), ...(logprobs === undefined ? {} : { logprobs }) }
      table.register([seq])
      expect(table.graphMasked(planOf([i], [])), JSON.stringify(params)).toBe(alone)
      // one row that is not greedy spoils a batch; a plain greedy one joins it
      expect(table.graphMasked(planOf([0, i], [])), JSON.stringify(params)).toBe(batched)
    })
    table.release(cases.map((_, i) => i))
  })
})
