/**
 * Builds the ONNX graph of one pipeline shard of a Llama 3 model (a contiguous range of decoder layers) and
 * streams its weights from a checkpoint into one external data file.
 *
 * Contract with the shard workers: core's `src/core/shard/TensorNames.ts` names every input and output, and this
 * builder uses those names (never its own literals), so the graphs it writes are the ones the workers feed:
 * - inputs: `input_ids` int64 [batch, seq] (first shard) or `hidden_in` T [batch, seq, hidden] (others);
 *   `position_ids` int64 [batch, seq] (per row: past, past + 1, ...);
 *   `seqlens_k` int32 [batch] (per row: past + new - 1); `total_sequence_length` int32 [] (max over rows of past + new);
 *   `past_key.{i}` / `past_value.{i}` T [batch, kv_heads, max_len, head_dim] for each layer i of the shard;
 *   `logits_index` int64 [batch, n_logits] (last shard: positions within `seq` whose logits are returned).
 * - outputs: `logits` float32 [batch, n_logits, vocab] and `greedy_token` int64 [batch, n_logits] (last shard), or `hidden_out` T [batch, seq, hidden];
 *   `present_key.{i}` / `present_value.{i}` T [batch, kv_heads, present_len, head_dim] (the whole cache after the step;
 *   bound to the past buffers, GroupQueryAttention writes in place where a runtime can share them), and
 *   `new_key.{i}` / `new_value.{i}` T [batch, seq, kv_heads * head_dim] (the rotated keys and values of this step's
 *   tokens alone: what a runtime that keeps its own cache appends).
 * T is float32, float16 or bfloat16 (the shard's dtype).
 */
import { Effect, Semaphore } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { encodeFloat32 } from "../../checkpoint/Safetensors.ts"
import type { TensorLocation, TensorSource } from "../../checkpoint/TensorSource.ts"
import { CheckpointError, ConversionError } from "../../core/Errors.ts"
import * as TensorNames from "../../core/shard/TensorNames.ts"
import {
  type DataTypeName,
  encodeModel,
  type ExternalInitializer,
  type GraphSpec,
  type InlineInitializer,
  type NodeSpec,
  type ValueSpec
} from "../../onnx/OnnxWriter.ts"
import { type CheckpointQuant, expectedTensorShapes, type LlamaConfig } from "./LlamaConfig.ts"
import { type QuantizedLinear, quantizedSuffixes, quantizedTensorNames, type RawTensor, RepackError, repackedBytes } from "./CheckpointQuant.ts"
import type { ConvertTask } from "./ConvertWorker.ts"
import { type Int4Layout, int4Bytes, int4Sizes } from "./MatMulNBitsPacking.ts"
import type { Int4Settings } from "./Quantization.ts"
import { ropeCache } from "./Rope.ts"
import { transposeInto } from "./WeightBytes.ts"

/** bfloat16 runs on the device runtime only: ORT's CPU EP lacks bfloat16 kernels (MatMul among them). */
export type ModelDType = "float32" | "float16" | "bfloat16"

export interface ShardOptions {
  /** Decoder layers `[l0, l1)`; `l0 = 0` adds the embedding, `l1 = numLayers` the final norm and LM head. */
  readonly layers: readonly [number, number]
  readonly dtype: ModelDType
  /** Rows of the RoPE caches: the longest sequence (past + new) the shard can run. */
  readonly maxContext: number
  /**
   * `rotary-outside` (default): rotary embeddings as their own nodes before attention, and the new tokens' keys and
   * values as outputs (`new_key.{i}`), for runtimes that keep the cache themselves (onnxruntime-node, which copies
   * every output). `fused`: packed QKV straight into GroupQueryAttention with rotary inside it, no `position_ids`
   * input and no `new_*` outputs — fewer nodes and kernels, for runtimes that bind past and present to one buffer
   * (the device runtime). `paged`: packed tokens (no batch axis) into PagedAttention over a block pool (float16 and
   * bfloat16 only; the device runtime on CUDA); see `TensorNames.ts` for its inputs and outputs.
   */
  readonly attention?: AttentionLayout
  /**
   * 4-bit weights: every decoder linear (and the LM head unless `lmHead` is false) becomes a `MatMulNBits` over
   * packed codes, scales in the shard dtype and optional zero points (`MatMulNBitsPacking.ts`).
   */
  readonly quantize?: Int4Settings
  /**
   * Adds one float32 output `[K]` per linear (`sumSquaresName(weight)`): the sum of x² over every token of the run, per
   * input channel K of that linear (the attention norm's output for `qkv`, attention's for `o_proj`, the post-attention
   * norm's for `gate_up`, SwiGLU's for `down`, the final norm's over all tokens for `lm_head`). The activation
   * statistics of `--quant-search activation-clip` come from the float model run with these outputs
   * (`ActivationStats.ts`); the weights and their layout are those of the graph without them.
   */
  readonly calibration?: boolean
}

export type AttentionLayout = "rotary-outside" | "fused" | "paged"

/** How an initializer's values come out of the checkpoint. */
export type WeightRecipe =
  /** The tensor as stored (embedding table, norm weights). */
  | { readonly kind: "copy"; readonly tensor: string }
  /** HF linear weights `[out_k, in]`, concatenated along `out` and transposed to `[in, sum(out_k)]` for MatMul. */
  | { readonly kind: "linear"; readonly tensors: ReadonlyArray<string> }
  /** Computed RoPE cache. */
  | { readonly kind: "rope"; readonly part: "cos" | "sin" }
  /**
   * HF linear weights `[out_k, in]` concatenated along `out` (no transpose: that is MatMulNBits' `[N, K]` order) and
   * quantized to 4 bits; the weight's dims stay the logical `[in, out]` of the MatMul it replaces.
   */
  | { readonly kind: "int4"; readonly tensors: ReadonlyArray<string>; readonly blockSize: 32 | 128; readonly symmetric: boolean }
  /**
   * Linears of an AWQ / GPTQ checkpoint (`<module>.qweight`, `.qzeros`, `.scales`, GPTQ's `.g_idx`), stacked along N
   * and repacked losslessly into MatMulNBits inputs (`CheckpointQuant.ts`), block size = the group size, zero points
   * always present; the weight's dims are the logical `[in, out]`.
   */
  | { readonly kind: "prequantized"; readonly quant: CheckpointQuant; readonly modules: ReadonlyArray<string> }

export interface WeightSpec {
  readonly name: string
  readonly dims: ReadonlyArray<number>
  readonly recipe: WeightRecipe
}

/** A shard graph whose weights are still recipes; `writeShard` turns them into external initializers. */
export interface ShardGraph extends Omit<GraphSpec, "external"> {
  readonly options: ShardOptions
  readonly weights: ReadonlyArray<WeightSpec>
}

/** Alignment of every tensor in the external data file (lets ORT map it and use aligned loads). */
export const DATA_ALIGNMENT = 64

const bytesPerElement = (dtype: ModelDType): number => (dtype === "float32" ? 4 : 2)
const count = (dims: ReadonlyArray<number>): number => dims.reduce((a, b) => a * b, 1)

/** One initializer in the data file; an int4 weight is two or three (codes, scales, zero points). */
export interface WeightPart {
  readonly name: string
  readonly type: DataTypeName
  readonly dims: ReadonlyArray<number>
  readonly bytes: number
}

/** The calibration output of a linear (`ShardOptions.calibration`): Σ x² over tokens of its input, per input channel. */
export const sumSquaresName = (weight: string): string => `sum_squares.${weight}`

/** Names of an int4 weight's scale and zero-point initializers (its codes keep the weight's name). */
export const scalesName = (weight: string): string => `${weight}.scales`
export const zeroPointsName = (weight: string): string => `${weight}.zero_points`

type NBitsRecipe = Extract<WeightRecipe, { readonly kind: "int4" | "prequantized" }>

const isNBits = (r: WeightRecipe): r is NBitsRecipe => r.kind === "int4" || r.kind === "prequantized"

