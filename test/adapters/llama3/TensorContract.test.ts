// The Llama 3 graph builder meets core's shard-graph contract (src/core/shard/TensorNames.ts): every input the
// workers feed (StepInputs or PagedInputs plus the KV caches) is exactly what a built graph declares, and every output
// a worker fetches or binds is one the graph produces. Pure graph descriptions: no weights are written, no session runs.
import { Effect } from "effect"
import * as path from "node:path"
import { assert, describe, it } from "vitest"
import { type AttentionLayout, buildShardGraph, type ModelDType } from "../../../src/adapters/llama3/GraphBuilder.ts"
import { loadLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { GraphMaskBuilder } from "../../../src/core/shard/GraphMask.ts"
import { pagedInputs } from "../../../src/core/shard/PagedInputs.ts"
import { entryGroups, groupInputs, tokenOffsets } from "../../../src/core/shard/StepInputs.ts"
import type { ShardLoad, StepPlan } from "../../../src/core/shard/StepProtocol.ts"
import * as TensorNames from "../../../src/core/shard/TensorNames.ts"

const config = await Effect.runPromise(loadLlamaConfig(path.resolve(import.meta.dirname, "../../fixtures/tiny-llama3-b")))
const L = config.numLayers

const range = (layers: readonly [number, number]) => Array.from({ length: layers[1] - layers[0] }, (_, i) => layers[0] + i)
const sorted = (names: Iterable<string>) => [...names].sort()

/**
 * A shard of `layers` as the engine loads it, and a packed step: a 3-token prompt chunk after 2 cached tokens
 * (sampling), and a decode of 1 token after 5 cached.
 */
const shardOf = (layers: readonly [number, number], dtype: ModelDType) => {
  const load: ShardLoad = {
    graphPath: "unused.onnx",
    layers,
    isFirst: layers[0] === 0,
    isLast: layers[1] === L,
    dtype,
    hiddenSize: config.hiddenSize,
    vocabSize: config.vocabSize,
    numKvHeads: config.numKvHeads,
    headDim: config.headDim,
    maxSeqs: 2,
    maxLen: 64,
    blockSize: 16,
    numBlocks: 9,
    threads: 1,
    device: { kind: "cpu" }
  }
  const plan: StepPlan = {
    seqIds: Int32Array.of(10, 11),
    rows: Int32Array.of(0, 1),
    numTokens: Int32Array.of(3, 1),
    pastLens: Int32Array.of(2, 5),
    tokenIds: Int32Array.of(5, 6, 7, 8),
    ...(load.isFirst ? {} : { hidden: new Float32Array(4 * config.hiddenSize) }),
    blockTables: Int32Array.of(1, 2),
    blocksPerEntry: 1,
    sampleEntries: Int32Array.of(0, 1),
    newSequences: [],
    returnLogits: Uint8Array.of(0, 0)
  }
  return { load, plan }
}

const shards: ReadonlyArray<readonly [string, readonly [number, number]]> = [
  ["whole model", [0, L]],
  ["first", [0, 1]],
  ["middle", [1, 2]],
  ["last", [2, L]]
]
const layouts: ReadonlyArray<AttentionLayout> = ["rotary-outside", "fused", "paged"]

describe.each(layouts)("%s graphs", (attention) => {
  const dtype: ModelDType = attention === "paged" ? "float16" : "float32"
  it.each(shards)("%s shard: the workers' inputs are exactly the graph's, their outputs all exist", (_, layers) => {
    const graph = buildShardGraph(config, { layers, dtype, maxContext: 64, attention })
    const { load, plan } = shardOf(layers, dtype)
    const graphInputs = new Set(graph.inputs.map((v) => v.name))
    const graphOutputs = new Set(graph.outputs.map((v) => v.name))
    const paged = attention === "paged"
    const kvInputs = range(layers).flatMap((l) =>
      paged ? [TensorNames.keyCache(l), TensorNames.valueCache(l)] : [TensorNames.pastKey(l), TensorNames.pastValue(l)]
    )

    // GQA layouts: StepInputs computes position ids for every group; the device worker feeds only the inputs a graph
    // declares (fused attention takes none), the CPU worker feeds them all (its graphs are rotary-outside).
    // Paged: PagedInputs is the whole plan in one run.
    const stepNames = paged
      ? Object.keys(pagedInputs(load, plan).inputs)
      : [...new Set(entryGroups(plan).flatMap((g) => Object.keys(groupInputs(load, plan, g, tokenOffsets(plan)).inputs)))]
    const fed = [...stepNames, ...kvInputs]
    // Position ids and the grammar's masks are rotary-outside inputs alone (the device worker feeds what a graph declares).
    const maskInputs: ReadonlyArray<string> = [TensorNames.tokenBitmask, TensorNames.tokenBitmaskRows, TensorNames.allowedRows, TensorNames.allowedIds]
    const declared = attention === "fused" ? fed.filter((n) => n !== TensorNames.positionIds && !maskInputs.includes(n)) : fed
    assert.deepStrictEqual(sorted(graphInputs), sorted(declared))
    assert.strictEqual(graphInputs.has(TensorNames.positionIds), attention === "rotary-outside")
    for (const name of maskInputs) assert.strictEqual(graphInputs.has(name), attention === "rotary-outside" && load.isLast)
    assert.strictEqual(graphInputs.has(TensorNames.inputIds), load.isFirst)
    assert.strictEqual(graphInputs.has(TensorNames.hiddenIn), !load.isFirst)

    // What a step takes out: the sampled or forwarded result, and per layer the present cache or block pool (device
    // worker, bound in place) or the new keys and values (CPU worker, rotary-outside graphs only).
    // (and, rotary-outside, the grammar-masked ArgMax of constrained greedy steps)
    const masked = attention === "rotary-outside" ? [TensorNames.maskedGreedyToken] : []
    const results = load.isLast ? [TensorNames.logits, TensorNames.greedyToken, ...masked] : [TensorNames.hiddenOut]
    const present = range(layers).flatMap((l) =>
      paged ? [TensorNames.keyCacheOut(l), TensorNames.valueCacheOut(l)] : [TensorNames.presentKey(l), TensorNames.presentValue(l)]
    )
    const fresh = range(layers).flatMap((l) => [TensorNames.newKey(l), TensorNames.newValue(l)])
    assert.deepStrictEqual(sorted(graphOutputs), sorted([...results, ...present, ...(attention === "rotary-outside" ? fresh : [])]))
  })
})

describe("paged graphs", () => {
  it("declare packed shapes and one PagedAttention per layer with the metadata input", () => {
    const graph = buildShardGraph(config, { layers: [0, L], dtype: "float16", maxContext: 64, attention: "paged" })
    const dims = (name: string) => graph.inputs.find((v) => v.name === name)?.dims
    assert.deepStrictEqual(dims(TensorNames.inputIds), ["tokens"])
    assert.deepStrictEqual(dims(TensorNames.logitsIndex), ["n_logits"])
    assert.deepStrictEqual(dims(TensorNames.keyCache(0)), ["num_blocks", "block_size", config.numKvHeads, config.headDim])
    const attention = graph.nodes.filter((n) => n.op === "PagedAttention")
    assert.strictEqual(attention.length, L)
    for (const n of attention) {
      assert.strictEqual(n.inputs.length, 17)
      assert.strictEqual(n.inputs[16], TensorNames.attentionMetadata)
      assert.strictEqual(n.inputs[8], "rope_cos")
    }
  })

  it("refuse float32", () => {
    assert.throws(() => buildShardGraph(config, { layers: [0, L], dtype: "float32", maxContext: 64, attention: "paged" }), /float16 or bfloat16/)
  })

  it("pagedInputs: cumulative lengths, bounds and the logits positions of sampling entries", () => {
    const { load, plan } = shardOf([0, L], "float16")
    const { inputs, logitsEntries, logitsRows } = pagedInputs(load, { ...plan, returnLogits: Uint8Array.of(2, 0) })
    assert.deepStrictEqual([...inputs[TensorNames.cumulativeSequenceLength]!.data], [0, 3, 4])
    assert.deepStrictEqual([...inputs[TensorNames.attentionMetadata]!.data], [3, 6])
    assert.deepStrictEqual([...inputs[TensorNames.logitsIndex]!.data], [0n, 1n, 2n, 3n])
    assert.deepStrictEqual([...logitsEntries], [0, 1])
    assert.deepStrictEqual([...logitsRows], [3, 1])
    assert.deepStrictEqual(inputs[TensorNames.blockTable]!.dims, [2, 1])
  })
})

describe("grammar mask inputs", () => {
  it("are empty (0 rows) unless a step passes its masks, and are declared with the same width", () => {
    const { load, plan } = shardOf([0, L], "float32")
    const graph = buildShardGraph(config, { layers: [0, L], dtype: "float32", maxContext: 64 })
    const words = Math.ceil(config.vocabSize / 32)
    const dims = (name: string) => graph.inputs.find((v) => v.name === name)?.dims
    assert.deepStrictEqual(dims(TensorNames.tokenBitmask), ["dense_rows", words])
    assert.deepStrictEqual(dims(TensorNames.tokenBitmaskRows), ["dense_rows"])
    assert.deepStrictEqual(dims(TensorNames.allowedRows), ["sparse_rows"])
    assert.deepStrictEqual(dims(TensorNames.allowedIds), ["sparse_rows", "sparse_k"])
    const [decode] = entryGroups(plan).filter((g) => g.seqLen === 1)
    const plain = groupInputs(load, plan, decode!, tokenOffsets(plan)).inputs
    assert.deepStrictEqual(plain[TensorNames.tokenBitmask]!.dims, [0, words])
    assert.deepStrictEqual(plain[TensorNames.tokenBitmaskRows]!.dims, [0])
    assert.deepStrictEqual(plain[TensorNames.allowedRows]!.dims, [0])
    assert.deepStrictEqual(plain[TensorNames.allowedIds]!.dims, [0, 1])
    // row 0: ids 3 and 40 (a list of width 16, padded with 40); row 1: every id (a bitmask row, with lists of at most 8)
    const builder = new GraphMaskBuilder(2, config.vocabSize, 8)
    const few = new Int32Array(words)
    few[0] = 1 << 3
    few[1] = 1 << 8
    builder.add(0, few)
    builder.add(1, new Int32Array(words).fill(-1))
    const masks = builder.build()
    const constrained = groupInputs(load, plan, decode!, tokenOffsets(plan), masks).inputs
    assert.deepStrictEqual(constrained[TensorNames.allowedRows]!.dims, [1])
    assert.deepStrictEqual([...constrained[TensorNames.allowedRows]!.data], [0n])
    assert.deepStrictEqual(constrained[TensorNames.allowedIds]!.dims, [1, 16])
    assert.deepStrictEqual([...constrained[TensorNames.allowedIds]!.data], [3n, 40n, ...new Array<bigint>(14).fill(40n)])
    assert.deepStrictEqual(constrained[TensorNames.tokenBitmask]!.dims, [1, words])
    assert.deepStrictEqual([...constrained[TensorNames.tokenBitmaskRows]!.data], [1n])
    assert.isTrue([...constrained[TensorNames.tokenBitmask]!.data].every((w) => w === -1))
  })
})
