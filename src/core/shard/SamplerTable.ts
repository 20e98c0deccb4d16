/**
 * The samplers of the sequences a last shard holds, by sequence id, and the one way a step's output becomes token
 * ids: from the graph's ArgMax when every sampled entry is plain greedy; from its masked ArgMax when every one is
 * greedy and some are under a grammar (their masks computed before the run, `prepareMasks`); else from the logits
 * through each sequence's sampler. Logits never leave the shard unless the plan asks for them.
 */
import { GrammarCompiler } from "../sampling/Grammar.ts"
import { Sampler } from "../sampling/Sampler.ts"
import { type GraphMask, GraphMaskBuilder } from "./GraphMask.ts"
import { FEEDBACK_TOKEN, type NewSequence, type ShardLoad, type StepPlan, type StepResult } from "./StepProtocol.ts"

/**
 * Greedy with no penalties — temperature 0, or top-k 1 (AIME's benchmark sends that) — so the graph's ArgMax gives
 * the same token as the sampler would.
 */
const isGreedyWithoutPenalties = (sampler: Sampler | undefined): sampler is Sampler =>
  sampler !== undefined && (sampler.params.temperature === 0 || sampler.params.topK === 1) &&
  sampler.params.repetitionPenalty === 1 && sampler.params.presencePenalty === 0 && sampler.params.frequencyPenalty === 0

const isPlainGreedy = (sampler: Sampler | undefined): boolean => isGreedyWithoutPenalties(sampler) && sampler.params.grammar === undefined

/** One bitmask row, reused: `prepareMasks` reads each row's mask into it before the next. */
let maskRow = new Int32Array(0)

export class SamplerTable {
  private readonly samplers = new Map<number, Sampler>()
  /** Sequences under a grammar: their matchers, freed with the sequence. */
  private readonly matchers = new Map<number, { dispose(): void }>()
  private compiler: GrammarCompiler | undefined
  private readonly load: Pick<ShardLoad, "grammar" | "vocabSize"> | undefined
  /** Sequences that asked for logprobs: how many top alternatives each wants (0: the chosen token's alone). */
  private readonly logprobs = new Map<number, number>()
  /** Each sequence's latest sampled token: what a decode-ahead plan's `FEEDBACK_TOKEN` stands for. */
  private readonly lastTokens = new Map<number, number>()

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
      this.lastTokens.delete(id)
      this.matchers.get(id)?.dispose()
      this.matchers.delete(id)
    }
  }

  /** Records the tokens a step sampled (`StepOutputs.result`), for the decode-ahead step that follows it. */
  noteSampled(plan: StepPlan, tokens: Int32Array): void {
    plan.sampleEntries.forEach((e, i) => this.lastTokens.set(plan.seqIds[e]!, tokens[i]!))
  }

  /**
   * Puts each sequence's latest sampled token where a decode-ahead plan has `FEEDBACK_TOKEN` (in place, before the
   * step reads its tokens). The step that sampled it ran just before, on this thread.
   */
  resolveFeedback(plan: StepPlan): void {
    let at = 0
    for (let e = 0; e < plan.numTokens.length; e++) {
      if (plan.tokenIds[at] === FEEDBACK_TOKEN) {
        const token = this.lastTokens.get(plan.seqIds[e]!)
        if (token === undefined) throw new Error(`decode ahead: sequence ${plan.seqIds[e]} has no sampled token to continue from`)
        plan.tokenIds[at] = token
      }
      at += plan.numTokens[e]!
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

  /**
   * Whether the step can fetch the graph's `masked_greedy_token` instead of the logits: every sampled entry greedy
   * without penalties or logprobs (the graph's ArgMax is then the sampler's token), some of them under a grammar,
   * and no entry returning logits.
   */
  graphMasked(plan: StepPlan): boolean {
    for (const mode of plan.returnLogits) if (mode !== 0) return false
    let constrained = false
    for (const e of plan.sampleEntries) {
      const seqId = plan.seqIds[e]!
      const sampler = this.samplers.get(seqId)
      if (!isGreedyWithoutPenalties(sampler) || this.logprobs.has(seqId)) return false
      constrained ||= sampler.params.grammar !== undefined
    }
    return constrained
  }

  /** Whether sequence `seqId` decodes under a grammar. */
  isConstrained(seqId: number): boolean {
    return this.matchers.has(seqId)
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
  /** Graph-masked steps: entries whose grammar left no choice, and the stop token each took before the run. */
  private readonly forced = new Map<number, number>()
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
   * Before a graph-masked step's forward pass (`SamplerTable.graphMasked`): the grammar masks of a group's constrained
   * rows, as id lists or bitmasks (`GraphMask.ts`); unconstrained rows are in neither (the graph's masked ArgMax is
   * then its plain ArgMax). A constrained row whose grammar leaves no choice takes its stop token now.
   */
  prepareMasks(entries: ArrayLike<number>, vocab: number): GraphMask {
    const t = performance.now()
    const words = Math.ceil(vocab / 32)
    if (maskRow.length < words) maskRow = new Int32Array(words)
    const row = maskRow.subarray(0, words)
    const masks = new GraphMaskBuilder(entries.length, vocab)
    for (let r = 0; r < entries.length; r++) {
      const e = entries[r]!
      const i = this.sampleIndex.get(e)
      const seqId = this.plan.seqIds[e]!
      if (i === undefined || !this.table.isConstrained(seqId)) continue
      const forced = this.table.get(seqId).maskForGraph(row, vocab)
      if (forced !== undefined) this.forced.set(e, forced)
      else masks.add(r, row)
    }
    const mask = masks.build()
    this.sampleMs += performance.now() - t
    return mask
  }

  /**
   * The graph's masked ArgMax of `entries` (one id per entry), after `prepareMasks`. Returns the entries whose token
   * the grammar rejected (a graph that did not apply the mask, never expected): nothing was taken for them, and the
   * caller samples them from the logits.
   */
  maskedGreedy(entries: ArrayLike<number>, ids: BigInt64Array): Array<number> {
    const t = performance.now()
    const rejected: Array<number> = []
    for (let r = 0; r < entries.length; r++) {
      const e = entries[r]!
      const i = this.sampleIndex.get(e)
      if (i === undefined) continue
      const forced = this.forced.get(e)
      const token = Number(ids[r]!)
      const sampler = this.table.get(this.plan.seqIds[e]!)
      if (forced !== undefined) this.tokens[i] = forced
      else if (!this.table.isConstrained(this.plan.seqIds[e]!)) {
        sampler.accept(token)
        this.tokens[i] = token
      } else if (sampler.takeMaskedGreedy(token)) this.tokens[i] = token
      else rejected.push(e)
    }
    this.sampleMs += performance.now() - t
    return rejected
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
    this.table.noteSampled(this.plan, this.tokens)
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
