// Llama 3 config.json parsing in both the released and the transformers 5 forms, and the expected tensor list.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, describe, expect, it } from "vitest"
import {
  expectedTensorShapes,
  type LlamaConfig,
  loadLlamaConfig,
  parseLlamaConfig
} from "../../../src/adapters/llama3/LlamaConfig.ts"
import { openCheckpoint } from "../../../src/checkpoint/Safetensors.ts"

const fixtures = fileURLToPath(new URL("../../fixtures", import.meta.url))
const fixtureA = path.join(fixtures, "tiny-llama3-a")
const fixtureB = path.join(fixtures, "tiny-llama3-b")

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-llamaconfig-"))
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }))
let tmpCount = 0
const tmpDir = (files: Record<string, string>): string => {
  const dir = path.join(tmpRoot, `d${tmpCount++}`)
  fs.mkdirSync(dir)
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text)
  return dir
}

const parse = (json: unknown): Promise<LlamaConfig> => Effect.runPromise(parseLlamaConfig(json, "/m/config.json"))
const parseError = (json: unknown) => Effect.runPromise(Effect.flip(parseLlamaConfig(json, "/m/config.json")))

/** Llama 3.1 8B's config.json as released (top-level rope_theta and rope_scaling, torch_dtype). */
const released31 = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  use_cache: true,
  vocab_size: 128256
}

/** The same model as transformers 5 writes it. */
const newForm31 = (() => {
  const { rope_scaling, rope_theta, torch_dtype, ...rest } = released31
  return { ...rest, dtype: torch_dtype, head_dim: 128, rope_parameters: { ...rope_scaling, rope_theta }, transformers_version: "5.17.0" }
})()

const expected31: LlamaConfig = {
  modelType: "llama",
  vocabSize: 128256,
  hiddenSize: 4096,
  intermediateSize: 14336,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  rmsNormEps: 1e-5,
  ropeTheta: 500000,
  ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
  maxPositionEmbeddings: 131072,
  tieWordEmbeddings: false,
  bosTokenId: 128000,
  eosTokenIds: [128001, 128008, 128009],
  dtype: "bfloat16"
}

describe("parseLlamaConfig", () => {
  it("the released Llama 3.1 form and the transformers 5 form normalize to the same values", async () => {
    expect(await parse(released31)).toEqual(expected31)
    expect(await parse(newForm31)).toEqual(expected31)
  })

  it("Llama 3 8B: no rope scaling, a single eos id", async () => {
    const { rope_scaling: _, ...noScaling } = released31
    const c = await parse({ ...noScaling, max_position_embeddings: 8192, eos_token_id: 128009 })
    expect(c.ropeScaling).toBeNull()
    expect(c.ropeTheta).toBe(500000)
    expect(c.maxPositionEmbeddings).toBe(8192)
    expect(c.eosTokenIds).toEqual([128009])
  })

  it("Llama 3.2 3B: tied embeddings, explicit head_dim, rope factor 32", async () => {
    const c = await parse({
      ...released31,
      hidden_size: 3072,
      intermediate_size: 8192,
      num_attention_heads: 24,
      num_hidden_layers: 28,
      head_dim: 128,
      tie_word_embeddings: true,
      rope_scaling: { ...released31.rope_scaling, factor: 32.0 }
    })
    expect(c.tieWordEmbeddings).toBe(true)
    expect(c.headDim).toBe(128)
    expect(c.ropeScaling?.factor).toBe(32)
  })

  it("headDim defaults to hidden / heads and kv heads default to heads", async () => {
    const { num_key_value_heads: _, ...rest } = released31
    const c = await parse({ ...rest, hidden_size: 2048, num_attention_heads: 16 })
    expect(c.headDim).toBe(128)
    expect(c.numKvHeads).toBe(16)
  })

  it("unknown model_type", async () => {
    const e = await parseError({ ...released31, model_type: "gpt2" })
    expect(e._tag).toBe("ModelConfigError")
    expect(e.message).toBe("unknown model_type 'gpt2' in /m/config.json: the Llama 3 adapter supports 'llama'")
  })

  it("a bad field names the field, the expectation and the found value", async () => {
    const e = await parseError({ ...released31, hidden_size: "big" })
    expect(e.message).toBe('invalid config.json at /m/config.json: field hidden_size: Expected number, found "big"')
    const e2 = await parseError({ ...released31, num_hidden_layers: 0 })
    expect(e2.message).toContain("field num_hidden_layers")
    expect(e2.message).toContain("found 0")
    const { vocab_size: _, ...noVocab } = released31
    expect((await parseError(noVocab)).message).toContain("field vocab_size")
    const e3 = await parseError({ ...released31, rope_scaling: { ...released31.rope_scaling, factor: "x" } })
    expect(e3.message).toContain("field rope_scaling.factor")
  })

  it("unsupported rope types and missing llama3 fields", async () => {
    const e = await parseError({ ...newForm31, rope_parameters: { rope_type: "yarn", rope_theta: 1e6, factor: 4 } })
    expect(e.message).toContain("rope_parameters.rope_type is 'yarn'")
    const { low_freq_factor: _, ...partial } = released31.rope_scaling
    const e2 = await parseError({ ...released31, rope_scaling: partial })
    expect(e2.message).toContain("rope_scaling.low_freq_factor is missing")
  })

  it("biases and other activations are unsupported", async () => {
    expect((await parseError({ ...released31, attention_bias: true })).message).toContain("attention_bias is true")
    expect((await parseError({ ...released31, mlp_bias: true })).message).toContain("mlp_bias is true")
    expect((await parseError({ ...released31, hidden_act: "gelu" })).message).toContain("hidden_act is 'gelu'")
  })

  it("inconsistent head counts and unknown dtypes", async () => {
    expect((await parseError({ ...released31, num_key_value_heads: 5 })).message).toContain("num_key_value_heads (5)")
    expect((await parseError({ ...released31, torch_dtype: "int8" })).message).toContain("dtype is 'int8'")
  })
})

