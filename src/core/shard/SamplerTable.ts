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

  /** `load`: the last shard's, whose `grammar` vocabulary (built into a compiler when first needed) serves grammars. */
  constructor(load?: Pick<ShardLoad, "grammar" | "vocabSize">) {
    this.load = load
  }

  register(sequences: ReadonlyArray<NewSequence>): void {
    for (const seq of sequences) {
      const spec = seq.params.grammar
      if (spec === undefined) {
        this.samplers.set(seq.seqId, new Sampler(seq.params, seq.promptTokenIds))
        continue
      }
      const matcher = this.grammarCompiler().matcher(spec)
      this.matchers.get(seq.seqId)?.dispose()
      this.matchers.set(seq.seqId, matcher)
      this.samplers.set(seq.seqId, new Sampler(seq.params, seq.promptTokenIds, matcher))
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
      this.matchers.get(id)?.dispose()
      this.matchers.delete(id)
    }
  }

  /** Whether the step can fetch `greedy_token` instead of the logits. */
  greedyOnly(plan: StepPlan): boolean {
    for (const mode of plan.returnLogits) if (mode !== 0) return false
    for (const e of plan.sampleEntries) if (!isPlainGreedy(this.samplers.get(plan.seqIds[e]!))) return false
    return true
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
      if (i !== undefined) this.tokens[i] = this.table.get(this.plan.seqIds[e]!).sample(logits, last, vocab)
      const mode = this.plan.returnLogits[e]
      if (mode === 1) this.logitsByEntry.set(e, logits.slice(last, last + vocab))
      else if (mode === 2) this.logitsByEntry.set(e, logits.slice(row * vocab, (row + n) * vocab))
      row += n
    }
    this.sampleMs += performance.now() - t
  }

  result(runMs: number): StepResult {
    if (this.logitsByEntry.size === 0) return { tokens: this.tokens, runMs, sampleMs: this.sampleMs }
    const parts = [...this.logitsByEntry.entries()].sort((a, b) => a[0] - b[0]).map(([, l]) => l)
    const joined = new Float32Array(parts.reduce((n, p) => n + p.length, 0))
    let at = 0
    for (const p of parts) joined.set(p, at), at += p.length
    return { tokens: this.tokens, logits: joined, runMs, sampleMs: this.sampleMs }
  }
}