/** MatMulNBits' view of a 4-bit weight whose logical MatMul dims are `[in, out]`. */
export const int4Layout = (w: WeightSpec & { readonly recipe: NBitsRecipe }): Int4Layout => ({
  n: w.dims[1],
  k: w.dims[0],
  blockSize: w.recipe.kind === "int4" ? w.recipe.blockSize : w.recipe.quant.groupSize,
  symmetric: w.recipe.kind === "int4" ? w.recipe.symmetric : false
})

/** The initializers a weight becomes, in data-file order. */
export const weightParts = (w: WeightSpec, dtype: ModelDType): ReadonlyArray<WeightPart> => {
  const r = w.recipe
  if (!isNBits(r)) return [{ name: w.name, type: dtype, dims: w.dims, bytes: count(w.dims) * bytesPerElement(dtype) }]
  const l = int4Layout({ ...w, recipe: r })
  const nb = Math.ceil(l.k / l.blockSize)
  const sizes = int4Sizes(l, bytesPerElement(dtype))
  const parts: Array<WeightPart> = [
    { name: w.name, type: "uint8", dims: [l.n, nb, l.blockSize / 2], bytes: sizes.b },
    { name: scalesName(w.name), type: dtype, dims: [l.n * nb], bytes: sizes.scales }
  ]
  if (!l.symmetric) parts.push({ name: zeroPointsName(w.name), type: "uint8", dims: [sizes.zeroPoints], bytes: sizes.zeroPoints })
  return parts
}

/** Bytes a weight occupies in the data file, padding excluded. */
export const weightBytes = (w: WeightSpec, dtype: ModelDType): number => weightParts(w, dtype).reduce((n, p) => n + p.bytes, 0)

/** Places `parts` one after another from `offset`, each at a `DATA_ALIGNMENT` boundary; returns their offsets and the end. */
const placeParts = (parts: ReadonlyArray<WeightPart>, offset: number): { readonly starts: ReadonlyArray<number>; readonly end: number } => {
  const starts: Array<number> = []
  let end = offset
  for (const part of parts) {
    const start = Math.ceil(end / DATA_ALIGNMENT) * DATA_ALIGNMENT
    starts.push(start)
    end = start + part.bytes
  }
  return { starts, end }
}

/** Every weight of `graph` with its parts and their offsets in the shard's data file, in file order. */
const placeWeights = (graph: ShardGraph) => {
  let offset = 0
  return graph.weights.map((w) => {
    const parts = weightParts(w, graph.options.dtype)
    const { starts, end } = placeParts(parts, offset)
    offset = end
    return { weight: w, parts, starts }
  })
}

/**
 * The initializers `graph`'s `.onnx` lists, each at its place in the data file `location` that `writeShard(s)` writes
 * for it: what a graph with other outputs over the same weights (`ShardOptions.calibration`) is encoded with.
 */
export const graphExternals = (graph: ShardGraph, location: string): Array<ExternalInitializer> =>
  placeWeights(graph).flatMap(({ parts, starts }) =>
    parts.map((part, j) => ({ name: part.name, type: part.type, dims: part.dims, location, offset: starts[j], length: part.bytes }))
  )

/** Checks the layer range against the config; throws a one-line message (callers wrap it). */
const checkRange = (config: LlamaConfig, options: ShardOptions): void => {
  const [l0, l1] = options.layers
  if (!Number.isInteger(l0) || !Number.isInteger(l1) || l0 < 0 || l1 > config.numLayers || l0 >= l1) {
    throw new Error(`shard layers [${l0}, ${l1}) are not a non-empty range within [0, ${config.numLayers})`)
  }
  if (!Number.isInteger(options.maxContext) || options.maxContext < 1) {
    throw new Error(`maxContext must be a positive integer, found ${options.maxContext}`)
  }
  if (options.attention === "paged" && options.dtype === "float32") {
    throw new Error("the paged attention layout needs float16 or bfloat16 (ONNX Runtime's PagedAttention has no float32 kernel)")
  }
  const q = options.quantize
  if (q !== undefined) {
    // MatMulNBits reads each block's K elements as pairs of nibbles; Llama's dims are multiples of 128 (the fixtures'
    // are multiples of 16), so an odd K is a malformed config rather than a case worth padding for.
    const ks = [config.hiddenSize, config.numHeads * config.headDim, config.intermediateSize]
    const odd = ks.find((k) => k % 2 !== 0)
    if (odd !== undefined) throw new Error(`int4 quantization needs even input dimensions (hidden, heads x head_dim, intermediate), found ${odd}`)
  }
  const cq = config.quantization
  if (cq !== undefined) {
    if (q !== undefined) {
      throw new Error(`the checkpoint is already ${cq.method.toUpperCase()} 4-bit (quantization_config in config.json); --quantize int4 would requantize it: leave --quantize out`)
    }
    // Every group becomes one MatMulNBits block, so each linear's K must be whole groups (AWQ asserts it too:
    // AutoAWQ gemm.py L132), and the packed words hold 8 outputs (AWQ, GPTQ qzeros) or 8 inputs (GPTQ qweight).
    const inputs = [config.hiddenSize, config.numHeads * config.headDim, config.intermediateSize]
    const bad = inputs.find((d) => d % cq.groupSize !== 0)
    if (bad !== undefined) {
      throw new Error(`${cq.method.toUpperCase()} group_size ${cq.groupSize} does not divide the input dimension ${bad}: each group becomes one MatMulNBits block`)
    }
    const outputs = [...inputs, config.numKvHeads * config.headDim]
    const odd = outputs.find((d) => d % 8 !== 0)
    if (odd !== undefined) throw new Error(`${cq.method.toUpperCase()} checkpoints pack 8 codes per int32 word, but the model dimension ${odd} is not a multiple of 8`)
  }
}

/** Describes the graph of one shard (pure; no weights are read). Throws on an invalid layer range. */
/** Slices of a greedy ArgMax over `vocab` logits: the divisor closest to sqrt(vocab) (1: a plain ArgMax). */
export const argmaxChunks = (vocab: number): number => {
  let best = 1
  for (let c = 2; c * c <= vocab; c++) if (vocab % c === 0) best = c
  return best >= 16 ? best : 1
}

