// Parity of the generated shard graphs with transformers' reference outputs for the tiny Llama 3 fixtures.
import "../../../src/onnx/OrtFloat16Fix.ts" // before any ort.Tensor exists (float16 inputs)
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { planShards } from "../../../src/adapters/llama3/Converter.ts"
import { buildShardGraph, type ModelDType, writeShard } from "../../../src/adapters/llama3/GraphBuilder.ts"
import { type LlamaConfig, loadLlamaConfig } from "../../../src/adapters/llama3/LlamaConfig.ts"
import { openCheckpoint } from "../../../src/checkpoint/Safetensors.ts"
import { maskFeeds } from "../../support/maskFeeds.ts"

const fixture = (name: string) => path.resolve(import.meta.dirname, "../../fixtures", name)

interface RefPrompt {
  readonly input_ids: ReadonlyArray<number>
  readonly prefill_logits_last: ReadonlyArray<number>
  readonly prefill_logits_all: ReadonlyArray<ReadonlyArray<number>> | null
  readonly greedy_continuation: ReadonlyArray<number>
}

const MAX_CONTEXT = 1024
const KV_LEN = 512 // slot length of the KV buffers (prompt 300 + 24 fits)
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-graph-"))
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }))

/** A chain of shard sessions over KV buffers of `batch` rows, bound in share-buffer mode. */
class Pipeline {
  private readonly kv = new Map<number, { k: ort.Tensor; v: ort.Tensor }>()
  readonly config: LlamaConfig
  readonly stages: ReadonlyArray<{ session: ort.InferenceSession; layers: readonly [number, number] }>
  constructor(
    config: LlamaConfig,
    dtype: Exclude<ModelDType, "bfloat16">,
    stages: ReadonlyArray<{ session: ort.InferenceSession; layers: readonly [number, number] }>,
    batch: number
  ) {
    this.config = config
    this.stages = stages
    const { numKvHeads: h, headDim: d } = config
    const n = batch * h * KV_LEN * d
    for (let i = 0; i < config.numLayers; i++) {
      const mk = () => new ort.Tensor(dtype, dtype === "float32" ? new Float32Array(n) : new Uint16Array(n), [batch, h, KV_LEN, d])
      this.kv.set(i, { k: mk(), v: mk() })
    }
  }

  /** One step: `rows[b]` new tokens of row b (right-padded with 0), `past[b]` tokens already cached. */
  async step(rows: ReadonlyArray<ReadonlyArray<number>>, past: ReadonlyArray<number>, logitsIndex: ReadonlyArray<ReadonlyArray<number>>): Promise<Float32Array> {
    const seq = Math.max(...rows.map((r) => r.length))
    const ids = new BigInt64Array(rows.length * seq)
    rows.forEach((r, b) => r.forEach((t, s) => (ids[b * seq + s] = BigInt(t))))
    const common: Record<string, ort.Tensor> = {
      position_ids: new ort.Tensor("int64", BigInt64Array.from({ length: rows.length * seq }, (_, j) => BigInt(past[Math.floor(j / seq)]! + (j % seq))), [rows.length, seq]),
      seqlens_k: new ort.Tensor("int32", Int32Array.from(rows.map((r, b) => past[b] + r.length - 1)), [rows.length]),
      total_sequence_length: new ort.Tensor("int32", Int32Array.of(Math.max(...rows.map((r, b) => past[b] + r.length))), [])
    }
    let hidden: ort.Tensor = new ort.Tensor("int64", ids, [rows.length, seq])
    for (const { session, layers } of this.stages) {
      const last = layers[1] === this.config.numLayers
      const feeds: Record<string, ort.Tensor> = { ...common, [layers[0] === 0 ? "input_ids" : "hidden_in"]: hidden }
      const fetches: Record<string, ort.Tensor | null> = { [last ? "logits" : "hidden_out"]: null }
      if (last) {
        const n = logitsIndex[0].length
        feeds.logits_index = new ort.Tensor("int64", BigInt64Array.from(logitsIndex.flat().map(BigInt)), [rows.length, n])
        // no constrained row (only the masked ArgMax, not fetched here, reads the mask inputs)
        Object.assign(feeds, maskFeeds(this.config.vocabSize))
      }
      for (let i = layers[0]; i < layers[1]; i++) {
        const { k, v } = this.kv.get(i)!
        feeds[`past_key.${i}`] = k
        feeds[`past_value.${i}`] = v
        fetches[`present_key.${i}`] = k
        fetches[`present_value.${i}`] = v
      }
      const out = await session.run(feeds, fetches as ort.InferenceSession.FetchesType)
      hidden = out[last ? "logits" : "hidden_out"]
    }
    return hidden.data as Float32Array
  }
}

