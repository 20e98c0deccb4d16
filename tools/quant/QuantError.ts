/**
 * How far a quantized model's logits are from the float model's, through the path users take (adapter -> engine ->
 * shard workers). For each prompt: the float model's greedy continuation of `tokens` tokens; then prompt +
 * continuation through both models with the logits of every position, compared at the `tokens` positions that
 * predict the continuation (teacher forcing, so one early divergence does not turn every later position into a
 * comparison of different texts); and the quantized model's own free-running greedy continuation.
 *
 * Figures per prompt, over those positions:
 * - max / mean relative error: at each position `max|q - f| / max|f|` over the vocabulary (the fixtures' measure),
 *   then the largest and the mean over positions;
 * - teacher-forced agreement: positions whose quantized argmax is the float greedy token;
 * - free-running agreement: length of the common prefix of the two greedy continuations.
 */
import { Effect, ManagedRuntime, Stream } from "effect"
import { Llama3Adapter, type Llama3Options } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine, type EngineOptions } from "../../src/core/Engine.ts"
import type { GenerateRequest, GenerationEvent } from "../../src/core/Request.ts"

export interface PromptError {
  readonly prompt: number
  readonly maxRel: number
  readonly meanRel: number
  /** Of `tokens` positions. */
  readonly teacherAgree: number
  /** Common prefix of the free-running greedy continuations, of `tokens`. */
  readonly freeAgree: number
}

export interface QuantErrorOptions {
  /** Adapter options of the float model; the quantized one adds `quantize` (and `dtype`, when given). */
  readonly adapter: Llama3Options
  /** Omitted: only `dtype` changes (a calibration row: how far float16 alone moves these figures). */
  readonly quantize?: NonNullable<Llama3Options["quantize"]> | undefined
  readonly dtype?: Llama3Options["dtype"]
  readonly engine?: EngineOptions
  readonly prompts: ReadonlyArray<ReadonlyArray<number>>
  /** Greedy tokens compared per prompt (default 16). */
  readonly tokens?: number
}

const collect = (events: ReadonlyArray<GenerationEvent>) => ({
  tokens: events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])),
  logits: events.flatMap((e) => (e._tag === "Started" && e.promptLogits !== undefined ? [e.promptLogits] : []))[0]
})

const request = (tokenIds: ReadonlyArray<number>, maxTokens: number, promptLogits: "none" | "all"): GenerateRequest => ({
  input: { type: "tokens", tokenIds },
  maxTokens,
  sampling: { temperature: 0 },
  ignoreEos: true,
  promptLogits
})

const argmax = (xs: Float32Array, from: number, to: number): number => {
  let best = from
  for (let i = from + 1; i < to; i++) if (xs[i] > xs[best]) best = i
  return best - from
}

/** `max|q - f| / max|f|` over `[from, to)`. */
const relative = (q: Float32Array, f: Float32Array, from: number, to: number): number => {
  let diff = 0
  let scale = 0
  for (let i = from; i < to; i++) {
    diff = Math.max(diff, Math.abs(q[i] - f[i]))
    scale = Math.max(scale, Math.abs(f[i]))
  }
  return diff / scale
}

const runner = (adapter: Llama3Options, engine: EngineOptions | undefined) => {
  const runtime = ManagedRuntime.make(Engine.layer(Llama3Adapter, adapter, engine ?? {}))
  const run = (r: GenerateRequest) => runtime.runPromise(Engine.use((e) => Stream.runCollect(e.generate(r))).pipe(Effect.map(collect)))
  return { run, dispose: () => runtime.dispose() }
}

export const measureQuantError = async (o: QuantErrorOptions): Promise<{ readonly prompts: ReadonlyArray<PromptError>; readonly vocab: number }> => {
  const n = o.tokens ?? 16
  const float = runner(o.adapter, o.engine)
  const sequences: Array<{ readonly prompt: ReadonlyArray<number>; readonly continuation: ReadonlyArray<number>; readonly logits: Float32Array }> = []
  try {
    for (const prompt of o.prompts) {
      const { tokens: continuation } = await float.run(request(prompt, n, "none"))
      const { logits } = await float.run(request([...prompt, ...continuation], 1, "all"))
      if (logits === undefined) throw new Error("the float model returned no prompt logits")
      sequences.push({ prompt, continuation, logits })
    }
  } finally {
    await float.dispose()
  }
  const quant = runner({
    ...o.adapter,
    ...(o.quantize === undefined ? {} : { quantize: o.quantize }),
    ...(o.dtype === undefined ? {} : { dtype: o.dtype })
  }, o.engine)
  const results: Array<PromptError> = []
  let vocab = 0
  try {
    for (const [i, s] of sequences.entries()) {
      const { logits } = await quant.run(request([...s.prompt, ...s.continuation], 1, "all"))
      const { tokens: free } = await quant.run(request(s.prompt, n, "none"))
      if (logits === undefined) throw new Error("the quantized model returned no prompt logits")
      const length = s.prompt.length + s.continuation.length
      vocab = s.logits.length / length
      let maxRel = 0
      let sumRel = 0
      let teacherAgree = 0
      for (let t = 0; t < n; t++) {
        // position p's logits predict token p + 1: continuation[t] is predicted at prompt.length - 1 + t
        const from = (s.prompt.length - 1 + t) * vocab
        const rel = relative(logits, s.logits, from, from + vocab)
        maxRel = Math.max(maxRel, rel)
        sumRel += rel
        if (argmax(logits, from, from + vocab) === s.continuation[t]) teacherAgree++
      }
      let freeAgree = 0
      while (freeAgree < n && free[freeAgree] === s.continuation[freeAgree]) freeAgree++
      results.push({ prompt: i, maxRel, meanRel: sumRel / n, teacherAgree, freeAgree })
    }
  } finally {
    await quant.dispose()
  }
  return { prompts: results, vocab }
}

/** Sums over prompts: the worst max, the mean of means, agreements as fractions of all positions. */
export const summarize = (rows: ReadonlyArray<PromptError>, tokens = 16) => ({
  maxRel: Math.max(...rows.map((r) => r.maxRel)),
  meanRel: rows.reduce((a, r) => a + r.meanRel, 0) / rows.length,
  teacherAgree: rows.reduce((a, r) => a + r.teacherAgree, 0) / (rows.length * tokens),
  freeAgree: rows.reduce((a, r) => a + r.freeAgree, 0) / (rows.length * tokens)
})