export const buildShardGraph = (config: LlamaConfig, options: ShardOptions): ShardGraph => {
  checkRange(config, options)
  const [l0, l1] = options.layers
  const first = l0 === 0
  const last = l1 === config.numLayers
  const T = options.dtype
  const { hiddenSize: H, intermediateSize: I, numHeads, numKvHeads, headDim, vocabSize: V } = config
  const paged = options.attention === "paged"
  const kvDims = ["batch", numKvHeads, "max_len", headDim] as const
  const presentDims = ["batch", numKvHeads, "present_len", headDim] as const
  const poolDims = ["num_blocks", "block_size", numKvHeads, headDim] as const
  // Token axes: [batch, seq] for the GroupQueryAttention layouts, one packed axis for the paged one.
  const tokenDims: ReadonlyArray<string> = paged ? ["tokens"] : ["batch", "seq"]
  const eps = { float: config.rmsNormEps }

  const nodes: Array<NodeSpec> = []
  const weights: Array<WeightSpec> = []
  const inline: Array<InlineInitializer> = []
  const inputs: Array<ValueSpec> = []
  const outputs: Array<ValueSpec> = []
  const node = (n: NodeSpec) => nodes.push({ ...n, name: n.name ?? `${n.op}_${nodes.length}` })

  let residual: string
  if (first) {
    inputs.push({ name: TensorNames.inputIds, type: "int64", dims: tokenDims })
    weights.push({ name: "embed_tokens", dims: [V, H], recipe: { kind: "copy", tensor: "model.embed_tokens.weight" } })
    node({ op: "Gather", inputs: ["embed_tokens", TensorNames.inputIds], outputs: ["embedded"], attributes: { axis: 0 }, name: "embed" })
    residual = "embedded"
  } else {
    inputs.push({ name: TensorNames.hiddenIn, type: T, dims: [...tokenDims, H] })
    residual = TensorNames.hiddenIn
  }
  // `fused` and `paged` both apply rotary inside attention on packed QKV.
  const fused = options.attention === "fused" || paged
  if (paged) {
    inputs.push(
      { name: TensorNames.cumulativeSequenceLength, type: "int32", dims: ["entries_plus_one"] },
      { name: TensorNames.pastSeqlens, type: "int32", dims: ["entries"] },
      { name: TensorNames.blockTable, type: "int32", dims: ["entries", "max_blocks"] },
      { name: TensorNames.attentionMetadata, type: "int32", dims: [2] }
    )
  } else {
    if (!fused) inputs.push({ name: TensorNames.positionIds, type: "int64", dims: ["batch", "seq"] })
    inputs.push({ name: TensorNames.seqlensK, type: "int32", dims: ["batch"] })
    inputs.push({ name: TensorNames.totalSequenceLength, type: "int32", dims: [] })
  }

  weights.push({ name: "rope_cos", dims: [options.maxContext, headDim / 2], recipe: { kind: "rope", part: "cos" } })
  weights.push({ name: "rope_sin", dims: [options.maxContext, headDim / 2], recipe: { kind: "rope", part: "sin" } })
  inline.push({ name: "mlp_split", type: "int64", dims: [2], values: [I, I] })
  if (!fused) inline.push({ name: "qkv_split", type: "int64", dims: [3], values: [numHeads * headDim, numKvHeads * headDim, numKvHeads * headDim] })

  // Each sublayer's output is added to the residual by the next norm (SkipSimplifiedLayerNormalization), so
  // `pending` is the sublayer output not yet added.
  let pending: string | null = null
  const norm = (weight: string, out: string, prefix: string) => {
    if (pending === null) {
      node({ op: "SimplifiedLayerNormalization", inputs: [residual, weight], outputs: [out], attributes: { axis: -1, epsilon: eps, stash_type: 1 }, name: `${prefix}` })
    } else {
      const sum = `${prefix}.residual`
      node({ op: "SkipSimplifiedLayerNormalization", domain: "com.microsoft", inputs: [pending, residual, weight], outputs: [out, "", "", sum], attributes: { epsilon: eps }, name: `${prefix}` })
      residual = sum
    }
  }

  // A linear weight: float for MatMul, or 4-bit codes for MatMulNBits when the shard is quantized.
  const quant = options.quantize
  const checkpointQuant = config.quantization
  const linearRecipe = (tensors: ReadonlyArray<string>, quantize: boolean): WeightRecipe =>
    checkpointQuant !== undefined && quantize
      ? { kind: "prequantized", quant: checkpointQuant, modules: tensors.map((t) => t.replace(/\.weight$/, "")) }
      : quant !== undefined && quantize
      ? { kind: "int4", tensors, blockSize: quant.blockSize, symmetric: quant.symmetric }
      : { kind: "linear", tensors }
  const matmul = (input: string, weight: string, output: string, name: string) => {
    const w = weights.find((x) => x.name === weight)
    if (w === undefined || !isNBits(w.recipe)) {
      node({ op: "MatMul", inputs: [input, weight], outputs: [output], name })
      return
    }
    const l = int4Layout({ ...w, recipe: w.recipe })
    node({
      op: "MatMulNBits",
      domain: "com.microsoft",
      inputs: l.symmetric ? [input, weight, scalesName(weight)] : [input, weight, scalesName(weight), zeroPointsName(weight)],
      outputs: [output],
      attributes: { K: l.k, N: l.n, bits: 4, block_size: l.blockSize, accuracy_level: quant?.accuracyLevel ?? 0 },
      name
    })
  }

  const tokenAxes = tokenDims.map((_, a) => a)
  const sumSquares = (input: string, weight: string) => {
    if (options.calibration !== true) return
    const from = T === "float32" ? input : `${input}.float32`
    // float32 before squaring: a float16 sum over hundreds of tokens overflows
    if (T !== "float32") node({ op: "Cast", inputs: [input], outputs: [from], attributes: { to: 1 }, name: `${weight}.calibration_cast` })
    const k = weights.find((w) => w.name === weight)?.dims[0] ?? 0
    node({ op: "ReduceSumSquare", inputs: [from], outputs: [sumSquaresName(weight)], attributes: { axes: tokenAxes, keepdims: 0 }, name: `${weight}.sum_squares` })
    outputs.push({ name: sumSquaresName(weight), type: "float32", dims: [k] })
  }

  for (let i = l0; i < l1; i++) {
    const p = `layers.${i}`
    const hf = `model.layers.${i}`
    weights.push(
      { name: `${p}.input_norm`, dims: [H], recipe: { kind: "copy", tensor: `${hf}.input_layernorm.weight` } },
      { name: `${p}.qkv`, dims: [H, (numHeads + 2 * numKvHeads) * headDim], recipe: linearRecipe([`${hf}.self_attn.q_proj.weight`, `${hf}.self_attn.k_proj.weight`, `${hf}.self_attn.v_proj.weight`], true) },
      { name: `${p}.o_proj`, dims: [numHeads * headDim, H], recipe: linearRecipe([`${hf}.self_attn.o_proj.weight`], true) },
      { name: `${p}.post_norm`, dims: [H], recipe: { kind: "copy", tensor: `${hf}.post_attention_layernorm.weight` } },
      { name: `${p}.gate_up`, dims: [H, 2 * I], recipe: linearRecipe([`${hf}.mlp.gate_proj.weight`, `${hf}.mlp.up_proj.weight`], true) },
      { name: `${p}.down`, dims: [I, H], recipe: linearRecipe([`${hf}.mlp.down_proj.weight`], true) }
    )
    if (paged) {
      inputs.push({ name: TensorNames.keyCache(i), type: T, dims: poolDims }, { name: TensorNames.valueCache(i), type: T, dims: poolDims })
      outputs.push({ name: TensorNames.keyCacheOut(i), type: T, dims: poolDims }, { name: TensorNames.valueCacheOut(i), type: T, dims: poolDims })
    } else {
      inputs.push({ name: TensorNames.pastKey(i), type: T, dims: kvDims }, { name: TensorNames.pastValue(i), type: T, dims: kvDims })
      outputs.push({ name: TensorNames.presentKey(i), type: T, dims: presentDims }, { name: TensorNames.presentValue(i), type: T, dims: presentDims })
    }
    if (!fused) {
      outputs.push(
        { name: TensorNames.newKey(i), type: T, dims: ["batch", "seq", numKvHeads * headDim] },
        { name: TensorNames.newValue(i), type: T, dims: ["batch", "seq", numKvHeads * headDim] }
      )
    }

    norm(`${p}.input_norm`, `${p}.attn_in`, `${p}.input_norm`)
    matmul(`${p}.attn_in`, `${p}.qkv`, `${p}.qkv_out`, `${p}.qkv`)
    sumSquares(`${p}.attn_in`, `${p}.qkv`)
    if (paged) {
      // Inputs by slot: 0 packed QKV (key/value omitted), 3-4 the block pools (updated in place), 5 cumulative lengths,
      // 6 past lengths, 7 block table, 8-9 rotary caches (position = past + offset in the entry), 10-15 unused,
      // 16 attention_metadata (host bounds: no device-to-host read of the lengths, so the run can be captured).
      node({
        op: "PagedAttention",
        domain: "com.microsoft",
        inputs: [
          `${p}.qkv_out`, "", "", TensorNames.keyCache(i), TensorNames.valueCache(i), TensorNames.cumulativeSequenceLength,
          TensorNames.pastSeqlens, TensorNames.blockTable, "rope_cos", "rope_sin", "", "", "", "", "", "", TensorNames.attentionMetadata
        ],
        outputs: [`${p}.attn`, TensorNames.keyCacheOut(i), TensorNames.valueCacheOut(i)],
        attributes: { num_heads: numHeads, kv_num_heads: numKvHeads, scale: { float: 1 / Math.sqrt(headDim) }, do_rotary: 1, rotary_interleaved: 0 },
        name: `${p}.attention`
      })
    } else if (fused) {
      node({
        op: "GroupQueryAttention",
        domain: "com.microsoft",
        // packed QKV: key and value are omitted; rotary positions come from each row's cached length
        inputs: [`${p}.qkv_out`, "", "", TensorNames.pastKey(i), TensorNames.pastValue(i), TensorNames.seqlensK, TensorNames.totalSequenceLength, "rope_cos", "rope_sin"],
        outputs: [`${p}.attn`, TensorNames.presentKey(i), TensorNames.presentValue(i)],
        attributes: { num_heads: numHeads, kv_num_heads: numKvHeads, scale: { float: 1 / Math.sqrt(headDim) }, do_rotary: 1, rotary_interleaved: 0 },
        name: `${p}.attention`
      })
    } else {
      // Rotary embeddings are applied before attention (not inside it) so that the rotated keys of the new tokens
      // are a graph output of their own: a runtime can keep its cache by appending just these, instead of fetching
      // the whole present cache after every step.
      node({ op: "Split", inputs: [`${p}.qkv_out`, "qkv_split"], outputs: [`${p}.q`, `${p}.k`, TensorNames.newValue(i)], attributes: { axis: -1 }, name: `${p}.qkv_split` })
      node({ op: "RotaryEmbedding", domain: "com.microsoft", inputs: [`${p}.q`, TensorNames.positionIds, "rope_cos", "rope_sin"], outputs: [`${p}.q_rot`], attributes: { interleaved: 0, num_heads: numHeads }, name: `${p}.q_rotary` })
      node({ op: "RotaryEmbedding", domain: "com.microsoft", inputs: [`${p}.k`, TensorNames.positionIds, "rope_cos", "rope_sin"], outputs: [TensorNames.newKey(i)], attributes: { interleaved: 0, num_heads: numKvHeads }, name: `${p}.k_rotary` })
      node({
        op: "GroupQueryAttention",
        domain: "com.microsoft",
        inputs: [`${p}.q_rot`, TensorNames.newKey(i), TensorNames.newValue(i), TensorNames.pastKey(i), TensorNames.pastValue(i), TensorNames.seqlensK, TensorNames.totalSequenceLength],
        outputs: [`${p}.attn`, TensorNames.presentKey(i), TensorNames.presentValue(i)],
        attributes: {
          num_heads: numHeads,
          kv_num_heads: numKvHeads,
          scale: { float: 1 / Math.sqrt(headDim) },
          do_rotary: 0
        },
        name: `${p}.attention`
      })
    }
    matmul(`${p}.attn`, `${p}.o_proj`, `${p}.attn_out`, `${p}.o_proj`)
    sumSquares(`${p}.attn`, `${p}.o_proj`)
    pending = `${p}.attn_out`
    norm(`${p}.post_norm`, `${p}.mlp_in`, `${p}.post_norm`)
    matmul(`${p}.mlp_in`, `${p}.gate_up`, `${p}.gate_up_out`, `${p}.gate_up`)
    sumSquares(`${p}.mlp_in`, `${p}.gate_up`)
    node({ op: "Split", inputs: [`${p}.gate_up_out`, "mlp_split"], outputs: [`${p}.gate`, `${p}.up`], attributes: { axis: -1 }, name: `${p}.split` })
    node({ op: "Sigmoid", inputs: [`${p}.gate`], outputs: [`${p}.gate_sigmoid`], name: `${p}.sigmoid` })
    node({ op: "Mul", inputs: [`${p}.gate`, `${p}.gate_sigmoid`], outputs: [`${p}.silu`], name: `${p}.silu` })
    node({ op: "Mul", inputs: [`${p}.silu`, `${p}.up`], outputs: [`${p}.swiglu`], name: `${p}.swiglu` })
    matmul(`${p}.swiglu`, `${p}.down`, `${p}.mlp_out`, `${p}.down`)
    sumSquares(`${p}.swiglu`, `${p}.down`)
    pending = `${p}.mlp_out`
  }

  if (last) {
    inputs.push({ name: TensorNames.logitsIndex, type: "int64", dims: paged ? ["n_logits"] : ["batch", "n_logits"] })
    weights.push({ name: "final_norm", dims: [H], recipe: { kind: "copy", tensor: "model.norm.weight" } })
    const head = config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"
    weights.push({ name: "lm_head", dims: [H, V], recipe: linearRecipe([head], quant?.lmHead ?? false) })
    if (!paged) inline.push({ name: "last_axis", type: "int64", dims: [1], values: [-1] })
    node({ op: "SkipSimplifiedLayerNormalization", domain: "com.microsoft", inputs: [pending ?? residual, residual, "final_norm"], outputs: ["normed"], attributes: { epsilon: eps }, name: "final_norm" })
    // every token's final hidden state, not only the selected positions: the head sees all of them in generation
    sumSquares("normed", "lm_head")
    if (paged) {
      // Select the requested packed positions before the LM head: [tokens, H] -> [n_logits, H].
      node({ op: "Gather", inputs: ["normed", TensorNames.logitsIndex], outputs: ["selected"], attributes: { axis: 0 }, name: "select" })
    } else {
      // Select the requested positions before the LM head: [batch, seq, H] -> [batch, n_logits, H].
      node({ op: "Unsqueeze", inputs: [TensorNames.logitsIndex, "last_axis"], outputs: ["logits_index_3d"], name: "logits_index_3d" })
      node({ op: "GatherND", inputs: ["normed", "logits_index_3d"], outputs: ["selected"], attributes: { batch_dims: 1 }, name: "select" })
    }
    if (T === "float32") {
      matmul("selected", "lm_head", TensorNames.logits, "lm_head")
    } else {
      matmul("selected", "lm_head", "logits_half", "lm_head")
      node({ op: "Cast", inputs: ["logits_half"], outputs: [TensorNames.logits], attributes: { to: 1 }, name: "logits_f32" })
    }
    // Greedy rows need one id, not a vocabulary of logits: fetching only this output spares the copy of
    // [batch, vocab] floats out of ORT and a JS pass over them. Ties go to the lowest id, as in the sampler.
    const chunks = argmaxChunks(V)
    const argmax = (from: string, to: string, prefix: string) => {
      if (chunks === 1) {
        node({ op: "ArgMax", inputs: [from], outputs: [to], attributes: { axis: -1, keepdims: 0, select_last_index: 0 }, name: prefix })
        return
      }
      // ArgMax over a whole 128k-entry row runs one thread block per row on the CUDA EP: about 150 us a row,
      // 9.7 ms of a 16.5 ms step at batch 64 on an H200 (ncu). Two short reductions keep every block busy:
      // the best entry of each of `chunks` slices, then the best slice; ties still go to the lowest id.
      node({ op: "Reshape", inputs: [from, "argmax_chunked_shape"], outputs: [`${prefix}_chunked`], name: `${prefix}_chunks` })
      node({ op: "ArgMax", inputs: [`${prefix}_chunked`], outputs: [`${prefix}_in_chunk`], attributes: { axis: 2, keepdims: 1, select_last_index: 0 }, name: `${prefix}_in_chunk` })
      node({ op: "ReduceMax", inputs: [`${prefix}_chunked`], outputs: [`${prefix}_chunk_max`], attributes: { axes: [2], keepdims: 1 }, name: `${prefix}_chunk_max` })
      node({ op: "ArgMax", inputs: [`${prefix}_chunk_max`], outputs: [`${prefix}_best_chunk`], attributes: { axis: 1, keepdims: 1, select_last_index: 0 }, name: `${prefix}_best_chunk` })
      node({ op: "GatherElements", inputs: [`${prefix}_in_chunk`, `${prefix}_best_chunk`], outputs: [`${prefix}_offset`], attributes: { axis: 1 }, name: `${prefix}_offset` })
      node({ op: "Mul", inputs: [`${prefix}_best_chunk`, "argmax_chunk_len"], outputs: [`${prefix}_base`], name: `${prefix}_base` })
      node({ op: "Add", inputs: [`${prefix}_base`, `${prefix}_offset`], outputs: [`${prefix}_flat`], name: `${prefix}_flat` })
      // [batch * n_logits, 1, 1] -> [batch, n_logits] ([n_logits] in the paged layout)
      node({ op: "Reshape", inputs: [`${prefix}_flat`, "argmax_index_shape"], outputs: [to], name: prefix })
    }
    if (chunks > 1) {
      const L = V / chunks
      inline.push(
        { name: "argmax_chunked_shape", type: "int64", dims: [3], values: [-1, chunks, L] },
        { name: "argmax_chunk_len", type: "int64", dims: [], values: [L] }
      )
      node({ op: "Shape", inputs: [TensorNames.logitsIndex], outputs: ["argmax_index_shape"], name: "greedy_index_shape" })
    }
    argmax(TensorNames.logits, TensorNames.greedyToken, "greedy")

    // Constrained greedy rows (rotary-outside graphs, the CPU runtime's): the grammar's masks applied before an ArgMax of
    // their own, so a structured-output step fetches ids, not 128k floats a row. ORT runs every node of the graph whatever
    // the fetches (profiled: with one all-ones bitmask row broadcast over the batch, as plain steps fed before, a plain
    // batch-64 step paid ~9 ms for the unused mask Add and masked ArgMax), so a step without constrained rows feeds empty
    // lists (0 rows), and the mask costs nothing. The device layouts leave it out (they never constrain in the graph, and
    // their EP's coverage of BitShift is unchecked). `masked_greedy_token` is `greedy_token` with two kinds of rows
    // replaced:
    // - sparse rows (`allowed_rows`): the grammar allows few ids (an enum word, a number, between items), listed in
    //   `allowed_ids` ascending, padded by repeating the row's last id; the row's ArgMax is that of the logits gathered at
    //   those ids (the first maximum: the lowest id, as in the sampler). A gather of rows x K floats: microseconds.
    // - dense rows (`token_bitmask_rows`): the grammar allows many ids (a free string); their `token_bitmask` rows are
    //   unpacked over only those rows' logits. The unpacking works on bytes, not bits: shifts split each word into its 4
    //   bytes, then a Gather from a 256 x 8 table gives every byte's 8 logit biases at once (0 or -Infinity), and an Add
    //   applies them (per-bit shifts and a Where cost more than the logits copy they replace on a 2-core CPU).
    // Either list may be empty (0 rows). Before the sparse rows, all 64 rows of a batch-64 step went through the dense
    // unpacking: Gather 1.6 ms, Add 3.8 ms, shifts 0.7 ms of a ~16.5 ms step (ORT profile).
    if (!fused) {
      const words = Math.ceil(V / 32)
      inputs.push(
        { name: TensorNames.tokenBitmask, type: "int32", dims: ["dense_rows", words] },
        { name: TensorNames.tokenBitmaskRows, type: "int64", dims: ["dense_rows"] },
        { name: TensorNames.allowedRows, type: "int64", dims: ["sparse_rows"] },
        { name: TensorNames.allowedIds, type: "int64", dims: ["sparse_rows", "sparse_k"] }
      )
      inline.push(
        // byte k of a word holds ids 8k .. 8k + 7 of its 32: (word << (24 - 8k)) >> 24 (opset 17 has no BitwiseAnd)
        { name: "mask_byte_up", type: "int32", dims: [1, 1, 4], values: [24, 16, 8, 0] },
        { name: "mask_byte_down", type: "int32", dims: [1], values: [24] },
        // row b: what byte value b adds to its 8 logits, lowest bit first: 0 where allowed, -Infinity elsewhere
        { name: "mask_byte_bias", type: "float32", dims: [256, 8], values: Array.from({ length: 256 * 8 }, (_, i) => ((Math.floor(i / 8) >> (i % 8)) & 1) === 1 ? 0 : Number.NEGATIVE_INFINITY) },
        { name: "mask_last_axis", type: "int64", dims: [1], values: [-1] },
        // 0: the row count copied from the input (a -1 cannot be inferred when there are 0 rows)
        { name: "mask_rows_shape", type: "int64", dims: [2], values: [0, 32 * words] },
        { name: "mask_axis", type: "int64", dims: [1], values: [1] },
        { name: "mask_logit_rows_shape", type: "int64", dims: [2], values: [-1, V] },
        { name: "mask_flat_shape", type: "int64", dims: [1], values: [-1] },
        { name: "mask_vocab", type: "int64", dims: [], values: [V] }
      )
      // every selected position as one row: [batch * n_logits, vocab], its greedy id [batch * n_logits]
      node({ op: "Reshape", inputs: [TensorNames.logits, "mask_logit_rows_shape"], outputs: ["mask_logit_rows"], name: "mask_logit_rows" })
      node({ op: "Reshape", inputs: [TensorNames.logits, "mask_flat_shape"], outputs: ["mask_logits_flat"], name: "mask_logits_flat" })
      node({ op: "Reshape", inputs: [TensorNames.greedyToken, "mask_flat_shape"], outputs: ["mask_greedy_flat"], name: "mask_greedy_flat" })
      // sparse rows: logits[row, id] for every listed id ([sparse_rows, K], gathered at flat indices row * vocab + id),
      // their first maximum, its id
      node({ op: "Unsqueeze", inputs: [TensorNames.allowedRows, "mask_axis"], outputs: ["allowed_rows_2d"], name: "allowed_rows_2d" })
      node({ op: "Mul", inputs: ["allowed_rows_2d", "mask_vocab"], outputs: ["allowed_row_base"], name: "allowed_row_base" })
      node({ op: "Add", inputs: [TensorNames.allowedIds, "allowed_row_base"], outputs: ["allowed_flat"], name: "allowed_flat" })
      node({ op: "Gather", inputs: ["mask_logits_flat", "allowed_flat"], outputs: ["allowed_logits"], attributes: { axis: 0 }, name: "allowed_logits" })
      node({ op: "ArgMax", inputs: ["allowed_logits"], outputs: ["allowed_best"], attributes: { axis: 1, keepdims: 1, select_last_index: 0 }, name: "allowed_best" })
      node({ op: "GatherElements", inputs: [TensorNames.allowedIds, "allowed_best"], outputs: ["allowed_token_2d"], attributes: { axis: 1 }, name: "allowed_token_2d" })
      node({ op: "Squeeze", inputs: ["allowed_token_2d", "mask_axis"], outputs: ["allowed_token"], name: "allowed_token" })

      // dense rows: those rows' logits plus their unpacked bitmask, ArgMax
      node({ op: "Gather", inputs: ["mask_logit_rows", TensorNames.tokenBitmaskRows], outputs: ["dense_logits"], attributes: { axis: 0 }, name: "dense_logits" })
      node({ op: "Cast", inputs: [TensorNames.tokenBitmask], outputs: ["mask_words"], attributes: { to: 12 }, name: "mask_words" })
      node({ op: "Cast", inputs: ["mask_byte_up"], outputs: ["mask_byte_up_u32"], attributes: { to: 12 }, name: "mask_byte_up_u32" })
      node({ op: "Cast", inputs: ["mask_byte_down"], outputs: ["mask_byte_down_u32"], attributes: { to: 12 }, name: "mask_byte_down_u32" })
      // [rows, words] -> [rows, words, 1] -> [rows, words, 4] bytes -> [rows, words, 4, 8] biases -> [rows, 32 * words]
      node({ op: "Unsqueeze", inputs: ["mask_words", "mask_last_axis"], outputs: ["mask_words_3d"], name: "mask_words_3d" })
      node({ op: "BitShift", inputs: ["mask_words_3d", "mask_byte_up_u32"], outputs: ["mask_bytes_high"], attributes: { direction: "LEFT" }, name: "mask_bytes_high" })
      node({ op: "BitShift", inputs: ["mask_bytes_high", "mask_byte_down_u32"], outputs: ["mask_bytes_u32"], attributes: { direction: "RIGHT" }, name: "mask_bytes_u32" })
      node({ op: "Cast", inputs: ["mask_bytes_u32"], outputs: ["mask_bytes"], attributes: { to: 6 }, name: "mask_bytes" })
      node({ op: "Gather", inputs: ["mask_byte_bias", "mask_bytes"], outputs: ["mask_bias_4d"], attributes: { axis: 0 }, name: "mask_bias_4d" })
      node({ op: "Reshape", inputs: ["mask_bias_4d", "mask_rows_shape"], outputs: ["mask_bias_words"], name: "mask_bias_words" })
      // the last word's ids past the vocabulary dropped (none when it is a multiple of 32, as Llama 3's 128,256 is)
      if (V % 32 === 0) node({ op: "Identity", inputs: ["mask_bias_words"], outputs: ["mask_bias"], name: "mask_bias" })
      else {
        inline.push({ name: "mask_start", type: "int64", dims: [1], values: [0] }, { name: "mask_end", type: "int64", dims: [1], values: [V] })
        node({ op: "Slice", inputs: ["mask_bias_words", "mask_start", "mask_end", "mask_axis"], outputs: ["mask_bias"], name: "mask_bias" })
      }
      node({ op: "Add", inputs: ["dense_logits", "mask_bias"], outputs: ["dense_masked"], name: "dense_masked" })
      // (axis 1 with keepdims, then a Squeeze: ORT's ArgMax over 0 rows with axis -1 and no keepdims gives a wrong shape)
      node({ op: "ArgMax", inputs: ["dense_masked"], outputs: ["dense_token_2d"], attributes: { axis: 1, keepdims: 1, select_last_index: 0 }, name: "dense_token_2d" })
      node({ op: "Squeeze", inputs: ["dense_token_2d", "mask_axis"], outputs: ["dense_token"], name: "dense_token" })

      // greedy ids, the dense rows' then the sparse rows' written over them, back to [batch, n_logits]
      node({ op: "Unsqueeze", inputs: [TensorNames.tokenBitmaskRows, "mask_axis"], outputs: ["dense_rows_2d"], name: "dense_rows_2d" })
      node({ op: "ScatterND", inputs: ["mask_greedy_flat", "dense_rows_2d", "dense_token"], outputs: ["mask_with_dense"], name: "mask_with_dense" })
      node({ op: "ScatterND", inputs: ["mask_with_dense", "allowed_rows_2d", "allowed_token"], outputs: ["mask_with_sparse"], name: "mask_with_sparse" })
      node({ op: "Shape", inputs: [TensorNames.greedyToken], outputs: ["mask_token_shape"], name: "mask_token_shape" })
      node({ op: "Reshape", inputs: ["mask_with_sparse", "mask_token_shape"], outputs: [TensorNames.maskedGreedyToken], name: "masked_greedy" })
    }
    const logitsDims: ReadonlyArray<string> = paged ? ["n_logits"] : ["batch", "n_logits"]
    outputs.unshift(
      { name: TensorNames.logits, type: "float32", dims: [...logitsDims, V] },
      { name: TensorNames.greedyToken, type: "int64", dims: logitsDims },
      ...(fused ? [] : [{ name: TensorNames.maskedGreedyToken, type: "int64" as const, dims: logitsDims }])
    )
  } else {
    node({ op: "Add", inputs: [pending ?? residual, residual], outputs: [TensorNames.hiddenOut], name: "hidden_out" })
    outputs.unshift({ name: TensorNames.hiddenOut, type: T, dims: [...tokenDims, H] })
  }

  return {
    name: `llama3-layers-${l0}-${l1}`,
    nodes,
    inputs,
    outputs,
    inline,
    opsets: { "": 17, "com.microsoft": 1 },
    options,
    weights
  }
}

