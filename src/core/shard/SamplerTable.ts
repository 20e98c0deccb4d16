/**
 * The samplers of the sequences a last shard holds, by KV row, and the one way a step's output becomes token ids:
 * from the graph's ArgMax when every sampled row is plain greedy, else from the logits through each row's sampler.
 * Logits never leave the shard unless the plan asks for them.
 */
import { Sampler } from "../sampling/Sampler.ts"
import type { NewSequence, StepPlan, StepResult } from "./StepProtocol.ts"

/**
 * Greedy with no penalties — temperature 0, or top-k 1 (AIME's benchmark sends that) — so the graph's ArgMax gives
 * the same token as the sampler would.
 */
const isPlainGreedy = (sampler: Sampler | undefined): boolean =>
  sampler !== undefined && (sampler.params.temperature === 0 || sampler.params.topK === 1) &&
  sampler.params.repetitionPenalty === 1 && sampler.params.presencePenalty === 0 && sampler.params.frequencyPenalty === 0

export class SamplerTable {
  private readonly samplers = new Map<number, Sampler>()

  register(sequences: ReadonlyArray<NewSequence>): void {
    for (const seq of sequences) this.samplers.set(seq.row, new Sampler(seq.params, seq.promptTokenIds))
  }

  release(rows: ReadonlyArray<number>): void {
    for (const r of rows) this.samplers.delete(r)
  }

  /** Whether the step can fetch `greedy_token` instead of the logits. */
  greedyOnly(plan: StepPlan): boolean {
    if (plan.returnLogits !== "none") return false
    for (const rel of plan.sampleRows) if (!isPlainGreedy(this.samplers.get(plan.firstRow + rel))) return false
    return true
  }

  fromGreedy(plan: StepPlan, ids: BigInt64Array, runMs: number): StepResult {
    const t = performance.now()
    const tokens = new Int32Array(plan.sampleRows.length)
    for (let i = 0; i < plan.sampleRows.length; i++) {
      const rel = plan.sampleRows[i]!
      tokens[i] = Number(ids[rel]!)
      this.samplers.get(plan.firstRow + rel)!.accept(tokens[i]!)
    }
    return { tokens, runMs, sampleMs: performance.now() - t }
  }

  /** `logits` is `[rows, perRow, vocab]`; each sampled row uses its last position. */
  fromLogits(plan: StepPlan, logits: Float32Array, vocab: number, perRow: number, runMs: number): StepResult {
    const t = performance.now()
    const tokens = new Int32Array(plan.sampleRows.length)
    for (let i = 0; i < plan.sampleRows.length; i++) {
      const rel = plan.sampleRows[i]!
      const sampler = this.samplers.get(plan.firstRow + rel)
      if (sampler === undefined) throw new Error(`no sampler registered for row ${plan.firstRow + rel}`)
      tokens[i] = sampler.sample(logits, (rel * perRow + perRow - 1) * vocab, vocab)
    }
    const sampleMs = performance.now() - t
    if (plan.returnLogits === "all") return { tokens, logits: logits.slice(), runMs, sampleMs }
    if (plan.returnLogits === "last") {
      const returned = new Float32Array(plan.sampleRows.length * vocab)
      for (let i = 0; i < plan.sampleRows.length; i++) {
        const off = (plan.sampleRows[i]! * perRow + perRow - 1) * vocab
        returned.set(logits.subarray(off, off + vocab), i * vocab)
      }
      return { tokens, logits: returned, runMs, sampleMs }
    }
    return { tokens, runMs, sampleMs }
  }
}
