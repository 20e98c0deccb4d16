// The Llama 3 graph builder meets core's shard-graph contract (src/core/shard/TensorNames.ts): every input the
// workers feed (StepInputs plus the KV caches) is exactly what a built graph declares, and every output a worker
// fetches or binds is one the graph produces. Pure graph descriptions: no weights are written, no session runs.
import { Effect } from "effect"
import * as path from "node:path"
import { assert, describe, it } from "vitest"
import { type AttentionLayout, buildShardGraph } from "../../../src/adapters/llama3/GraphBuilder.ts"
import { loadLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { entryGroups, groupInputs, tokenOffsets } from "../../../src/core/shard/StepInputs.ts"
import type { ShardLoad, StepPlan } from "../../../src/core/shard/StepProtocol.ts"
import * as TensorNames from "../../../src/core/shard/TensorNames.ts"

const config = await Effect.runPromise(loadLlamaConfig(path.resolve(import.meta.dirname, "../../fixtures/tiny-llama3-b")))
const L = config.numLayers

const range = (layers: readonly [number, number]) => Array.from({ length: layers[1] - layers[0] }, (_, i) => layers[0] + i)
const sorted = (names: Iterable<string>) => [...names].sort()

/** A shard of `layers` as the engine loads it, and a 3-token prefill of one row after 2 cached tokens. */
const shardOf = (layers: readonly [number, number]) => {
  const load: ShardLoad = {
    graphPath: "unused.onnx",
    layers,
    isFirst: layers[0] === 0,
    isLast: layers[1] === L,
    dtype: "float32",
    hiddenSize: config.hiddenSize,
    vocabSize: config.vocabSize,
    numKvHeads: config.numKvHeads,
    headDim: config.headDim,
    maxSeqs: 1,
    maxLen: 64,
    blockSize: 16,
    numBlocks: 5,
    threads: 1,
    device: { kind: "cpu" }
  }
  const plan: StepPlan = {
    seqIds: Int32Array.of(0),
    rows: Int32Array.of(0),
    numTokens: Int32Array.of(3),
    pastLens: Int32Array.of(2),
    tokenIds: Int32Array.of(5, 6, 7),
    ...(load.isFirst ? {} : { hidden: new Float32Array(3 * config.hiddenSize) }),
    blockTables: Int32Array.of(1),
    blocksPerEntry: 1,
    sampleEntries: Int32Array.of(0),
    newSequences: [],
    returnLogits: Uint8Array.of(0)
  }
  return { load, plan }
}

const shards: ReadonlyArray<readonly [string, readonly [number, number]]> = [
  ["whole model", [0, L]],
  ["first", [0, 1]],
  ["middle", [1, 2]],
  ["last", [2, L]]
]
const layouts: ReadonlyArray<AttentionLayout> = ["rotary-outside", "fused"]

describe.each(layouts)("%s graphs", (attention) => {
  it.each(shards)("%s shard: the workers' inputs are exactly the graph's, their outputs all exist", (_, layers) => {
    const graph = buildShardGraph(config, { layers, dtype: "float32", maxContext: 64, attention })
    const { load, plan } = shardOf(layers)
    const graphInputs = new Set(graph.inputs.map((v) => v.name))
    const graphOutputs = new Set(graph.outputs.map((v) => v.name))
    const kvInputs = range(layers).flatMap((l) => [TensorNames.pastKey(l), TensorNames.pastValue(l)])

    // StepInputs computes position ids for every graph; the device worker feeds only the inputs a graph declares
    // (fused attention takes none), the CPU worker feeds them all (its graphs are rotary-outside).
    const fed = [...Object.keys(groupInputs(load, plan, entryGroups(plan)[0]!, tokenOffsets(plan)).inputs), ...kvInputs]
    const declared = attention === "fused" ? fed.filter((n) => n !== TensorNames.positionIds) : fed
    assert.deepStrictEqual(sorted(graphInputs), sorted(declared))
    assert.strictEqual(graphInputs.has(TensorNames.positionIds), attention === "rotary-outside")
    assert.strictEqual(graphInputs.has(TensorNames.inputIds), load.isFirst)
    assert.strictEqual(graphInputs.has(TensorNames.hiddenIn), !load.isFirst)

    // What a step takes out: the sampled or forwarded result, and per layer the present cache (device worker, bound
    // in place) or the new keys and values (CPU worker, rotary-outside graphs only).
    const results = load.isLast ? [TensorNames.logits, TensorNames.greedyToken] : [TensorNames.hiddenOut]
    const present = range(layers).flatMap((l) => [TensorNames.presentKey(l), TensorNames.presentValue(l)])
    const fresh = range(layers).flatMap((l) => [TensorNames.newKey(l), TensorNames.newValue(l)])
    assert.deepStrictEqual(sorted(graphOutputs), sorted([...results, ...present, ...(attention === "fused" ? [] : fresh)]))
  })
})
