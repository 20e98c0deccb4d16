// The device shard worker on packed plans, driven directly (no engine): the `paged` layout (PagedAttention over a
// block pool; CUDA only, ORT has no CPU kernel for it) and the `rows` layout (fused GroupQueryAttention, one row per
// sequence; also on the CPU through the addon's CPU provider). A small block manager here gives each sequence fresh
// blocks from 1 up (block 0 stays reserved, as the engine's does). Not part of `npm test`: `npm run test:device`,
// with CHORUS_TEST_DEVICE=cuda (default) or cpu.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { convertCheckpoint } from "../../src/adapters/llama3/Converter.ts"
import type { AttentionLayout, ModelDType } from "../../src/adapters/llama3/GraphBuilder.ts"
import { loadLlamaConfig } from "../../src/adapters/llama3/LlamaConfig.ts"
import * as Worker from "../../src/core/shard/DeviceShardWorker.ts"
import { greedy as greedyParams } from "../../src/core/sampling/SamplingParams.ts"
import { type Device, parseDevice, type ShardLoad, type StepPlan } from "../../src/core/shard/StepProtocol.ts"
import { fixtureDir, readReference, relativeError, topTwoGap } from "../support/fixtures.ts"

const device: Device = parseDevice(process.env.CHORUS_TEST_DEVICE ?? "cuda") ?? { kind: "cuda", id: 0 }
const out = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-paged-shard-"))
const MAX_LEN = 512
const BLOCK = 16
const MAX_SEQS = 4

const loadShard = async (name: string, dtype: ModelDType, attention: AttentionLayout, graphs = false) => {
  const config = await Effect.runPromise(loadLlamaConfig(fixtureDir(name)))
  const model = await Effect.runPromise(convertCheckpoint({
    modelDir: fixtureDir(name), outDir: path.join(out, `${name}-${dtype}-${attention}`), dtype, shards: 1, maxContext: MAX_LEN, attention
  }))
  const load: ShardLoad = {
    graphPath: model.shardPaths[0]!,
    layers: [0, config.numLayers],
    isFirst: true,
    isLast: true,
    dtype,
    hiddenSize: config.hiddenSize,
    vocabSize: config.vocabSize,
    numKvHeads: config.numKvHeads,
    headDim: config.headDim,
    maxSeqs: MAX_SEQS,
    maxLen: MAX_LEN,
    blockSize: BLOCK,
    numBlocks: MAX_SEQS * (MAX_LEN / BLOCK) + 1,
    threads: 2,
    device: graphs && device.kind === "cuda" ? { ...device, options: { enable_cuda_graph: "1" } } : device
  }
  const result = await Worker.load(load)
  return { load, result, vocab: config.vocabSize }
}

interface Seq {
  readonly id: number
  readonly row: number
  readonly prompt: ReadonlyArray<number>
  readonly blocks: Array<number>
  /** Tokens in the cache. */
  cached: number
  readonly generated: Array<number>
  lastLogits?: Float32Array
}

let nextSeqId = 1
let nextBlock = 1

/** One packed step over `work`: [sequence, new tokens]; every entry that completes its known tokens samples. */
const stepOf = async (work: ReadonlyArray<readonly [Seq, ReadonlyArray<number>]>, fresh: ReadonlySet<Seq>, wantLogits: ReadonlySet<Seq>) => {
  for (const [s, toks] of work) while (s.blocks.length * BLOCK < s.cached + toks.length) s.blocks.push(nextBlock++)
  const width = Math.max(...work.map(([s]) => s.blocks.length))
  const sample = work.flatMap(([s, toks], e) => (s.cached + toks.length >= s.prompt.length ? [e] : []))
  const plan: StepPlan = {
    seqIds: Int32Array.from(work, ([s]) => s.id),
    rows: Int32Array.from(work, ([s]) => s.row),
    numTokens: Int32Array.from(work, ([, t]) => t.length),
    pastLens: Int32Array.from(work, ([s]) => s.cached),
    tokenIds: Int32Array.from(work.flatMap(([, t]) => t)),
    blockTables: Int32Array.from(work.flatMap(([s]) => Array.from({ length: width }, (_, i) => s.blocks[Math.min(i, s.blocks.length - 1)]!))),
    blocksPerEntry: width,
    sampleEntries: Int32Array.from(sample),
    newSequences: [...fresh].map((s) => ({ seqId: s.id, params: greedyParams, promptTokenIds: Int32Array.from(s.prompt) })),
    returnLogits: Uint8Array.from(work, ([s]) => (wantLogits.has(s) ? 1 : 0))
  }
  const r = await Worker.step(plan)
  sample.forEach((e, i) => work[e]![0].generated.push(r.tokens![i]!))
  return r
}