const formatShape = (s: ReadonlyArray<number>): string => `[${s.join(", ")}]`

/** Checkpoint tensors a recipe reads. */
const recipeTensors = (r: WeightRecipe): ReadonlyArray<string> =>
  r.kind === "copy" ? [r.tensor] : r.kind === "linear" || r.kind === "int4" ? r.tensors : r.kind === "prequantized" ? quantizedTensorNames(r.quant, r.modules) : []

/**
 * Checks that every tensor `tensors` names exists with the shape `expectedTensorShapes` gives, before anything
 * is written. The error names the tensor, its file, the expected and the found shape.
 */
export const validateTensors = (
  source: TensorSource,
  config: LlamaConfig,
  tensors: Iterable<string>
): Effect.Effect<void, CheckpointError> =>
  Effect.suspend(() => {
    const expected = expectedTensorShapes(config)
    for (const name of tensors) {
      const shape = expected.get(name)
      const info = source.info(name)
      const where = source.files[0] === undefined ? "the checkpoint" : path.dirname(source.files[0])
      if (info === undefined) {
        const packed = name.replace(/\.weight$/, ".qweight")
        if (packed !== name && source.info(packed) !== undefined && config.quantization === undefined) {
          return Effect.fail(new CheckpointError({
            path: where,
            message: `the checkpoint in ${where} holds '${packed}' (a 4-bit linear) where '${name}' was expected, but config.json has no quantization_config (nor is there a quantize_config.json): Chorus loads AWQ and GPTQ checkpoints from that section`
          }))
        }
        return Effect.fail(new CheckpointError({ path: where, message: `tensor '${name}' is missing from the checkpoint in ${where}` }))
      }
      if (shape === undefined) {
        return Effect.fail(new CheckpointError({ path: info.file, message: `tensor '${name}' in ${info.file} is not part of this model's config` }))
      }
      if (shape.length !== info.shape.length || shape.some((d, k) => d !== info.shape[k])) {
        const q = config.quantization
        if (q !== undefined && /\.(scales|qzeros)$/.test(name) && shape.length === 2 && info.shape.length === 2 && shape[1] === info.shape[1] && info.shape[0] > 0) {
          // groups along K differ: the linear was quantized with another group size
          const inDim = shape[0] * q.groupSize
          return Effect.fail(
            new CheckpointError({
              path: info.file,
              message: `tensor '${name}' in ${info.file}: expected shape ${formatShape(shape)} from config.json, found ${formatShape(info.shape)}: its group size (${inDim / info.shape[0]}) differs from quantization_config.group_size ${q.groupSize}; every linear must use it (q|k|v and gate|up are stacked into one MatMulNBits with one block size)`
            })
          )
        }
        return Effect.fail(
          new CheckpointError({
            path: info.file,
            message: `tensor '${name}' in ${info.file}: expected shape ${formatShape(shape)} from config.json, found ${formatShape(info.shape)}`
          })
        )
      }
    }
    return Effect.void
  })

