// Greedy generations through the public engine API for parity tests: the tokens and the prompt logits of each
// prompt, and the device the device tests run on (CHORUS_TEST_DEVICE, CHORUS_TEST_CUDA_GRAPHS).
import { Effect, ManagedRuntime, Stream } from "effect"
import type { Llama3Options } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine, type EngineOptions } from "../../src/core/Engine.ts"
import type { GenerateRequest, GenerationEvent } from "../../src/core/Request.ts"
import { type Device, parseDevice } from "../../src/core/shard/StepProtocol.ts"

/** The sampled tokens of a generation and its prompt logits (`promptLogits` asked for). */
export const tokensAndLogits = (events: ReadonlyArray<GenerationEvent>) => ({
  tokens: events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])),
  logits: events.flatMap((e) => (e._tag === "Started" && e.promptLogits !== undefined ? [e.promptLogits] : []))[0]!
})

export const greedyRequest = (tokenIds: ReadonlyArray<number>, promptLogits: "all" | "last", maxTokens = 16): GenerateRequest => ({
  input: { type: "tokens", tokenIds },
  maxTokens,
  sampling: { temperature: 0 },
  ignoreEos: true,
  promptLogits
})

/**
 * Every prompt greedily through one engine of the Llama 3 adapter: one after another, or all at once (batched in the
 * engine's steps) with `concurrent`.
 */
export const runGreedy = async (
  adapter: Llama3Options,
  engine: EngineOptions,
  prompts: ReadonlyArray<ReadonlyArray<number>>,
  options: { readonly promptLogits: "all" | "last"; readonly concurrent: boolean; readonly maxTokens?: number }
) => {
  const runtime = ManagedRuntime.make(Engine.layer(Llama3Adapter, adapter, engine))
  const one = (p: ReadonlyArray<number>) =>
    runtime.runPromise(Engine.use((e) => Stream.runCollect(e.generate(greedyRequest(p, options.promptLogits, options.maxTokens)))).pipe(Effect.map(tokensAndLogits)))
  try {
    if (options.concurrent) return await Promise.all(prompts.map(one))
    const out = []
    for (const p of prompts) out.push(await one(p))
    return out
  } finally {
    await runtime.dispose()
  }
}

/**
 * The device tests' device: CHORUS_TEST_DEVICE (default `cuda`); with CHORUS_TEST_CUDA_GRAPHS=1 on CUDA, greedy decode
 * steps replay captured CUDA graphs.
 */
export const deviceUnderTest = (): { readonly parsed: Device; readonly device: Device } => {
  const parsed: Device = parseDevice(process.env.CHORUS_TEST_DEVICE ?? "cuda") ?? { kind: "cuda", id: 0 }
  const device: Device = parsed.kind === "cuda" && process.env.CHORUS_TEST_CUDA_GRAPHS === "1"
    ? { ...parsed, options: { enable_cuda_graph: "1" } }
    : parsed
  return { parsed, device }
}