/**
 * Prompts prefilled (in `chunk`-token pieces, all sequences in the same steps, decodes riding along once a prompt is
 * done) then decoded together to `n` tokens each. Returns each sequence's tokens and its prompt's last logits.
 */
const generate = async (prompts: ReadonlyArray<ReadonlyArray<number>>, n: number, vocab: number, chunk = 1 << 30) => {
  nextBlock = 1 // the previous call released its sequences: their blocks are free again
  const seqs: Array<Seq> = prompts.map((p, i) => ({ id: nextSeqId++, row: i, prompt: p, blocks: [], cached: 0, generated: [] }))
  const fresh = new Set(seqs)
  while (seqs.some((s) => s.generated.length < n)) {
    const work: Array<readonly [Seq, ReadonlyArray<number>]> = []
    const wantLogits = new Set<Seq>()
    for (const s of seqs) {
      if (s.generated.length >= n) continue
      if (s.cached < s.prompt.length) {
        const toks = s.prompt.slice(s.cached, s.cached + chunk)
        if (s.cached + toks.length === s.prompt.length) wantLogits.add(s)
        work.push([s, toks])
      } else work.push([s, [s.generated[s.generated.length - 1]!]])
    }
    const r = await stepOf(work, fresh, wantLogits)
    fresh.clear()
    // logits come back by entry, for the entries that asked (each its last position)
    let at = 0
    for (const [s] of work) {
      if (!wantLogits.has(s)) continue
      s.lastLogits = r.logits!.slice(at * vocab, (at + 1) * vocab)
      at++
    }
    for (const [s, toks] of work) s.cached += toks.length
  }
  await Worker.release(seqs.map((s) => s.id))
  return seqs.map((s) => ({ tokens: s.generated.slice(0, n), logits: s.lastLogits! }))
}

const reference = readReference("tiny-llama3-a")
const prompts = reference.prompts.map((p) => p.input_ids)

describe(`${device.kind}: rows layout (fused GroupQueryAttention) on packed plans`, () => {
  const dtype: ModelDType = device.kind === "cuda" ? "float16" : "float32"
  const logitsTol = dtype === "float32" ? 1e-4 : 1e-2

  it("each prompt alone: logits and greedy tokens as transformers'", async () => {
    const { result, vocab } = await loadShard("tiny-llama3-a", dtype, "fused")
    expect(result.layout).toBe("rows")
    for (const [i, p] of reference.prompts.entries()) {
      const [r] = await generate([p.input_ids], 16, vocab)
      expect(relativeError(r!.logits, p.prefill_logits_last), `prompt ${i}`).toBeLessThan(logitsTol)
      if (dtype === "float32") expect(r!.tokens).toEqual(p.greedy_continuation.slice(0, 16))
    }
    // batched (rows 0-3 prefilled in one step, then decoding together) equals alone; chunked prefill too
    const alone: Array<ReadonlyArray<number>> = []
    for (const p of prompts) alone.push((await generate([p], 16, vocab))[0]!.tokens)
    const together = await generate(prompts, 16, vocab)
    together.forEach((r, i) => expect(r.tokens, `prompt ${i} batched`).toEqual(alone[i]))
    const chunked = await generate(prompts, 16, vocab, 5)
    chunked.forEach((r, i) => expect(r.tokens, `prompt ${i} chunked`).toEqual(alone[i]))
    // the 300-token prompt on row 0, still prefilling in chunks while rows 1-3 decode over it
    const reversed = await generate([...prompts].reverse(), 16, vocab, 5)
    reversed.forEach((r, i) => expect(r.tokens, `prompt ${prompts.length - 1 - i} chunked on row ${i}`).toEqual(alone[prompts.length - 1 - i]))
  })
})

