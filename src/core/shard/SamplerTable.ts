/**
 * The samplers of the sequences a last shard holds, by sequence id, and the one way a step's output becomes token
 * ids: from the graph's ArgMax when every sampled entry is plain greedy, else from the logits through each sequence's
 * sampler. Logits never leave the shard unless the plan asks for them.
 */
import { GrammarCompiler } from "../sampling/Grammar.ts"
import { Sampler } from "../sampling/Sampler.ts"
import type { NewSequence, ShardLoad, StepPlan, StepResult } from "./StepProtocol.ts"

/**
 * Greedy with no penalties — temperature 0, or top-k 1 (AIME's benchmark sends that) — so the graph's ArgMax gives
 * the same token as the sampler would.
 */
const isPlainGreedy = (sampler: Sampler | undefined): boolean =>
  sampler !== undefined && sampler.params.grammar === undefined && (sampler.params.temperature === 0 || sampler.params.topK === 1) &&
  sampler.params.repetitionPenalty === 1 && sampler.params.presencePenalty === 0 && sampler.params.frequencyPenalty === 0

export class SamplerTable {
  private readonly samplers = new Map<number, Sampler>()
  /** Sequences under a grammar: their matchers, freed with the sequence. */
  private readonly matchers = new Map<number, { dispose(): void }>()
  private compiler: GrammarCompiler | undefined
  private readonly load: Pick<ShardLoad, "grammar" | "vocabSize"> | undefined
  /** Sequences that asked for logprobs: how many top alternatives each wants (0: the chosen token's alone). */
  private readonly logprobs = new Map<number, number>()

  /** `load`: the last shard's, whose `grammar` vocabulary (built into a compiler when first needed) serves grammars. */
  constructor(load?: Pick<ShardLoad, "grammar" | "vocabSize">) {
    this.load = load
  }

  register(sequences: ReadonlyArray<NewSequence>): void {
    for (const seq of sequences) {
      if (seq.logprobs !== undefined) this.logprobs.set(seq.seqId, seq.logprobs)
      const spec = seq.params.grammar
      if (spec === undefined) {
        this.samplers.set(seq.seqId, new Sampler(seq.params, seq.promptTokenIds))
        continue
      }
      const matcher = this.grammarCompiler().matcher(spec)
      this.matchers.get(seq.seqId)?.dispose()
      this.matchers.set(seq.seqId, matcher)
      // A sequence that reports logprobs computes its mask every step, as before sample-first existed (its logprobs
      // are of the raw logits either way).
      this.samplers.set(seq.seqId, new Sampler(seq.params, seq.promptTokenIds, matcher, { maskFirst: seq.logprobs !== undefined }))
    }
  }

  private grammarCompiler(): GrammarCompiler {
    if (this.compiler !== undefined) return this.compiler
    if (this.load?.grammar === undefined) throw new Error("constrained decoding needs the vocabulary in the last shard's load (the model's codec gives no token bytes)")
    return this.compiler = new GrammarCompiler(this.load.grammar, this.load.vocabSize)
  }

  release(seqIds: ReadonlyArray<number>): void {
    for (const id of seqIds) {
      this.samplers.delete(id)
      this.logprobs.delete(id)
      this.matchers.get(id)?.dispose()
      this.matchers.delete(id)
    }
  }

  /** Whether the step can fetch `greedy_token` instead of the logits (never when a sampled entry wants logprobs). */
  greedyOnly(plan: StepPlan): boolean {
    for (const mode of plan.returnLogits) if (mode !== 0) return false
    for (const e of plan.sampleEntries) {
      const seqId = plan.seqIds[e]!
      if (!isPlainGreedy(this.samplers.get(seqId)) || this.logprobs.has(seqId)) return false
    }
    return true
  }

  /** The top alternatives sequence `seqId` wants with each token's logprob; undefined: no logprobs. */
  logprobsOf(seqId: number): number | undefined {
    return this.logprobs.get(seqId)
  }

  get(seqId: number): Sampler {
    const sampler = this.samplers.get(seqId)
    if (sampler === undefined) throw new Error(`no sampler registered for sequence ${seqId}`)
    return sampler
  }
}

/**
 * Collects one step's sampled tokens and returned logits over the ORT runs that make it up (a runtime may run a
 * plan's entries in several groups), in the plan's order: tokens by `sampleEntries`, logits by entry.
 */
export class StepOutputs {
  private readonly tokens: Int32Array
  private readonly sampleIndex = new Map<number, number>()
  private readonly logitsByEntry = new Map<number, Float32Array>()
  /** Per sample index, for sequences that asked: [chosen, ...top] ids and their logprobs. */
  private readonly logprobsBySample = new Map<number, { readonly ids: Int32Array; readonly values: Float32Array }>()
  private sampleMs = 0
  private readonly plan: StepPlan
  private readonly table: SamplerTable

  constructor(plan: StepPlan, table: SamplerTable) {
    this.plan = plan
    this.table = table
    this.tokens = new Int32Array(plan.sampleEntries.length)
    plan.sampleEntries.forEach((e, i) => this.sampleIndex.set(e, i))
  }

