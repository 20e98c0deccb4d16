// The last shard's `masked_greedy_token` (TensorNames.ts): per constrained row, the ArgMax of the logits over the ids
// its mask allows (an `allowed_ids` list or a `token_bitmask` row, `GraphMask.ts`), per other row `greedy_token`,
// computed inside the graph so constrained greedy steps fetch ids instead of logits. Checked against the same masked
// ArgMax in JS over the graph's own logits, on a tiny checkpoint (rotary-outside graphs: the CPU runtime's).
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { afterAll, describe, expect, it } from "vitest"
import { type AttentionLayout, buildShardGraph, writeShard } from "../../../src/adapters/llama3/GraphBuilder.ts"
import { loadLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { openCheckpoint } from "../../../src/checkpoint/Safetensors.ts"
import { Rng } from "../../../src/core/sampling/Rng.ts"
import { GraphMaskBuilder } from "../../../src/core/shard/GraphMask.ts"
import * as TensorNames from "../../../src/core/shard/TensorNames.ts"
import { maskFeeds } from "../../support/maskFeeds.ts"

const dir = path.resolve(import.meta.dirname, "../../fixtures/tiny-llama3-b")
const config = await Effect.runPromise(loadLlamaConfig(dir))
const V = config.vocabSize
const words = Math.ceil(V / 32)
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-masked-greedy-"))
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }))

const openSession = async (attention: AttentionLayout) => {
  const file = path.join(tmpRoot, `${attention}.onnx`)
  const source = await Effect.runPromise(openCheckpoint(dir))
  await Effect.runPromise(writeShard(source, config, buildShardGraph(config, { layers: [0, config.numLayers], dtype: "float32", maxContext: 64, attention }), file))
  return ort.InferenceSession.create(file, { intraOpNumThreads: 1 })
}

/** One decode step of `tokens.length` rows from an empty cache. */
const feedsOf = (attention: AttentionLayout, tokens: ReadonlyArray<number>): Record<string, ort.Tensor> => {
  const rows = tokens.length
  const feeds: Record<string, ort.Tensor> = {
    [TensorNames.inputIds]: new ort.Tensor("int64", BigInt64Array.from(tokens.map(BigInt)), [rows, 1]),
    [TensorNames.seqlensK]: new ort.Tensor("int32", new Int32Array(rows), [rows]),
    [TensorNames.totalSequenceLength]: new ort.Tensor("int32", Int32Array.of(1), []),
    [TensorNames.logitsIndex]: new ort.Tensor("int64", new BigInt64Array(rows), [rows, 1])
  }
  if (attention === "rotary-outside") feeds[TensorNames.positionIds] = new ort.Tensor("int64", new BigInt64Array(rows), [rows, 1])
  for (let l = 0; l < config.numLayers; l++) {
    const empty = () => new ort.Tensor("float32", new Float32Array(0), [rows, config.numKvHeads, 0, config.headDim])
    feeds[TensorNames.pastKey(l)] = empty()
    feeds[TensorNames.pastValue(l)] = empty()
  }
  return feeds
}

/** The lowest id of the largest allowed logit of row `r` (the sampler's greedy rule); -1 when nothing is allowed. */
const maskedArgmax = (logits: Float32Array, r: number, mask: Int32Array) => {
  let best = -1
  for (let v = 0; v < V; v++) {
    if (((mask[r * words + (v >> 5)]! >>> (v & 31)) & 1) === 0) continue
    if (best < 0 || logits[r * V + v]! > logits[r * V + best]!) best = v
  }
  return best
}

/** The graph's rule for `masked_greedy_token`, in JS: per row, the masked ArgMax of its mask's row, or the plain one. */
const expected = (logits: Float32Array, rows: number, masks: ReadonlyArray<Int32Array | undefined>) => {
  const all = new Int32Array(words).fill(-1)
  return Array.from({ length: rows }, (_, r) => maskedArgmax(logits.subarray(r * V, (r + 1) * V), 0, masks[r] ?? all))
}

/** A bitmask row allowing `count` distinct random ids (all of them when count >= V). */
const randomRow = (rng: Rng, count: number): Int32Array => {
  const row = new Int32Array(words)
  if (count >= V) return row.fill(-1)
  let n = 0
  while (n < count) {
    const id = Math.floor(rng.next() * V)
    if (((row[id >> 5]! >>> (id & 31)) & 1) === 1) continue
    row[id >> 5]! |= 1 << (id & 31)
    n++
  }
  return row
}