/** Every checkpoint tensor the given shard graphs read. */
export const graphTensors = (graphs: ReadonlyArray<ShardGraph>): Set<string> =>
  new Set(graphs.flatMap((g) => g.weights.flatMap((w) => recipeTensors(w.recipe))))

/** Source rows `[out_k, in]` concatenated along `out`, as float32 (the `[N, K]` an int4 weight is quantized from). */
const readRows = (source: TensorSource, config: LlamaConfig, tensors: ReadonlyArray<string>, n: number, k: number) =>
  Effect.gen(function*() {
    const expected = expectedTensorShapes(config)
    const out = new Float32Array(n * k)
    let offset = 0
    for (const name of tensors) {
      const data = yield* source.readFloat32(name, expected.get(name) ?? [])
      out.set(data, offset)
      offset += data.length
    }
    return out
  })

/**
 * The checkpoint tensors of `modules` (stacked along N into `out` outputs, each with `inDim` inputs), read as raw
 * bytes; each module's outputs come from its `scales` shape (validated against the config before).
 */
const readQuantized = (source: TensorSource, quant: CheckpointQuant, modules: ReadonlyArray<string>, out: number, inDim: number) =>
  Effect.gen(function*() {
    const linears: Array<QuantizedLinear> = []
    let rows = 0
    for (const module of modules) {
      const raw = new Map<string, RawTensor>()
      for (const suffix of quantizedSuffixes(quant)) {
        const name = `${module}.${suffix}`
        const at = source.locate(name)
        if (at === undefined) return yield* Effect.fail(new CheckpointError({ path: source.files[0] ?? "", message: `tensor '${name}' is missing from the checkpoint` }))
        const bytes = yield* Effect.tryPromise({
          try: async () => {
            const buf = new Uint8Array(at.byteLength)
            const handle = await fs.promises.open(at.file, "r")
            try {
              let done = 0
              while (done < buf.byteLength) {
                const { bytesRead } = await handle.read(buf, done, buf.byteLength - done, at.position + done)
                if (bytesRead === 0) throw new Error(`${path.basename(at.file)} is truncated`)
                done += bytesRead
              }
            } finally {
              await handle.close()
            }
            return buf
          },
          catch: (cause) => new CheckpointError({ path: at.file, message: `cannot read '${name}' from ${at.file}: ${cause instanceof Error ? cause.message : String(cause)}` })
        })
        raw.set(suffix, { dtype: at.dtype, shape: at.shape, bytes })
      }
      const n = raw.get("scales")!.shape[1] ?? 0
      rows += n
      linears.push({ module, out: n, inDim, qweight: raw.get("qweight")!, qzeros: raw.get("qzeros")!, scales: raw.get("scales")!, gIdx: raw.get("g_idx") })
    }
    if (rows !== out) return yield* Effect.fail(new CheckpointError({ path: source.files[0] ?? "", message: `${modules.join(" + ")}: ${rows} outputs, expected ${out}` }))
    return linears
  })

