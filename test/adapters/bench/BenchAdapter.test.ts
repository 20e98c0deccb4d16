// The bench adapter through the real engine: streaming text, batching, determinism, simulated step time, shards,
// and the worker's crash hook. Also prints the engine's raw tokens/s with no model time (a number, not an assertion).
import { Effect, Exit, ManagedRuntime, Stream } from "effect"
import { Piscina } from "piscina"
import { afterAll, describe, expect, it } from "vitest"
import { BenchAdapter, type BenchOptions } from "../../../src/adapters/bench/BenchAdapter.ts"
import { BENCH_WORD_IDS } from "../../../src/adapters/bench/BenchWorker.ts"
import type { BenchShardLoad } from "../../../src/adapters/bench/BenchWorker.ts"
import { loadTokenizer } from "../../../src/adapters/llama3/Tokenizer.ts"
import { Engine, type EngineOptions } from "../../../src/core/Engine.ts"
import type { GenerateRequest, GenerationEvent } from "../../../src/core/Request.ts"

const collect = (events: ReadonlyArray<GenerationEvent>) => ({
  tokens: events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])),
  text: events.map((e) => (e._tag === "Token" || e._tag === "Finished" ? e.text : "")).join(""),
  finish: events.find((e) => e._tag === "Finished")
})

const chat = (content: string, maxTokens: number): GenerateRequest => ({
  input: { type: "chat", messages: [{ role: "user", content }] },
  maxTokens
})

const engineFor = (options: BenchOptions, engineOptions: EngineOptions) => {
  const runtime = ManagedRuntime.make(Engine.layer(BenchAdapter, options, engineOptions))
  const run = (request: GenerateRequest) =>
    runtime.runPromise(Engine.use((engine) => Stream.runCollect(engine.generate(request))).pipe(Effect.map(collect)))
  const stats = () => runtime.runPromise(Engine.use((engine) => engine.stats))
  return { runtime, run, stats }
}

const WORDS = /^( [a-z]+)+$/

describe("BenchWorker word list", () => {
  it("every id is one ordinary word with a leading space, distinct, never a stop token", async () => {
    const tokenizer = await Effect.runPromise(loadTokenizer(undefined))
    expect(BENCH_WORD_IDS.length).toBeGreaterThanOrEqual(40)
    expect(new Set(BENCH_WORD_IDS).size).toBe(BENCH_WORD_IDS.length)
    for (const id of BENCH_WORD_IDS) {
      const word = tokenizer.decode([id])
      expect(word).toMatch(/^ [a-z]+$/)
      expect(tokenizer.encode(word)).toEqual([id])
      expect(tokenizer.eotTokenIds).not.toContain(id)
    }
  })
})

describe("BenchAdapter, one shard", () => {
  const { runtime, run, stats } = engineFor({}, { maxNumSeqs: 8 })
  afterAll(() => runtime.dispose())

  it("loads as the chorus-bench model with the Llama 3 vocabulary", async () => {
    const model = await runtime.runPromise(Engine.use((engine) => Effect.succeed(engine.model)))
    expect(model).toEqual({ id: "chorus-bench", contextLength: 8192, vocabSize: 128256 })
  })

  it("a chat request streams words and finishes with length at max tokens", async () => {
    const result = await run(chat("Tell me a story.", 30))
    expect(result.tokens).toHaveLength(30)
    expect(result.tokens.every((t) => BENCH_WORD_IDS.includes(t))).toBe(true)
    expect(result.text).toMatch(WORDS)
    expect(result.text.split(" ").length - 1).toBe(30)
    expect(result.finish).toMatchObject({ finishReason: "length", stopReason: "max_tokens", usage: { completionTokens: 30 } })
  })

  it("the same request twice gives the same tokens; another prompt starts elsewhere in the list", async () => {
    const a = await run(chat("Same prompt", 20))
    const b = await run(chat("Same prompt", 20))
    const c = await run(chat("A different prompt", 20))
    expect(b.tokens).toEqual(a.tokens)
    expect(c.tokens).not.toEqual(a.tokens)
  })

  it("8 concurrent requests share decode steps and each gets its own deterministic stream", async () => {
    const prompts = Array.from({ length: 8 }, (_, i) => `Prompt number ${i}`)
    const alone = await run(chat(prompts[3]!, 40))
    const before = await stats()
    const results = await Promise.all(prompts.map((p) => run(chat(p, 40))))
    const after = await stats()
    for (const r of results) {
      expect(r.tokens).toHaveLength(40)
      expect(r.finish).toMatchObject({ finishReason: "length" })
    }
    expect(results[3]!.tokens).toEqual(alone.tokens)
    expect(after.numBatchedSteps - before.numBatchedSteps).toBeGreaterThan(20)
    expect(after.generatedTokens - before.generatedTokens).toBe(8 * 40)
  })

  it("prompt logits come back with the real worker's shape (zeros)", async () => {
    const events = await runtime.runPromise(
      Engine.use((engine) =>
        Stream.runCollect(engine.generate({ input: { type: "tokens", tokenIds: [1, 2, 3, 4] }, maxTokens: 2, promptLogits: "all" }))
      )
    )
    const started = events.find((e) => e._tag === "Started")
    expect(started?.promptLogits?.length).toBe(4 * 128256)
    expect(started?.promptLogits?.every((x) => x === 0)).toBe(true)
  })
})

