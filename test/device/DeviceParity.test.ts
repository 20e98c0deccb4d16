// Parity of the device runtime (native IO-binding addon, device-resident KV cache) with transformers, through the
// same engine path users take. Not part of `npm test` (CI has no GPU and does not build the addon): run it with
// `npm run test:device` — on a GPU host with CHORUS_TEST_DEVICE=cuda (the default) or cuda:0,1 (shards on two GPUs),
// or here on the CPU with CHORUS_TEST_DEVICE=cpu, which runs the same addon with the CPU execution provider.
import { Effect, ManagedRuntime, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { Llama3Adapter } from "../../src/adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../../src/core/Engine.ts"
import type { GenerateRequest, GenerationEvent } from "../../src/core/Request.ts"
import { fixtureDir, readReference, relativeError, topTwoGap } from "../support/fixtures.ts"
import { deviceUnderTest } from "../support/greedyRuns.ts"

process.env.CHORUS_CACHE ??= fs.mkdtempSync(path.join(os.tmpdir(), "chorus-device-"))
// CHORUS_TEST_CUDA_GRAPHS=1: greedy decode steps replay a captured CUDA graph (float16; float32 attention runs on
// the CPU in ORT 1.29, so its graphs are not captured and it serves uncaptured).
const { parsed, device } = deviceUnderTest()

const collect = (events: ReadonlyArray<GenerationEvent>) => ({
  tokens: events.flatMap((e) => (e._tag === "Token" ? [e.tokenId] : [])),
  logits: events.flatMap((e) => (e._tag === "Started" && e.promptLogits !== undefined ? [e.promptLogits] : []))[0]
})

const greedy = (tokenIds: ReadonlyArray<number>, maxTokens = 24): GenerateRequest => ({
  input: { type: "tokens", tokenIds },
  maxTokens,
  sampling: { temperature: 0 },
  ignoreEos: true,
  promptLogits: "last"
})

// CHORUS_TEST_ATTENTION=paged: half-precision engines run the paged layout (PagedAttention over a block pool, CUDA
// only); float32, the reference for near-ties, always runs the row cache (PagedAttention has no float32 kernel).
const halfAttention = process.env.CHORUS_TEST_ATTENTION === "paged" ? "paged" : "fused"

const engineFor = (name: "tiny-llama3-a" | "tiny-llama3-b", dtype: "float32" | "float16" | "bfloat16", shards = 1, maxNumBatchedTokens = 512) =>
  ManagedRuntime.make(
    Engine.layer(
      Llama3Adapter,
      { modelDir: fixtureDir(name), dtype, shards, maxContext: 512, attention: dtype === "float32" ? "fused" : halfAttention },
      { device, nativeRuntime: true, maxNumSeqs: 4, maxNumBatchedTokens }
    )
  )

const run = (rt: ManagedRuntime.ManagedRuntime<Engine, unknown>, request: GenerateRequest): Promise<ReturnType<typeof collect>> =>
  rt.runPromise(Engine.use((engine) => Stream.runCollect(engine.generate(request))).pipe(Effect.map(collect)))

type Runtime = ManagedRuntime.ManagedRuntime<Engine, unknown>

/**
 * Half precision against transformers: prompt logits within `logitsTolerance`, and greedy tokens equal for 16 tokens
 * unless they part at a float32 near-tie (the two best logits within `tieMargin` of the largest), which half
 * precision cannot be expected to order.
 */
const expectHalfPrecisionParity = async (
  half: Runtime,
  f32: Runtime,
  prompt: ReturnType<typeof readReference>["prompts"][number],
  logitsTolerance: number,
  tieMargin: number
) => {
  const r = await run(half, greedy(prompt.input_ids))
  expect(relativeError(r.logits!, prompt.prefill_logits_last)).toBeLessThan(logitsTolerance)
  const want = prompt.greedy_continuation
  const diverge = r.tokens.findIndex((t, i) => t !== want[i])
  if (diverge === -1 || diverge >= 16) return
  const at = await run(f32, greedy([...prompt.input_ids, ...want.slice(0, diverge)], 1))
  expect(topTwoGap(at.logits!)).toBeLessThan(tieMargin)
}

// On several GPUs (CHORUS_TEST_DEVICE=cuda:0,1 or more), 2 shards put one shard on each of the first two GPUs, and 3
// shards (the most tiny-llama3-b's 3 layers allow) also put two shards on one GPU, round robin (docs/multi-gpu.md).
const shardCases: ReadonlyArray<readonly ["tiny-llama3-a" | "tiny-llama3-b", number]> = [
  ["tiny-llama3-a", 1],
  ["tiny-llama3-b", 1],
  ["tiny-llama3-b", 2],
  ...(parsed.kind === "cuda" && (parsed.ids?.length ?? 1) > 1 ? [["tiny-llama3-b", 3] as const] : [])
]

describe.each(shardCases)(`${device.kind}: %s over %i shard(s)`, (name, shards) => {
  const reference = readReference(name)
  const f32 = engineFor(name, "float32", shards)
  const f16 = engineFor(name, "float16", shards)
  afterAll(async () => {
    await f32.dispose()
    await f16.dispose()
  })

  it.each(reference.prompts.map((p, i) => [i, p] as const))("float32, prompt %i: logits within 1e-4, greedy exact", async (_, prompt) => {
    const r = await run(f32, greedy(prompt.input_ids))
    expect(relativeError(r.logits!, prompt.prefill_logits_last)).toBeLessThan(1e-4)
    expect(r.tokens).toEqual(prompt.greedy_continuation)
  })

  it("float32: all four prompts in one batch give the same tokens", async () => {
    const results = await Promise.all(reference.prompts.map((p) => run(f32, greedy(p.input_ids))))
    results.forEach((r, i) => expect(r.tokens).toEqual(reference.prompts[i]!.greedy_continuation))
  })

  it.each(reference.prompts.map((p, i) => [i, p] as const))("float16, prompt %i: logits within 1e-2, greedy equal for 16 tokens or up to a near-tie", async (_, prompt) => {
    await expectHalfPrecisionParity(f16, f32, prompt, 1e-2, 0.01)
  })
})

describe(`${device.kind}: long prompts prefilled in chunks`, () => {
  const reference = readReference("tiny-llama3-b")
  // 64-token chunks: the 300-token prompt takes five, each attending to the chunks already in the cache.
  const f32 = engineFor("tiny-llama3-b", "float32", 1, 64)
  const f16Chunked = engineFor("tiny-llama3-b", "float16", 1, 64)
  const f16Whole = engineFor("tiny-llama3-b", "float16", 1, 512)
  afterAll(async () => {
    await f32.dispose()
    await f16Chunked.dispose()
    await f16Whole.dispose()
  })

  it("float16 (attention on the device): chunked prefill gives what a whole prefill gives", async () => {
    for (const prompt of reference.prompts) {
      const chunked = await run(f16Chunked, greedy(prompt.input_ids))
      const whole = await run(f16Whole, greedy(prompt.input_ids))
      expect(relativeError(chunked.logits!, prompt.prefill_logits_last)).toBeLessThan(1e-2)
      expect(chunked.tokens.slice(0, 16)).toEqual(whole.tokens.slice(0, 16))
    }
  })

  it("float32: logits within 1e-4 and greedy exact, while other sequences decode", async () => {
    const results = await Promise.all(reference.prompts.map((p) => run(f32, greedy(p.input_ids))))
    results.forEach((r, i) => {
      const prompt = reference.prompts[i]!
      expect(relativeError(r.logits!, prompt.prefill_logits_last)).toBeLessThan(1e-4)
      expect(r.tokens).toEqual(prompt.greedy_continuation)
    })
  })
})

// bfloat16 runs on the device runtime only (ORT's CPU EP has no bfloat16 MatMul): CUDA hosts.
if (device.kind === "cuda") {
  describe("cuda: bfloat16", () => {
    const reference = readReference("tiny-llama3-b")
    const bf16 = engineFor("tiny-llama3-b", "bfloat16")
    const f32 = engineFor("tiny-llama3-b", "float32")
    afterAll(async () => {
      await bf16.dispose()
      await f32.dispose()
    })

    it.each(reference.prompts.map((p, i) => [i, p] as const))("prompt %i: logits within 2e-2, greedy equal for 16 tokens or up to a near-tie", async (_, prompt) => {
      // bfloat16 keeps 8 bits of mantissa (float16: 11), hence the wider tolerances.
      await expectHalfPrecisionParity(bf16, f32, prompt, 2e-2, 0.02)
    })
  })
}

describe(`${device.kind}: rows layout, a chat's second turn reuses its first turn's row`, () => {
  // Prefix caching in the row layout: a finished sequence's row keeps its keys and values, and a new sequence that
  // repeats them (the next turn of the chat) takes that row and prefills only the rest.
  const rowsEngine = (dtype: "float32" | "float16", enablePrefixCaching: boolean) =>
    ManagedRuntime.make(
      Engine.layer(
        Llama3Adapter,
        { modelDir: fixtureDir("tiny-llama3-a"), dtype, maxContext: 512, attention: "fused" },
        { device, nativeRuntime: true, maxNumSeqs: 4, maxNumBatchedTokens: 512, enablePrefixCaching }
      )
    )
  const dtypes = device.kind === "cuda" ? (["float32", "float16"] as const) : (["float32"] as const)
  const engines = dtypes.map((dtype) => ({ dtype, reuse: rowsEngine(dtype, true), scratch: rowsEngine(dtype, false) }))
  afterAll(async () => {
    for (const e of engines) await e.reuse.dispose(), await e.scratch.dispose()
  })
  const chat = (tokenIds: ReadonlyArray<number>, maxTokens: number): GenerateRequest => ({
    input: { type: "tokens", tokenIds },
    maxTokens,
    sampling: { temperature: 0 },
    ignoreEos: true
  })
  const stats = (rt: Runtime) => rt.runPromise(Engine.use((engine) => engine.stats))

  it.each(dtypes.map((d) => [d]))("%s: same tokens as without reuse, and the hit is counted", async (dtype) => {
    const { reuse, scratch } = engines.find((e) => e.dtype === dtype)!
    const history = Array.from({ length: 120 }, (_, i) => 100 + ((i * 37) % 200))
    // Another chat decodes on the next row the whole time: every step gives the free row a dummy token, which must
    // land after what the row holds.
    const turn1Pending = run(reuse, chat(history, 12))
    const other = run(reuse, chat(Array.from({ length: 40 }, (_, i) => 300 + i), 120))
    const turn1 = await turn1Pending
    const before = await stats(reuse)
    const turn2Prompt = [...history, ...turn1.tokens, 42, 43, 44, 45]
    const turn2 = await run(reuse, chat(turn2Prompt, 16))
    const after = await stats(reuse)
    expect((await other).tokens.length).toBe(120)
    // 120 history tokens and 11 of the 12 answer tokens have keys and values in the row (the last never ran). A
    // shard that replays CUDA graphs does not reuse rows (StepProtocol's `rowReuse`).
    const graphs = device.kind === "cuda" && device.options?.enable_cuda_graph === "1" && dtype !== "float32"
    expect(after.prefixCacheHits - before.prefixCacheHits).toBe(graphs ? 0 : 131)
    const alone = await run(scratch, chat(turn2Prompt, 16))
    expect((await stats(scratch)).prefixCacheHits).toBe(0)
    expect(turn2.tokens).toEqual(alone.tokens)
    expect((await run(scratch, chat(history, 12))).tokens).toEqual(turn1.tokens)
  })
})

describe(`${device.kind}: rows layout under a server's pattern of load`, () => {
  // What `chorus bench` does to a server, small: streams one after another (each leaves its row holding its tokens,
  // so later ones go to higher rows), then a burst of new prompts with a repeated one (a whole prompt found in a row:
  // its first step computes one token) while prompts are chunked beside decoding rows. Every answer must equal the
  // same request alone on a server without CUDA graphs or reuse.
  const rowsEngine = (enablePrefixCaching: boolean, graphs: boolean) =>
    ManagedRuntime.make(
      Engine.layer(
        Llama3Adapter,
        { modelDir: fixtureDir("tiny-llama3-a"), dtype: device.kind === "cuda" ? "float16" : "float32", maxContext: 512, attention: "fused" },
        {
          device: device.kind !== "cuda" ? device : graphs ? { kind: "cuda", id: device.id, options: { enable_cuda_graph: "1" } } : { kind: "cuda", id: device.id },
          nativeRuntime: true,
          maxNumSeqs: 16,
          maxNumBatchedTokens: 200,
          enablePrefixCaching
        }
      )
    )
  const loaded = rowsEngine(true, true)
  const plain = rowsEngine(false, false)
  afterAll(async () => {
    await loaded.dispose()
    await plain.dispose()
  })
  const prompt = (seed: number, n = 90) => Array.from({ length: n }, (_, i) => 20 + ((seed * 131 + i * 17) % 400))
  const ask = (tokenIds: ReadonlyArray<number>, maxTokens: number): GenerateRequest => ({
    input: { type: "tokens", tokenIds },
    maxTokens,
    sampling: { temperature: 0 },
    ignoreEos: true
  })

  it("streams in turn, then a burst with a repeated prompt: every answer as alone", async () => {
    const requests: Array<GenerateRequest> = []
    for (let i = 0; i < 5; i++) requests.push(ask(prompt(i), 30))
    const sequential: Array<ReadonlyArray<number>> = []
    for (const r of requests) sequential.push((await run(loaded, r)).tokens)
    const burst = [ask(prompt(0), 30), ...Array.from({ length: 9 }, (_, i) => ask(prompt(10 + i, 60 + 7 * i), 40))]
    const burstTokens = (await Promise.all(burst.map((r) => run(loaded, r)))).map((r) => r.tokens)
    const again = await Promise.all(burst.map((r) => run(loaded, r)))
    for (const [i, r] of requests.entries()) expect(sequential[i]).toEqual((await run(plain, r)).tokens)
    for (const [i, r] of burst.entries()) {
      const alone = (await run(plain, r)).tokens
      expect(burstTokens[i]).toEqual(alone)
      expect(again[i]!.tokens).toEqual(alone)
    }
  })
})