  /** Greedy ids of `entries`, one per entry (their last position), from the graph's ArgMax. */
  greedy(entries: ArrayLike<number>, ids: BigInt64Array, perEntry = 1): void {
    const t = performance.now()
    for (let r = 0; r < entries.length; r++) {
      const e = entries[r]!
      const i = this.sampleIndex.get(e)
      if (i === undefined) continue
      const token = Number(ids[r * perEntry + perEntry - 1]!)
      this.table.get(this.plan.seqIds[e]!).accept(token)
      this.tokens[i] = token
    }
    this.sampleMs += performance.now() - t
  }

  /**
   * Logits of `entries`, `positions[r]` consecutive rows of `vocab` each, entry after entry; each sampling entry
   * samples from its last row, and entries that asked keep theirs for the result.
   */
  logits(entries: ArrayLike<number>, positions: ArrayLike<number>, logits: Float32Array, vocab: number): void {
    const t = performance.now()
    let row = 0
    for (let r = 0; r < entries.length; r++) {
      const e = entries[r]!
      const n = positions[r]!
      const last = (row + n - 1) * vocab
      const i = this.sampleIndex.get(e)
      if (i !== undefined) {
        const seqId = this.plan.seqIds[e]!
        const token = this.table.get(seqId).sample(logits, last, vocab)
        this.tokens[i] = token
        const top = this.table.logprobsOf(seqId)
        if (top !== undefined) this.logprobsBySample.set(i, tokenLogprobs(logits, last, vocab, token, top))
      }
      const mode = this.plan.returnLogits[e]
      if (mode === 1) this.logitsByEntry.set(e, logits.slice(last, last + vocab))
      else if (mode === 2) this.logitsByEntry.set(e, logits.slice(row * vocab, (row + n) * vocab))
      row += n
    }
    this.sampleMs += performance.now() - t
  }

  result(runMs: number): StepResult {
    const logprobs = this.packLogprobs()
    const withLogprobs = logprobs === undefined ? {} : { logprobs }
    if (this.logitsByEntry.size === 0) return { tokens: this.tokens, ...withLogprobs, runMs, sampleMs: this.sampleMs }
    const parts = [...this.logitsByEntry.entries()].sort((a, b) => a[0] - b[0]).map(([, l]) => l)
    const joined = new Float32Array(parts.reduce((n, p) => n + p.length, 0))
    let at = 0
    for (const p of parts) joined.set(p, at), at += p.length
    return { tokens: this.tokens, logits: joined, ...withLogprobs, runMs, sampleMs: this.sampleMs }
  }

  /** The logprobs of the step's sampled tokens, packed by sample index (see `StepResult.logprobs`). */
  private packLogprobs(): StepResult["logprobs"] {
    if (this.logprobsBySample.size === 0) return undefined
    const counts = new Int32Array(this.tokens.length)
    let total = 0
    for (const [i, lp] of this.logprobsBySample) counts[i] = lp.ids.length, total += lp.ids.length
    const ids = new Int32Array(total)
    const values = new Float32Array(total)
    let at = 0
    for (let i = 0; i < counts.length; i++) {
      const lp = this.logprobsBySample.get(i)
      if (lp === undefined) continue
      ids.set(lp.ids, at)
      values.set(lp.values, at)
      at += lp.ids.length
    }
    return { counts, ids, values }
  }
}

/**
 * The log-softmax of the raw model logits `logits[offset .. offset+vocab)` (what OpenAI and vLLM report by default:
 * before temperature and penalties) at `token`, then the `top` most likely ids, most likely first:
 * `ids = [token, ...top ids]`, `values` their logprobs.
 */
export const tokenLogprobs = (
  logits: Float32Array,
  offset: number,
  vocab: number,
  token: number,
  top: number
): { readonly ids: Int32Array; readonly values: Float32Array } => {
  let max = Number.NEGATIVE_INFINITY
  for (let v = 0; v < vocab; v++) if (logits[offset + v]! > max) max = logits[offset + v]!
  let sum = 0
  for (let v = 0; v < vocab; v++) sum += Math.exp(logits[offset + v]! - max)
  const lse = max + Math.log(sum)
  // The `top` largest, kept sorted descending by insertion: top is at most 20, and most logits fail the first test.
  const topIds = new Int32Array(top)
  const topVals = new Float64Array(top).fill(Number.NEGATIVE_INFINITY)
  let filled = 0
  for (let v = 0; v < vocab && top > 0; v++) {
    const x = logits[offset + v]!
    if (filled === top && !(x > topVals[top - 1]!)) continue
    let j = filled < top ? filled++ : top - 1
    while (j > 0 && topVals[j - 1]! < x) topVals[j] = topVals[j - 1]!, topIds[j] = topIds[j - 1]!, j--
    topVals[j] = x
    topIds[j] = v
  }
  const ids = new Int32Array(1 + filled)
  const values = new Float32Array(1 + filled)
  ids[0] = token
  values[0] = logits[offset + token]! - lse
  for (let j = 0; j < filled; j++) ids[1 + j] = topIds[j]!, values[1 + j] = topVals[j]! - lse
  return { ids, values }
}