describe("BenchAdapter with simulated model time and shards", () => {
  it("stepDelayMs: 5 makes 20 tokens take at least 100 ms", async () => {
    const fast = engineFor({}, { maxNumSeqs: 8 })
    const slow = engineFor({ stepDelayMs: 5 }, { maxNumSeqs: 8 })
    try {
      await fast.run(chat("warm up", 2))
      await slow.run(chat("warm up", 2))
      const t0 = performance.now()
      const quick = await fast.run(chat("Time me", 20))
      const t1 = performance.now()
      const timed = await slow.run(chat("Time me", 20))
      const t2 = performance.now()
      expect(timed.tokens).toEqual(quick.tokens)
      // 20 tokens = one prefill + 19 decode steps, 5 ms each.
      expect(t2 - t1).toBeGreaterThanOrEqual(99)
      expect(t1 - t0).toBeLessThan(t2 - t1)
    } finally {
      await fast.runtime.dispose()
      await slow.runtime.dispose()
    }
  })

  it("2 shards give the same tokens as 1, through two worker threads, the delay split between them", async () => {
    const one = engineFor({}, { maxNumSeqs: 8 })
    const two = engineFor({ shards: 2, stepDelayMs: 4 }, { maxNumSeqs: 8 })
    try {
      const shardLoads = await two.runtime.runPromise(Engine.use((engine) => Effect.succeed(engine.shards.map((s) => s.load as BenchShardLoad))))
      expect(shardLoads.map((l) => [l.layers, l.isFirst, l.isLast, l.stepDelayMs])).toEqual([
        [[0, 16], true, false, 2],
        [[16, 32], false, true, 2]
      ])
      const prompts = ["first", "second", "third"]
      const a = await Promise.all(prompts.map((p) => one.run(chat(p, 25))))
      const b = await Promise.all(prompts.map((p) => two.run(chat(p, 25))))
      expect(b.map((r) => r.tokens)).toEqual(a.map((r) => r.tokens))
      expect(b.every((r) => WORDS.test(r.text))).toBe(true)
    } finally {
      await one.runtime.dispose()
      await two.runtime.dispose()
    }
  })

  it("rejects invalid options with a ModelConfigError naming the field", async () => {
    for (const [options, field] of [[{ shards: 0 }, "shards"], [{ shards: 33 }, "shards"], [{ stepDelayMs: -1 }, "stepDelayMs"], [{ contextLength: 1.5 }, "contextLength"]] as const) {
      const exit = await Effect.runPromiseExit(Effect.scoped(BenchAdapter.load(options)))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(JSON.stringify(exit)).toContain(`BenchOptions.${field}`)
    }
  })
})

describe("BenchWorker crash hook", () => {
  it("crash() ends the worker thread only: the call fails, the process and a fresh thread go on", async () => {
    const pool = new Piscina({ filename: new URL("../../../src/adapters/bench/BenchWorker.ts", import.meta.url).href, minThreads: 1, maxThreads: 1 })
    try {
      const load: BenchShardLoad = {
        graphPath: "", layers: [0, 32], isFirst: true, isLast: true, dtype: "float32", hiddenSize: 8, vocabSize: 128256,
        numKvHeads: 1, headDim: 8, maxSeqs: 1, maxLen: 64, blockSize: 16, numBlocks: 5, threads: 1, device: { kind: "cpu" }
      }
      await pool.run(load, { name: "load" })
      const threadBefore = pool.threads[0]!.threadId
      await expect(pool.run(undefined, { name: "crash" })).rejects.toThrow()
      // The replacement thread starts unloaded, like a real restart before its reload.
      await expect(pool.run({}, { name: "step" })).rejects.toThrow(/before load/)
      expect(pool.threads[0]!.threadId).not.toBe(threadBefore)
    } finally {
      await pool.close({ force: true })
    }
  })
})

describe("throughput with no model time (printed, not asserted)", () => {
  it("tokens/s of the engine alone at 1 and 64 concurrent streams", async () => {
    const bench = engineFor({}, { maxNumSeqs: 64 })
    try {
      await bench.run(chat("warm up", 50))
      const lines: Array<string> = []
      for (const streams of [1, 64]) {
        const maxTokens = streams === 1 ? 2000 : 400
        const t0 = performance.now()
        const results = await Promise.all(Array.from({ length: streams }, (_, i) => bench.run(chat(`stream ${i}`, maxTokens))))
        const seconds = (performance.now() - t0) / 1000
        const tokens = results.reduce((n, r) => n + r.tokens.length, 0)
        expect(tokens).toBe(streams * maxTokens)
        lines.push(`${streams} stream(s): ${tokens} tokens in ${seconds.toFixed(2)} s = ${(tokens / seconds).toFixed(0)} tokens/s`)
      }
      console.log(`[bench adapter] engine throughput, no model time:\n  ${lines.join("\n  ")}`)
    } finally {
      await bench.runtime.dispose()
    }
  }, 60_000)
})
