// Decode ahead (EngineLoop.ts, Scheduler.scheduleAhead) through the public engine API, where its edge cases are: a
// sequence that stops on the token its step ahead continues from (the extra token is dropped, its row and blocks are
// freed only once that step is back, and whoever takes them next is unharmed), beside a sequence that goes on. Every
// answer equals transformers' greedy continuation, with decode ahead and without.
import { Effect, ManagedRuntime, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../../src/core/Engine.ts"
import type { GenerateRequest, GenerationEvent } from "../../src/core/Request.ts"
import { fixtureDir, readReference } from "../support/fixtures.ts"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-decode-ahead-"))
process.env.CHORUS_CACHE ??= path.join(root, "cache")
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

const reference = readReference("tiny-llama3-a")
const stopping = reference.prompts[0]!
// The fixture with an end-of-turn token its first prompt's greedy continuation reaches at the 5th token.
const STOP_AT = 4
const stopToken = stopping.greedy_continuation[STOP_AT]!
const modelDir = path.join(root, "tiny-llama3-a-eos")
fs.cpSync(fixtureDir("tiny-llama3-a"), modelDir, { recursive: true })
for (const file of ["config.json", "generation_config.json"]) {
  const json = JSON.parse(fs.readFileSync(path.join(modelDir, file), "utf8")) as Record<string, unknown>
  fs.writeFileSync(path.join(modelDir, file), JSON.stringify({ ...json, eos_token_id: stopToken }))
}

const ask = (tokenIds: ReadonlyArray<number>, ignoreEos: boolean): GenerateRequest => ({
  input: { type: "tokens", tokenIds },
  maxTokens: 16,
  sampling: { temperature: 0 },
  ignoreEos
})
const collect = (events: ReadonlyArray<GenerationEvent>) => ({
  tokens: events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])),
  finish: events.find((e) => e._tag === "Finished")
})

describe.each([true, false])("decode ahead %s", (decodeAhead) => {
  const runtime = ManagedRuntime.make(Engine.layer(Llama3Adapter, { modelDir }, { maxNumSeqs: 4, decodeAhead }))
  afterAll(() => runtime.dispose())
  const run = (request: GenerateRequest) =>
    runtime.runPromise(Engine.use((engine) => Stream.runCollect(engine.generate(request))).pipe(Effect.map(collect)))

  it("a stop on the pending token ends the sequence there, the one beside it goes on, and the next one is unharmed", async () => {
    const going = reference.prompts[1]!
    const [stopped, other] = await Promise.all([run(ask(stopping.input_ids, false)), run(ask(going.input_ids, true))])
    expect(stopped.tokens).toEqual(stopping.greedy_continuation.slice(0, STOP_AT + 1))
    expect(stopped.finish).toMatchObject({ finishReason: "stop" })
    expect(other.tokens).toEqual(going.greedy_continuation.slice(0, 16))
    // The stopped sequence's row and blocks go to the next request once the step ahead is back.
    const next = reference.prompts[2]!
    expect((await run(ask(next.input_ids, true))).tokens).toEqual(next.greedy_continuation.slice(0, 16))
    const stats = await runtime.runPromise(Engine.use((e) => e.stats))
    expect(stats.maxStepsInFlight).toBe(decodeAhead ? 2 : 1)
  })
})
