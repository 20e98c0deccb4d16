// The last shard's `masked_greedy_token` (TensorNames.ts): the ArgMax of the logits where `token_bitmask` allows the
// id, computed inside the graph so constrained greedy steps fetch ids instead of logits. Checked against the same
// masked ArgMax in JS over the graph's own logits, on a tiny checkpoint (rotary-outside graphs: the CPU runtime's).
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
import * as TensorNames from "../../../src/core/shard/TensorNames.ts"

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

describe.each<AttentionLayout>(["rotary-outside"])("%s graph", (attention) => {
  it("masked_greedy_token is the ArgMax over the ids the bitmask allows; greedy_token ignores the mask", async () => {
    const session = await openSession(attention)
    const rng = new Rng(7)
    const tokens = [3, 17, 200, 511, 42, 9]
    for (let trial = 0; trial < 8; trial++) {
      const mask = new Int32Array(tokens.length * words)
      for (let r = 0; r < tokens.length; r++) {
        const row = mask.subarray(r * words, (r + 1) * words)
        // row 0: everything; row 1: one id; row 2: a sparse random set; the rest: dense random sets
        if (r === 0) row.fill(-1)
        else if (r === 1) { const id = Math.floor(rng.next() * V); row[id >> 5] = 1 << (id & 31) }
        else for (let w = 0; w < words; w++) row[w] = r === 2 ? (rng.next() < 0.1 ? 1 << Math.floor(rng.next() * 32) : 0) : (rng.next() * 2 ** 32) | 0
        // always at least one allowed id
        if (row.every((x) => x === 0)) row[0] = 1
      }
      const feeds = { ...feedsOf(attention, tokens), [TensorNames.tokenBitmask]: new ort.Tensor("int32", mask, [tokens.length, words]) }
      const out = await session.run(feeds, [TensorNames.logits, TensorNames.greedyToken, TensorNames.maskedGreedyToken])
      const logits = out[TensorNames.logits]!.data as Float32Array
      const masked = out[TensorNames.maskedGreedyToken]!.data as BigInt64Array
      const greedy = out[TensorNames.greedyToken]!.data as BigInt64Array
      const all = new Int32Array(words).fill(-1)
      for (let r = 0; r < tokens.length; r++) {
        expect(Number(masked[r]), `trial ${trial} row ${r}`).toBe(maskedArgmax(logits, r, mask))
        expect(Number(greedy[r])).toBe(maskedArgmax(logits.subarray(r * V, (r + 1) * V), 0, all))
      }
      expect(Number(masked[0])).toBe(Number(greedy[0]))
    }
  })

  it("one all-ones bitmask row serves every row: masked_greedy_token equals greedy_token", async () => {
    const session = await openSession(attention)
    const allowAll = new ort.Tensor("int32", new Int32Array(words).fill(-1), [1, words])
    const out = await session.run({ ...feedsOf(attention, [1, 2, 3, 400]), [TensorNames.tokenBitmask]: allowAll }, [TensorNames.greedyToken, TensorNames.maskedGreedyToken])
    expect([...(out[TensorNames.maskedGreedyToken]!.data as BigInt64Array)]).toEqual([...(out[TensorNames.greedyToken]!.data as BigInt64Array)])
  })
})
