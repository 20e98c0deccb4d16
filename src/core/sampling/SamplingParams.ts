import type { GrammarSpec } from "./Grammar.ts"

/**
 * Sampling parameters of one sequence, resolved (defaults applied, ranges checked) before they reach a shard.
 * Plain data: it crosses the worker-thread boundary by structured clone.
 */
export interface SamplingParams {
  /** 0 means greedy (argmax). */
  readonly temperature: number
  /** 0 disables top-k. */
  readonly topK: number
  /** 1 disables top-p. */
  readonly topP: number
  /** 0 disables min-p. */
  readonly minP: number
  /** HF-style repetition penalty over prompt and generated tokens; 1 disables it. */
  readonly repetitionPenalty: number
  /** OpenAI-style penalties over generated tokens; 0 disables them. */
  readonly presencePenalty: number
  readonly frequencyPenalty: number
  /** Seed of the per-sequence random generator: same seed, same prompt, same tokens. */
  readonly seed: number
  /** Constrained decoding (`response_format`): only tokens the grammar allows are sampled. Absent: unconstrained. */
  readonly grammar?: GrammarSpec | undefined
}

export const greedy: SamplingParams = {
  temperature: 0,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  seed: 0
}