/** One decode step of `rows` rows fetching the logits, greedy_token and masked_greedy_token under `masks` (per row). */
const runMasked = async (session: ort.InferenceSession, attention: AttentionLayout, tokens: ReadonlyArray<number>, masks: ReadonlyArray<Int32Array | undefined>, maxSparse?: number) => {
  const builder = new GraphMaskBuilder(tokens.length, V, maxSparse)
  masks.forEach((m, r) => m !== undefined && builder.add(r, m))
  const mask = builder.build()
  const out = await session.run({ ...feedsOf(attention, tokens), ...maskFeeds(V, mask) }, [TensorNames.logits, TensorNames.greedyToken, TensorNames.maskedGreedyToken])
  return {
    mask,
    logits: out[TensorNames.logits]!.data as Float32Array,
    greedy: [...(out[TensorNames.greedyToken]!.data as BigInt64Array)].map(Number),
    masked: [...(out[TensorNames.maskedGreedyToken]!.data as BigInt64Array)].map(Number)
  }
}

describe.each<AttentionLayout>(["rotary-outside"])("%s graph", (attention) => {
  it("masked_greedy_token is the ArgMax over the ids each row's mask allows, plain rows keep greedy_token, as id lists and bitmasks", async () => {
    const session = await openSession(attention)
    const rng = new Rng(7)
    const tokens = [3, 17, 200, 511, 42, 9, 77, 123]
    for (let trial = 0; trial < 8; trial++) {
      // row 0: unconstrained; row 1: one id; rows 2-4: short lists; row 5: everything; rows 6-7: unconstrained or
      // larger random sets (lists of at most 1,024 ids cover this 640-id vocabulary; bitmask rows: the next test)
      const masks: Array<Int32Array | undefined> = [
        undefined,
        randomRow(rng, 1),
        randomRow(rng, 2 + trial),
        randomRow(rng, 17),
        randomRow(rng, 40 + 10 * trial),
        randomRow(rng, V),
        trial % 2 === 0 ? undefined : randomRow(rng, 300),
        randomRow(rng, Math.floor(rng.next() * V) + 1)
      ]
      const { logits, greedy, masked } = await runMasked(session, attention, tokens, masks)
      expect(masked, `trial ${trial}`).toEqual(expected(logits, tokens.length, masks))
      expect(greedy).toEqual(expected(logits, tokens.length, []))
      expect(masked[0]).toBe(greedy[0])
    }
  })

  it("rows at every list width and past it (bitmask rows), alone and mixed with plain rows", async () => {
    const session = await openSession(attention)
    const rng = new Rng(11)
    // with lists of at most 256 ids here: widths 16 .. 256, then bitmask rows
    const counts = [1, 15, 16, 17, 31, 32, 33, 64, 65, 128, 129, 256, 257, 400, 639, V]
    const tokens = counts.map((_, i) => 7 + 31 * i)
    const cases: ReadonlyArray<ReadonlyArray<Int32Array | undefined>> = [
      counts.map((c) => randomRow(rng, c)),
      counts.map((c, i) => (i % 3 === 0 ? undefined : randomRow(rng, c))),
      counts.map((c) => (c > 256 ? randomRow(rng, c) : undefined)),
      counts.map((c) => (c <= 16 ? randomRow(rng, c) : undefined))
    ]
    for (const [i, masks] of cases.entries()) {
      const { logits, greedy, masked, mask } = await runMasked(session, attention, tokens, masks, 256)
      expect(masked, `case ${i}`).toEqual(expected(logits, tokens.length, masks))
      expect(greedy).toEqual(expected(logits, tokens.length, []))
      const constrained = masks.filter((m) => m !== undefined).length
      expect(mask.sparseRows.length + mask.denseRows.length).toBe(constrained)
      if (i === 0) expect(mask.denseRows.length).toBe(4)
    }
    // one list width per step: the longest list's count rounded up to a power of two
    for (const [count, width] of [[1, 16], [16, 16], [17, 32], [100, 128], [256, 256]] as const) {
      const { mask } = await runMasked(session, attention, [1, 2], [randomRow(rng, count), randomRow(rng, 3)], 256)
      expect(mask.sparseK, `count ${count}`).toBe(width)
      expect(mask.denseRows.length).toBe(0)
    }
  })

  it("no constrained row (empty lists): masked_greedy_token equals greedy_token", async () => {
    const session = await openSession(attention)
    const out = await session.run({ ...feedsOf(attention, [1, 2, 3, 400]), ...maskFeeds(V) }, [TensorNames.greedyToken, TensorNames.maskedGreedyToken])
    expect([...(out[TensorNames.maskedGreedyToken]!.data as BigInt64Array)]).toEqual([...(out[TensorNames.greedyToken]!.data as BigInt64Array)])
  })
})