describe("loadLlamaConfig", () => {
  it("loads both fixtures", async () => {
    const a = await Effect.runPromise(loadLlamaConfig(fixtureA))
    expect(a).toMatchObject({
      vocabSize: 512, hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, intermediateSize: 176,
      tieWordEmbeddings: false, ropeTheta: 500000, ropeScaling: null, maxPositionEmbeddings: 8192,
      bosTokenId: 1, eosTokenIds: [2], dtype: "float32", rmsNormEps: 1e-5
    })
    const b = await Effect.runPromise(loadLlamaConfig(fixtureB))
    expect(b).toMatchObject({
      vocabSize: 640, hiddenSize: 96, numLayers: 3, numHeads: 6, numKvHeads: 2, headDim: 16, intermediateSize: 256,
      tieWordEmbeddings: true, maxPositionEmbeddings: 131072,
      ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 }
    })
  })

  it("merges eos ids from generation_config.json", async () => {
    const dir = tmpDir({
      "config.json": JSON.stringify({ ...released31, eos_token_id: 128001 }),
      "generation_config.json": JSON.stringify({ bos_token_id: 128000, eos_token_id: [128001, 128009], do_sample: true })
    })
    expect((await Effect.runPromise(loadLlamaConfig(dir))).eosTokenIds).toEqual([128001, 128009])
    const dir2 = tmpDir({
      "config.json": JSON.stringify({ ...released31, eos_token_id: [128001, 128008] }),
      "generation_config.json": JSON.stringify({ eos_token_id: 128009 })
    })
    expect((await Effect.runPromise(loadLlamaConfig(dir2))).eosTokenIds).toEqual([128001, 128008, 128009])
  })

  it("missing folder and missing config.json are CheckpointErrors naming the path", async () => {
    const missing = path.join(tmpRoot, "nope")
    const e = await Effect.runPromise(Effect.flip(loadLlamaConfig(missing)))
    expect(e._tag).toBe("CheckpointError")
    expect(e.message).toBe(`model folder not found: ${missing}`)
    const empty = tmpDir({})
    const e2 = await Effect.runPromise(Effect.flip(loadLlamaConfig(empty)))
    expect(e2._tag).toBe("CheckpointError")
    expect(e2.path).toBe(path.join(empty, "config.json"))
  })

  it("invalid JSON is a ModelConfigError naming the file", async () => {
    const dir = tmpDir({ "config.json": "{ not json" })
    const e = await Effect.runPromise(Effect.flip(loadLlamaConfig(dir)))
    expect(e._tag).toBe("ModelConfigError")
    expect(e.message).toContain(path.join(dir, "config.json"))
    const dir2 = tmpDir({ "config.json": JSON.stringify(released31), "generation_config.json": "[" })
    const e2 = await Effect.runPromise(Effect.flip(loadLlamaConfig(dir2)))
    expect(e2.message).toContain("generation_config.json")
  })
})

describe("expectedTensorShapes", () => {
  it("matches every tensor of both fixtures exactly", async () => {
    for (const dir of [fixtureA, fixtureB]) {
      const config = await Effect.runPromise(loadLlamaConfig(dir))
      const src = await Effect.runPromise(openCheckpoint(dir))
      const shapes = expectedTensorShapes(config)
      expect([...shapes.keys()].sort()).toEqual([...src.names].sort())
      for (const [name, shape] of shapes) expect(src.info(name)?.shape).toEqual(shape)
    }
  })

  it("uses GQA shapes and adds lm_head only when untied", () => {
    const shapes = expectedTensorShapes(expected31)
    expect(shapes.size).toBe(32 * 9 + 3)
    expect(shapes.get("model.layers.31.self_attn.k_proj.weight")).toEqual([1024, 4096])
    expect(shapes.get("model.layers.0.self_attn.o_proj.weight")).toEqual([4096, 4096])
    expect(shapes.get("model.layers.0.mlp.down_proj.weight")).toEqual([4096, 14336])
    expect(shapes.get("lm_head.weight")).toEqual([128256, 4096])
    expect(expectedTensorShapes({ ...expected31, tieWordEmbeddings: true }).has("lm_head.weight")).toBe(false)
  })
})