if (device.kind === "cuda") {
  describe("cuda: paged layout (PagedAttention over a block pool)", () => {
    it("float16: logits within 1e-2, greedy as transformers' for 16 tokens or up to a near-tie, batched and chunked equal alone, CUDA graphs equal", async () => {
      const { result, vocab } = await loadShard("tiny-llama3-a", "float16", "paged")
      expect(result.layout).toBe("blocks")
      const alone: Array<ReadonlyArray<number>> = []
      // Where float16 parts from transformers' float32 greedy tokens: checked below to be a float32 near-tie.
      const partings: Array<{ readonly prompt: number; readonly at: number }> = []
      for (const [i, p] of reference.prompts.entries()) {
        const [r] = await generate([p.input_ids], 16, vocab)
        expect(relativeError(r!.logits, p.prefill_logits_last), `prompt ${i}`).toBeLessThan(1e-2)
        const at = r!.tokens.findIndex((t, k) => t !== p.greedy_continuation[k])
        if (at >= 0 && at < 16) partings.push({ prompt: i, at })
        alone.push(r!.tokens)
      }
      const together = await generate(prompts, 16, vocab)
      together.forEach((r, i) => expect(r.tokens, `prompt ${i} batched`).toEqual(alone[i]))
      const chunked = await generate([...prompts].reverse(), 16, vocab, 5)
      chunked.forEach((r, i) => expect(r.tokens, `prompt ${prompts.length - 1 - i} chunked`).toEqual(alone[prompts.length - 1 - i]))

      // CUDA graphs per batch bucket: 1, 3 (bucket 4) and 4 sequences decoding.
      await loadShard("tiny-llama3-a", "float16", "paged", true)
      for (const [i, p] of prompts.entries()) expect((await generate([p], 16, vocab))[0]!.tokens, `graphs, prompt ${i}`).toEqual(alone[i])
      const three = await generate(prompts.slice(0, 3), 16, vocab)
      three.forEach((r, i) => expect(r.tokens, `graphs, 3 together, prompt ${i}`).toEqual(alone[i]))
      const four = await generate(prompts, 16, vocab)
      four.forEach((r, i) => expect(r.tokens, `graphs, 4 together, prompt ${i}`).toEqual(alone[i]))

      // Each parting from transformers is a near-tie in float32 (the two best logits within 1% of the largest), which
      // half precision cannot be expected to order; the float32 row layout gives those logits.
      if (partings.length > 0) {
        await loadShard("tiny-llama3-a", "float32", "fused")
        for (const { prompt, at } of partings) {
          const p = reference.prompts[prompt]!
          const [r] = await generate([[...p.input_ids, ...p.greedy_continuation.slice(0, at)]], 1, vocab)
          expect(topTwoGap(r!.logits), `prompt ${prompt} parts at token ${at}`).toBeLessThan(0.01)
        }
      }
    })

    it("rows layout with CUDA graphs per row bucket equals uncaptured", async () => {
      const { vocab } = await loadShard("tiny-llama3-a", "float16", "fused")
      const plain = await generate(prompts, 16, vocab)
      await loadShard("tiny-llama3-a", "float16", "fused", true)
      const captured = await generate(prompts, 16, vocab)
      captured.forEach((r, i) => expect(r.tokens).toEqual(plain[i]!.tokens))
      const one = await generate(prompts.slice(0, 1), 16, vocab)
      expect(one[0]!.tokens).toEqual(plain[0]!.tokens)
    })
  })
}