/** Repacks, turning a refused tensor (v1 zero point 16, act-order g_idx, inexact scale) into a CheckpointError. */
const repack = (quant: CheckpointQuant, linears: ReadonlyArray<QuantizedLinear>, dtype: ModelDType, file: string) =>
  Effect.try({
    try: () => repackedBytes(quant, linears, dtype),
    catch: (e) =>
      new CheckpointError({
        path: file,
        message: e instanceof RepackError ? `cannot load this ${quant.method.toUpperCase()} checkpoint: ${e.message}` : `cannot repack ${linears.map((l) => l.module).join(" + ")}: ${String(e)}`
      })
  })

/** The bytes of each of `w`'s parts (`weightParts` order). */
const produceParts = (
  source: TensorSource,
  config: LlamaConfig,
  w: WeightSpec,
  dtype: ModelDType,
  rope: () => { cos: Float32Array; sin: Float32Array },
  importance: Float32Array | undefined
): Effect.Effect<Array<Uint8Array>, CheckpointError> => {
  const r = w.recipe
  if (r.kind === "prequantized") {
    const file = source.locate(`${r.modules[0]}.qweight`)?.file ?? source.files[0] ?? ""
    return readQuantized(source, r.quant, r.modules, w.dims[1], w.dims[0]).pipe(Effect.flatMap((linears) => repack(r.quant, linears, dtype, file)))
  }
  if (r.kind !== "int4") return Effect.map(produce(source, config, w, rope), (values) => [toBytes(values, dtype)])
  const l = int4Layout({ ...w, recipe: r })
  return Effect.map(readRows(source, config, r.tensors, l.n, l.k), (rows) => int4Bytes(rows, l, dtype, importance))
}

