// Pipeline shards with micro-batches in flight (issue 11): a model split over 2 and 3 CPU shards, with as many steps
// on the shards at once as there are shards (the default), gives the one-shard engine's greedy output token for
// token, for concurrent requests whose prompts of different lengths make prefill chunks and decodes share steps,
// with a stop string, a request cancelled mid-stream and late arrivals. The engine's observer sees the shards' busy
// spans overlap: while shard k+1 runs one step, shard k runs another.
import { Effect, ManagedRuntime, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../../src/core/Engine.ts"
import { type EngineObserver, type FinishedReason, type ShardBusy, silentObserver } from "../../src/core/EngineObserver.ts"
import type { GenerateRequest, GenerationEvent } from "../../src/core/Request.ts"
import { fixtureDir, readReference } from "../support/fixtures.ts"

process.env.CHORUS_CACHE ??= fs.mkdtempSync(path.join(os.tmpdir(), "chorus-pipeline-"))

const name = "tiny-llama3-b"
const prompts = readReference(name).prompts.map((p) => p.input_ids)
const long = prompts[3]! // 300 tokens: chunked at 64 tokens a step, beside the others' decodes

/** Prompts of 1 to 300 tokens; two share the long prompt's prefix (prefix-cache hits while others are in flight). */
const inputs: ReadonlyArray<{ readonly tokens: ReadonlyArray<number>; readonly maxTokens: number; readonly ignoreEos: boolean }> = [
  { tokens: prompts[0]!, maxTokens: 24, ignoreEos: true },
  { tokens: prompts[1]!, maxTokens: 20, ignoreEos: false },
  { tokens: prompts[2]!, maxTokens: 16, ignoreEos: true },
  { tokens: long, maxTokens: 12, ignoreEos: true },
  { tokens: long.slice(0, 40), maxTokens: 24, ignoreEos: true },
  { tokens: long.slice(0, 150), maxTokens: 18, ignoreEos: true },
  { tokens: [...prompts[1]!, ...prompts[0]!], maxTokens: 22, ignoreEos: true },
  { tokens: long.slice(100, 177), maxTokens: 24, ignoreEos: true }
]
/** Started 30 ms after the others. */
const LATE = new Set([6, 7])
/** Read for 5 tokens, then dropped by its client. */
const CANCELLED = 4
const CANCEL_AFTER = 5
/** Gets a stop string taken from its one-shard text. */
const STOPPED = 0

interface Outcome {
  readonly tokens: ReadonlyArray<number>
  readonly text: string
  readonly finish: { readonly finishReason: string; readonly stopReason: string } | undefined
}

const outcome = (events: ReadonlyArray<GenerationEvent>): Outcome => {
  const finished = events.find((e) => e._tag === "Finished")
  return {
    tokens: events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])),
    text: events.map((e) => (e._tag === "Token" || e._tag === "Finished" ? e.text : "")).join(""),
    finish: finished === undefined ? undefined : { finishReason: finished.finishReason, stopReason: finished.stopReason }
  }
}

const request = (i: number, stop: ReadonlyArray<string>): GenerateRequest => ({
  input: { type: "tokens", tokenIds: inputs[i]!.tokens },
  maxTokens: inputs[i]!.maxTokens,
  sampling: { temperature: 0 },
  ignoreEos: inputs[i]!.ignoreEos,
  ...(stop.length === 0 ? {} : { stop })
})

/** An engine over `shards` shards (default pipeline depth), and what its observer saw. */
const makeEngine = (shards: number) => {
  const spans: Array<ShardBusy> = []
  const finished: Array<FinishedReason> = []
  // Steps that carried decodes and prompt tokens together (decodeStep comes just before its step's engineStep).
  const mixed = { steps: 0, decoding: 0 }
  const observer: EngineObserver = {
    ...silentObserver,
    shardBusy: (b) => spans.push(b),
    finished: (f) => finished.push(f.reason),
    decodeStep: (n) => void (mixed.decoding = n),
    engineStep: (tokens) => {
      if (mixed.decoding > 0 && tokens > mixed.decoding) mixed.steps++
      mixed.decoding = 0
    }
  }
  const runtime = ManagedRuntime.make(
    Engine.layer(Llama3Adapter, { modelDir: fixtureDir(name), shards }, { maxNumSeqs: 8, maxNumBatchedTokens: 64, observer })
  )
  return { runtime, spans, finished, mixed }
}

