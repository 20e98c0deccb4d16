// Parity with transformers through the path users take: adapter -> engine -> shard workers -> sampled tokens.
import { Effect, ManagedRuntime, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../../src/core/Engine.ts"
import type { GenerateRequest, GenerationEvent } from "../../src/core/Request.ts"
import { fixtureDir, readReference, relativeError } from "../support/fixtures.ts"

process.env.CHORUS_CACHE ??= fs.mkdtempSync(path.join(os.tmpdir(), "chorus-parity-"))

const collect = (events: ReadonlyArray<GenerationEvent>) => ({
  tokens: events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])),
  logits: events.flatMap((e) => (e._tag === "Started" && e.promptLogits !== undefined ? [e.promptLogits] : []))[0],
  finish: events.find((e) => e._tag === "Finished")
})

const greedy = (tokenIds: ReadonlyArray<number>, promptLogits: "last" | "all"): GenerateRequest => ({
  input: { type: "tokens", tokenIds },
  maxTokens: 24,
  sampling: { temperature: 0 },
  ignoreEos: true,
  promptLogits
})

describe.each([
  ["tiny-llama3-a", 1],
  ["tiny-llama3-b", 1],
  ["tiny-llama3-b", 2]
] as const)("%s over %i shard(s)", (name, shards) => {
  const reference = readReference(name)
  const runtime = ManagedRuntime.make(
    Engine.layer(Llama3Adapter, { modelDir: fixtureDir(name), shards }, { maxNumSeqs: 4, maxNumBatchedTokens: 128 })
  )
  afterAll(() => runtime.dispose())
  const run = (request: GenerateRequest) =>
    runtime.runPromise(Engine.use((engine) => Stream.runCollect(engine.generate(request))).pipe(Effect.map(collect)))

  it.each(reference.prompts.map((p, i) => [i, p] as const))("prompt %i alone: logits within 1e-4, greedy continuation exact", async (_, prompt) => {
    const all = prompt.prefill_logits_all !== null
    const result = await run(greedy(prompt.input_ids, all ? "all" : "last"))
    const vocab = prompt.prefill_logits_last.length
    const logits = result.logits!
    expect(relativeError(logits.subarray(logits.length - vocab), prompt.prefill_logits_last)).toBeLessThan(1e-4)
    if (all) expect(relativeError(logits, prompt.prefill_logits_all!.flat())).toBeLessThan(1e-4)
    expect(result.tokens).toEqual(prompt.greedy_continuation)
    expect(result.finish).toMatchObject({ finishReason: "length", usage: { promptTokens: prompt.input_ids.length, completionTokens: 24 } })
  })

  it("all four prompts in one batch: the same tokens as alone, sharing decode steps", async () => {
    const before = await runtime.runPromise(Engine.use((e) => e.stats))
    const results = await Promise.all(reference.prompts.map((p) => run(greedy(p.input_ids, "last"))))
    results.forEach((r, i) => expect(r.tokens).toEqual(reference.prompts[i]!.greedy_continuation))
    const after = await runtime.runPromise(Engine.use((e) => e.stats))
    expect(after.numBatchedSteps - before.numBatchedSteps).toBeGreaterThan(10)
  })
})