const produce = (
  source: TensorSource,
  config: LlamaConfig,
  w: WeightSpec,
  rope: () => { cos: Float32Array; sin: Float32Array }
): Effect.Effect<Float32Array, CheckpointError> => {
  const expected = expectedTensorShapes(config)
  const r = w.recipe
  switch (r.kind) {
    case "int4":
    case "prequantized":
      return Effect.die(new Error(`produce: ${w.name} is a 4-bit weight (produceParts handles it)`))
    case "copy":
      return source.readFloat32(r.tensor, expected.get(r.tensor))
    case "rope":
      return Effect.sync(() => rope()[r.part])
    case "linear":
      return Effect.gen(function*() {
        const [inDim, outDim] = w.dims as [number, number]
        const out = new Float32Array(inDim * outDim)
        let offset = 0
        for (const name of r.tensors) {
          const shape = expected.get(name) ?? []
          const data = yield* source.readFloat32(name, shape)
          const rows = shape[0] ?? 0
          transposeInto(data, rows, inDim, out, outDim, offset)
          offset += rows
        }
        return out
      })
  }
}

const toBytes = (data: Float32Array, dtype: ModelDType): Uint8Array =>
  encodeFloat32(dtype === "float32" ? "F32" : dtype === "float16" ? "F16" : "BF16", data)

const ioError = (file: string, what: string) => (cause: unknown) =>
  new ConversionError({ message: `cannot ${what} ${file}: ${cause instanceof Error ? cause.message : String(cause)}` })

export interface WriteShardOptions {
  /** Called after each tensor lands in the data file, with its byte size. */
  readonly onTensor?: (name: string, bytes: number) => void
  /**
   * Per int4 weight (by name), the mean x² of each of its input channels over calibration tokens: those weights take
   * the activation-weighted clip search (`quantizeInt4`); the others round to nearest.
   */
  readonly importance?: ReadonlyMap<string, Float32Array>
}

/**
 * Writes `<onnxPath>` (graph, metadata only) and `<onnxPath>.data` (every weight, one at a time, each at a
 * 64-byte aligned offset). Reads one checkpoint tensor at a time, so memory stays at about one tensor.
 */
export const writeShard = (
  source: TensorSource,
  config: LlamaConfig,
  graph: ShardGraph,
  onnxPath: string,
  writeOptions: WriteShardOptions = {}
): Effect.Effect<void, CheckpointError | ConversionError> =>
  Effect.gen(function*() {
    yield* validateTensors(source, config, graphTensors([graph]))
    const dataPath = `${onnxPath}.data`
    const location = path.basename(dataPath)
    const dtype = graph.options.dtype
    let ropeValues: { cos: Float32Array; sin: Float32Array } | undefined
    const rope = () => (ropeValues ??= ropeCache(config, graph.options.maxContext))
    const external: Array<ExternalInitializer> = []

    yield* Effect.acquireUseRelease(
      Effect.tryPromise({ try: () => fs.promises.open(dataPath, "w"), catch: ioError(dataPath, "create") }),
      (handle) =>
        Effect.gen(function*() {
          let offset = 0
          for (const w of graph.weights) {
            const parts = weightParts(w, dtype)
            const bytesOfParts = yield* produceParts(source, config, w, dtype, rope, writeOptions.importance?.get(w.name))
            const { starts, end } = placeParts(parts, offset)
            for (const [j, part] of parts.entries()) {
              const bytes = bytesOfParts[j]
              const start = starts[j]
              // Uninterruptible so that an interrupt never leaves a write in flight while the caller removes the folder.
              yield* Effect.uninterruptible(Effect.tryPromise({
                try: async () => {
                  let done = 0
                  while (done < bytes.byteLength) {
                    const { bytesWritten } = await handle.write(bytes, done, bytes.byteLength - done, start + done)
                    done += bytesWritten
                  }
                },
                catch: ioError(dataPath, "write")
              }))
              external.push({ name: part.name, type: part.type, dims: part.dims, location, offset: start, length: bytes.byteLength })
            }
            offset = end
            writeOptions.onTensor?.(w.name, bytesOfParts.reduce((n, b) => n + b.byteLength, 0))
          }
        }),
      (handle) => Effect.promise(() => handle.close().catch(() => undefined))
    )

    const { options: _options, weights: _weights, ...spec } = graph
    const model = encodeModel({ ...spec, external })
    yield* Effect.uninterruptible(Effect.tryPromise({ try: () => fs.promises.writeFile(onnxPath, model), catch: ioError(onnxPath, "write") }))
  })