/** Every request of the scenario at once (the late ones 30 ms after), `stop` on request STOPPED, one cancelled. */
const scenario = (runtime: ManagedRuntime.ManagedRuntime<Engine, unknown>, stop: string | undefined) =>
  Promise.all(
    inputs.map(async (_, i) => {
      if (LATE.has(i)) await new Promise((r) => setTimeout(r, 30))
      let seen = 0
      const events = (engine: Engine["Service"]) => {
        const stream = engine.generate(request(i, i === STOPPED && stop !== undefined ? [stop] : []))
        return i === CANCELLED ? stream.pipe(Stream.takeUntil((e) => e._tag === "Token" && ++seen === CANCEL_AFTER)) : stream
      }
      return outcome(await runtime.runPromise(Engine.use((engine) => Stream.runCollect(events(engine)))))
    })
  )

/** Pairs of spans on different shards, of different steps, that overlap in time. */
const overlaps = (spans: ReadonlyArray<ShardBusy>) => {
  let n = 0
  for (const a of spans) {
    for (const b of spans) {
      if (a.shard < b.shard && a.step !== b.step && a.startedAt < b.endedAt && b.startedAt < a.endedAt) n++
    }
  }
  return n
}

describe(`${name}: pipeline shards with micro-batches in flight give the one-shard output`, () => {
  const one = makeEngine(1)
  afterAll(() => one.runtime.dispose())
  let plain: ReadonlyArray<Outcome> = []
  let stop = ""
  let baseline: ReadonlyArray<Outcome> = []

  beforeAll(async () => {
    // Request STOPPED alone on one shard, for a stop string: the text of a token that first appears after a few.
    plain = await Promise.all(inputs.map((_, i) => one.runtime.runPromise(Engine.use((e) => Stream.runCollect(e.generate(request(i, []))))).then(outcome)))
    const tokens = plain[STOPPED]!.tokens
    const text = plain[STOPPED]!.text
    const codec = await one.runtime.runPromise(Engine.use((e) => Effect.succeed(e.codec)))
    for (let k = 3; k < tokens.length - 2 && stop === ""; k++) {
      const piece = codec.decode([tokens[k]!])
      if (piece.trim().length > 0 && text.indexOf(piece) === codec.decode(tokens.slice(0, k)).length) stop = piece
    }
    baseline = await scenario(one.runtime, stop)
  }, 120_000)

  it("the one-shard run itself: the stop string ends request 0 early, the cancelled request got its tokens, the shard one step at a time", async () => {
    expect(stop).not.toBe("")
    expect(baseline[STOPPED]!.finish).toEqual({ finishReason: "stop", stopReason: "stop_string" })
    expect(baseline[STOPPED]!.tokens.length).toBeLessThan(plain[STOPPED]!.tokens.length)
    expect(baseline[CANCELLED]!.tokens).toEqual(plain[CANCELLED]!.tokens.slice(0, CANCEL_AFTER))
    expect(baseline[CANCELLED]!.finish).toBeUndefined()
    const stats = await one.runtime.runPromise(Engine.use((e) => e.stats))
    // Decode ahead: the next decode step waits in the shard's mailbox while one runs; the shard runs them in turn.
    expect(stats.maxStepsInFlight).toBe(2)
    expect(overlaps(one.spans)).toBe(0)
  })

  describe.each([2, 3])("over %i shards", (shards) => {
    const engine = makeEngine(shards)
    afterAll(() => engine.runtime.dispose())

    it("the same tokens, text and finish for every request, with as many steps in flight as shards", async () => {
      const results = await scenario(engine.runtime, stop)
      results.forEach((r, i) => {
        if (i === CANCELLED) {
          expect(r.tokens).toEqual(plain[CANCELLED]!.tokens.slice(0, CANCEL_AFTER))
          expect(r.finish).toBeUndefined()
        } else expect({ i, ...r }).toEqual({ i, ...baseline[i]! })
      })
      // The model's own requests all ended; the cancelled one counts as an abort (once it left the engine).
      await new Promise((r) => setTimeout(r, 50))
      expect(engine.finished.filter((f) => f === "abort").length).toBe(1)
      expect(engine.finished.length).toBe(inputs.length)
      const stats = await engine.runtime.runPromise(Engine.use((e) => e.stats))
      expect(stats.maxStepsInFlight).toBe(shards)
      expect(stats.numRunning + stats.numWaiting).toBe(0)
      expect(stats.kvUsage).toBe(0)
      expect(overlaps(engine.spans)).toBeGreaterThan(0)
      expect(engine.mixed.steps).toBeGreaterThan(0)
    }, 120_000)

    it("a second round on the same engine (prefix cache warm) is still exact", async () => {
      const results = await scenario(engine.runtime, stop)
      results.forEach((r, i) => {
        if (i !== CANCELLED) expect({ i, ...r }).toEqual({ i, ...baseline[i]! })
      })
    }, 120_000)
  })
})