const built = new Map<string, Promise<Array<{ file: string; layers: readonly [number, number] }>>>()

/** Converts a fixture into `shards` shard graphs (once per combination) and opens a pipeline over them. */
const openPipeline = async (name: string, dtype: Exclude<ModelDType, "bfloat16">, shards: number, batch = 1) => {
  const dir = fixture(name)
  const config = await Effect.runPromise(loadLlamaConfig(dir))
  const key = `${name}-${dtype}-${shards}`
  if (!built.has(key)) {
    built.set(key, (async () => {
      const source = await Effect.runPromise(openCheckpoint(dir))
      const out = path.join(tmpRoot, key)
      fs.mkdirSync(out)
      return Promise.all(planShards(config.numLayers, shards).map(async (layers, k) => {
        const file = path.join(out, `shard-${k}.onnx`)
        await Effect.runPromise(writeShard(source, config, buildShardGraph(config, { layers, dtype, maxContext: MAX_CONTEXT }), file))
        return { file, layers }
      }))
    })())
  }
  const files = await built.get(key)!
  const stages = await Promise.all(files.map(async ({ file, layers }) => ({ session: await ort.InferenceSession.create(file, { intraOpNumThreads: 1 }), layers })))
  const prompts = (JSON.parse(fs.readFileSync(path.join(dir, "reference.json"), "utf8")) as { prompts: Array<RefPrompt> }).prompts
  return { config, prompts, pipeline: new Pipeline(config, dtype, stages, batch) }
}

/** max |a - b| / max |b|. */
const relDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length)
  let d = 0
  let m = 0
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]))
    m = Math.max(m, Math.abs(b[i]))
  }
  return d / m
}
const argmax = (a: ArrayLike<number>) => {
  let best = 0
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i
  return best
}
const range = (n: number) => Array.from({ length: n }, (_, i) => i)

/** Greedy decoding through the KV cache, one token per step, after a prefill that gave `first`. */
const greedy = async (pipeline: Pipeline, V: number, promptLength: number, first: Float32Array, steps: number) => {
  const tokens = [argmax(first)]
  const logits = [first]
  while (tokens.length < steps) {
    const l = await pipeline.step([[tokens[tokens.length - 1]]], [promptLength + tokens.length - 1], [[0]])
    logits.push(l.slice(0, V))
    tokens.push(argmax(l))
  }
  return { tokens, logits }
}

describe.each(["tiny-llama3-a", "tiny-llama3-b"])("%s float32", (name) => {
  it.each([1, 2])("%i shard(s): prefill logits and 24 greedy tokens match transformers", async (shards) => {
    const { config, prompts, pipeline } = await openPipeline(name, "float32", shards)
    const V = config.vocabSize
    for (const p of prompts) {
      const n = p.input_ids.length
      const all = p.prefill_logits_all !== null
      const logits = await pipeline.step([p.input_ids], [0], [all ? range(n) : [n - 1]])
      const last = logits.slice(logits.length - V)
      expect(relDiff(last, p.prefill_logits_last)).toBeLessThanOrEqual(1e-4)
      if (p.prefill_logits_all !== null) {
        expect(relDiff(logits, p.prefill_logits_all.flat())).toBeLessThanOrEqual(1e-4)
      }
      const { tokens } = await greedy(pipeline, V, n, last, 24)
      expect(tokens).toEqual(p.greedy_continuation)
    }
  })
})

