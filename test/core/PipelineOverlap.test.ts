// Two steps really are on the shards at once: with the bench adapter's simulated model time (blocked in the shard
// threads, so two threads do not compete for the CPU), the engine's observer records each shard's busy span per step.
// With a pipeline depth of 2 spans of shard 0 and shard 1 for different steps overlap; with depth 1 none do. Each
// shard still runs one step at a time, and each step visits the shards in order.
import { Effect, Exit, Layer, ManagedRuntime, Stream } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../src/adapters/bench/BenchAdapter.ts"
import { Engine } from "../../src/core/Engine.ts"
import { type EngineObserver, type ShardBusy, silentObserver } from "../../src/core/EngineObserver.ts"
import type { GenerateRequest } from "../../src/core/Request.ts"

const request = (i: number): GenerateRequest => ({
  input: { type: "tokens", tokenIds: [1000 + i, 2000 + i, 3000 + i] },
  maxTokens: 12,
  sampling: { temperature: 0 },
  ignoreEos: true
})

const engineAt = (pipelineDepth: number) => {
  const spans: Array<ShardBusy> = []
  const observer: EngineObserver = { ...silentObserver, shardBusy: (b) => spans.push(b) }
  const runtime = ManagedRuntime.make(Engine.layer(BenchAdapter, { shards: 2, stepDelayMs: 30 }, { maxNumSeqs: 8, pipelineDepth, observer }))
  const run = () =>
    Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        runtime.runPromise(Engine.use((e) => Stream.runCollect(e.generate(request(i))))).then((events) =>
          events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : []))
        )
      )
    )
  return { runtime, spans, run }
}

const overlapping = (spans: ReadonlyArray<ShardBusy>) =>
  spans.flatMap((a) => spans.filter((b) => a.shard < b.shard && a.step !== b.step && a.startedAt < b.endedAt && b.startedAt < a.endedAt).map((b) => [a, b]))

/** Per shard, spans in start order never overlap; per step, shard 1 starts after shard 0 ended. */
const expectOrdered = (spans: ReadonlyArray<ShardBusy>) => {
  for (const shard of [0, 1]) {
    const own = spans.filter((s) => s.shard === shard).sort((a, b) => a.startedAt - b.startedAt)
    for (let i = 1; i < own.length; i++) expect(own[i]!.startedAt).toBeGreaterThanOrEqual(own[i - 1]!.endedAt)
    // Steps enter each shard in hand-off order.
    expect(own.map((s) => s.step)).toEqual([...own.map((s) => s.step)].sort((a, b) => a - b))
  }
  const byStep = Map.groupBy(spans, (s) => s.step)
  for (const [, parts] of byStep) {
    expect(parts.map((p) => p.shard).sort()).toEqual([0, 1])
    const [first, second] = [parts.find((p) => p.shard === 0)!, parts.find((p) => p.shard === 1)!]
    expect(second.startedAt).toBeGreaterThanOrEqual(first.endedAt)
  }
}

describe("pipeline depth over 2 bench shards (30 ms simulated per step, 15 ms a shard)", () => {
  const one = engineAt(1)
  const two = engineAt(2)
  afterAll(() => Promise.all([one.runtime.dispose(), two.runtime.dispose()]))

  it("depth 1: one step at a time, no shard busy while the other is", async () => {
    await one.run()
    expect(one.spans.length).toBeGreaterThan(20)
    expect(overlapping(one.spans)).toEqual([])
    expectOrdered(one.spans)
    expect((await one.runtime.runPromise(Engine.use((e) => e.stats))).maxStepsInFlight).toBe(1)
  })

  it("depth 2: two steps in flight, shard 1 runs one while shard 0 runs the other; the same tokens as depth 1", async () => {
    const tokens = await two.run()
    expect(tokens).toEqual(await one.run())
    const pairs = overlapping(two.spans)
    // 8 sequences in two micro-batches of 4, 12 tokens each: about 24 steps, nearly every one overlapping another.
    expect(pairs.length).toBeGreaterThan(10)
    for (const [a, b] of pairs) expect(a.numSeqs + b.numSeqs).toBeLessThanOrEqual(8)
    expectOrdered(two.spans)
    expect((await two.runtime.runPromise(Engine.use((e) => e.stats))).maxStepsInFlight).toBe(2)
  })

  it("a shard worker that dies with two micro-batches in flight: every running request fails, nothing stays held, the next succeeds", async () => {
    const spans: Array<ShardBusy> = []
    const observer: EngineObserver = { ...silentObserver, shardBusy: (b) => spans.push(b) }
    const runtime = ManagedRuntime.make(
      Engine.layer(BenchAdapter, { shards: 2, stepDelayMs: 10 }, { maxNumSeqs: 8, pipelineDepth: 2, observer, shardRestarts: { restartDelayMs: 50 } })
    )
    try {
      const long = (i: number): GenerateRequest => ({ ...request(i), maxTokens: 2000 })
      const streams = Array.from({ length: 6 }, (_, i) => runtime.runPromiseExit(Engine.use((e) => Stream.runCollect(e.generate(long(i))))))
      // Both micro-batches on the shards, several steps in.
      while (overlapping(spans).length < 4) await new Promise((r) => setTimeout(r, 10))
      await runtime.runPromise(Engine.use((e) => e.shards[1]!.crash))
      const exits = await Promise.all(streams)
      for (const exit of exits) {
        expect(Exit.isFailure(exit)).toBe(true)
        expect(JSON.stringify(exit)).toMatch(/shard 1/)
      }
      // The failed sequences are freed once the shard is back and the loop goes on.
      const settled = async () => {
        for (let i = 0; i < 500; i++) {
          const stats = await runtime.runPromise(Engine.use((e) => e.stats))
          if (stats.numRunning + stats.numWaiting === 0) return stats
          await new Promise((r) => setTimeout(r, 10))
        }
        throw new Error("sequences still held 5 s after the crash")
      }
      const stats = await settled()
      expect(stats.kvUsage).toBe(0)
      expect(stats.restarts).toBe(1)
      const again = await runtime.runPromise(Engine.use((e) => Stream.runCollect(e.generate(request(0)))))
      expect(again.filter((e) => e._tag === "Token").length).toBe(12)
    } finally {
      await runtime.dispose()
    }
  }, 60_000)

  it("a pipeline depth above 1 needs more than one shard; 0 is refused", async () => {
    for (const [shards, pipelineDepth] of [[1, 2], [2, 0], [2, 1.5]] as const) {
      const exit = await Effect.runPromiseExit(
        Effect.scoped(Layer.build(Engine.layer(BenchAdapter, { shards }, { maxNumSeqs: 2, pipelineDepth })))
      )
      expect(Exit.isFailure(exit)).toBe(true)
      expect(JSON.stringify(exit)).toMatch(/pipeline depth/)
    }
  })
})