/** What `writeShards` needs of a conversion pool (`ConvertPool.ts`). */
export interface ShardTaskRunner {
  readonly threads: number
  /** Produces and writes one initializer (uninterruptible); succeeds with its byte length. */
  readonly run: (task: ConvertTask) => Effect.Effect<number, CheckpointError | ConversionError>
}

export interface WriteShardsOptions extends WriteShardOptions {
  /** Bytes of tensor buffers in flight across the threads (a larger tensor runs alone). Default: totalmem/8, 2-8 GiB. */
  readonly memoryBytes?: number
}

const MiB = 1 << 20
const defaultMemoryBytes = (): number => Math.max(2 * 1024 * MiB, Math.min(8 * 1024 * MiB, Math.floor(os.totalmem() / 8)))

/**
 * Writes every shard's `.onnx.data` and `.onnx`, byte for byte as `writeShard` does one after another, but with the
 * initializers produced and written in parallel by `runner`'s threads: each initializer's offset follows from the
 * dims and dtype of those before it, so each lands with a positional write, in any order. At most `runner.threads`
 * tensors and about `memoryBytes` of buffers are in flight. The RoPE caches (small, computed) are written here.
 * On interrupt no new tensor starts and those in flight run to their end; the graphs are written last.
 */
export const writeShards = (
  source: TensorSource,
  config: LlamaConfig,
  graphs: ReadonlyArray<ShardGraph>,
  onnxPaths: ReadonlyArray<string>,
  runner: ShardTaskRunner,
  writeOptions: WriteShardsOptions = {}
): Effect.Effect<void, CheckpointError | ConversionError> =>
  Effect.gen(function*() {
    yield* validateTensors(source, config, graphTensors(graphs))
    type Job = { readonly name: string; readonly bytes: number; readonly task: ConvertTask } | {
      readonly name: string
      readonly bytes: number
      readonly rope: { readonly graph: ShardGraph; readonly part: "cos" | "sin"; readonly dataPath: string; readonly offset: number }
    }
    const jobs: Array<Job> = []
    const externals: Array<Array<ExternalInitializer>> = []
    for (const [k, graph] of graphs.entries()) {
      const dataPath = `${onnxPaths[k]}.data`
      const dtype = graph.options.dtype
      externals.push(graphExternals(graph, path.basename(dataPath)))
      for (const { weight: w, parts, starts } of placeWeights(graph)) {
        const bytes = parts.reduce((n, p) => n + p.bytes, 0)
        const start = starts[0]
        const r = w.recipe
        if (r.kind === "rope") {
          jobs.push({ name: w.name, bytes, rope: { graph, part: r.part, dataPath, offset: start } })
          continue
        }
        const names = recipeTensors(r)
        const sources: Array<TensorLocation> = []
        for (const name of names) {
          const at = source.locate(name)
          const where = source.files[0] === undefined ? "the checkpoint" : path.dirname(source.files[0])
          if (at === undefined) return yield* Effect.fail(new CheckpointError({ path: where, message: `tensor '${name}' is missing from the checkpoint in ${where}` }))
          sources.push(at)
        }
        const linear = r.kind === "linear" || r.kind === "int4"
        const [inDim, outDim] = linear || r.kind === "prequantized" ? (w.dims as [number, number]) : [0, 0]
        if (r.kind === "prequantized") {
          const prequantized = { quant: r.quant, modules: r.modules, partOffsets: starts }
          jobs.push({ name: w.name, bytes, task: { kind: "prequantized", dataPath, offset: start, dtype, inDim, outDim, sources, prequantized } })
          continue
        }
        if (linear && (sources.reduce((n, s) => n + s.shape[0], 0) !== outDim || sources.some((s) => s.shape[1] !== inDim))) {
          return yield* Effect.fail(new ConversionError({ message: `initializer ${w.name}: its sources do not make [${inDim}, ${outDim}]` }))
        }
        const importance = r.kind === "int4" ? writeOptions.importance?.get(w.name) : undefined
        const int4 = r.kind === "int4"
          ? { blockSize: r.blockSize, symmetric: r.symmetric, partOffsets: starts, ...(importance === undefined ? {} : { importance }) }
          : undefined
        jobs.push({ name: w.name, bytes, task: { kind: r.kind, dataPath, offset: start, dtype, inDim, outDim, sources, ...(int4 === undefined ? {} : { int4 }) } })
      }
    }

    // Create (truncate) every data file up front; the workers open them for positional writes.
    for (const onnxPath of onnxPaths) {
      const dataPath = `${onnxPath}.data`
      yield* Effect.tryPromise({ try: () => fs.promises.writeFile(dataPath, new Uint8Array(0)), catch: ioError(dataPath, "create") })
    }

    const ropes = new Map<ShardGraph, { cos: Float32Array; sin: Float32Array }>()
    const writeRope = (job: { readonly graph: ShardGraph; readonly part: "cos" | "sin"; readonly dataPath: string; readonly offset: number }) =>
      Effect.tryPromise({
        try: async () => {
          let values = ropes.get(job.graph)
          if (values === undefined) ropes.set(job.graph, values = ropeCache(config, job.graph.options.maxContext))
          const bytes = toBytes(values[job.part], job.graph.options.dtype)
          const handle = await fs.promises.open(job.dataPath, "r+")
          try {
            let done = 0
            while (done < bytes.byteLength) {
              const { bytesWritten } = await handle.write(bytes, done, bytes.byteLength - done, job.offset + done)
              done += bytesWritten
            }
          } finally {
            await handle.close()
          }
          return bytes.byteLength
        },
        catch: ioError(job.dataPath, "write")
      })

    // Memory bound, in MiB: a same-dtype linear holds its output and one source (about twice its size), a
    // same-dtype copy one 64 MiB chunk; a cast also holds float32 values (about three times, to be safe).
    const budget = Math.max(1, Math.floor((writeOptions.memoryBytes ?? defaultMemoryBytes()) / MiB))
    const permits = yield* Semaphore.make(budget)
    const cost = (job: Job): number => {
      let bytes = job.bytes
      if ("task" in job && job.task.kind === "prequantized") {
        // the source tensors (about the packed size) plus the repacked parts and float32 scales
        bytes = 3 * job.bytes
      } else if ("task" in job && job.task.kind === "int4") {
        // float32 rows [N, K] plus the packed parts
        bytes = job.task.inDim * job.task.outDim * 4 + job.bytes
      } else if ("task" in job) {
        const target = job.task.dtype === "float32" ? "F32" : job.task.dtype === "float16" ? "F16" : "BF16"
        const cast = job.task.sources.some((s) => s.dtype !== target)
        bytes = cast ? 3 * job.bytes : job.task.kind === "linear" ? 2 * job.bytes : Math.min(job.bytes, 64 * MiB)
      }
      return Math.min(budget, Math.max(1, Math.ceil(bytes / MiB)))
    }
    yield* Effect.forEach(
      jobs,
      (job) =>
        permits.withPermits(cost(job))(
          Effect.uninterruptible("task" in job ? runner.run(job.task) : writeRope(job.rope)).pipe(
            Effect.tap((bytes) => Effect.sync(() => writeOptions.onTensor?.(job.name, bytes)))
          )
        ),
      { concurrency: runner.threads, discard: true }
    )

    for (const [k, graph] of graphs.entries()) {
      const { options: _options, weights: _weights, ...spec } = graph
      const model = encodeModel({ ...spec, external: externals[k] })
      const onnxPath = onnxPaths[k]
      yield* Effect.uninterruptible(Effect.tryPromise({ try: () => fs.promises.writeFile(onnxPath, model), catch: ioError(onnxPath, "write") }))
    }
  })