describe("batching and chunking (tiny-llama3-b, 2 shards)", () => {
  it("a right-padded batched prefill and batched decode with per-row lengths match the references", async () => {
    const { config, prompts, pipeline } = await openPipeline("tiny-llama3-b", "float32", 2, 2)
    const V = config.vocabSize
    const [a, b] = [prompts[0], prompts[1]] // 5 and 11 tokens
    const lens = [a.input_ids.length, b.input_ids.length]
    const first = await pipeline.step([a.input_ids, b.input_ids], [0, 0], [[lens[0] - 1], [lens[1] - 1]])
    expect(relDiff(first.slice(0, V), a.prefill_logits_last)).toBeLessThanOrEqual(1e-4)
    expect(relDiff(first.slice(V), b.prefill_logits_last)).toBeLessThanOrEqual(1e-4)
    const tokens = [[argmax(first.slice(0, V))], [argmax(first.slice(V))]]
    for (let s = 1; s < 24; s++) {
      const l = await pipeline.step(tokens.map((t) => [t[t.length - 1]]), lens.map((n) => n + s - 1), [[0], [0]])
      tokens[0].push(argmax(l.slice(0, V)))
      tokens[1].push(argmax(l.slice(V)))
    }
    expect(tokens[0]).toEqual(a.greedy_continuation)
    expect(tokens[1]).toEqual(b.greedy_continuation)
  })

  it("a chunked prefill (128 + 128 + 44 tokens) gives the same last logits and continuation", async () => {
    const { config, prompts, pipeline } = await openPipeline("tiny-llama3-b", "float32", 2)
    const p = prompts[3]
    const ids = p.input_ids
    expect(ids.length).toBe(300)
    let logits: Float32Array = new Float32Array(0)
    for (let start = 0; start < ids.length; start += 128) {
      const chunk = ids.slice(start, start + 128)
      logits = await pipeline.step([chunk], [start], [[chunk.length - 1]])
    }
    expect(relDiff(logits, p.prefill_logits_last)).toBeLessThanOrEqual(1e-4)
    const { tokens } = await greedy(pipeline, config.vocabSize, ids.length, logits, 24)
    expect(tokens).toEqual(p.greedy_continuation)
  })
})

describe.each(["tiny-llama3-a", "tiny-llama3-b"])("%s float16", (name) => {
  it.each([1, 2])("%i shard(s): prefill logits within 5e-3, greedy follows the reference for >= 16 tokens or up to a near-tie", async (shards) => {
    const { config, prompts, pipeline } = await openPipeline(name, "float16", shards)
    const V = config.vocabSize
    const matched: Array<number> = []
    for (const p of prompts) {
      const n = p.input_ids.length
      const last = await pipeline.step([p.input_ids], [0], [[n - 1]])
      expect(relDiff(last, p.prefill_logits_last)).toBeLessThanOrEqual(5e-3)
      const { tokens, logits } = await greedy(pipeline, V, n, last, 24)
      let same = 0
      while (same < 24 && tokens[same] === p.greedy_continuation[same]) same++
      matched.push(same)
      if (same < 16) {
        // Diverging early is only acceptable where the reference token and ours were tied within f16 precision.
        const l = logits[same]
        const scale = Math.max(...Array.from(l, Math.abs))
        expect(l[tokens[same]] - l[p.greedy_continuation[same]]).toBeLessThan(0.01 * scale)
      }
    }
    console.log(`${name} float16, ${shards} shard(s): greedy tokens matching the float32 reference per prompt: ${matched.join(", ")} (of 24)`)
  })
})
