/**
 * The Hugging Face `config.json` of a Llama 3 / 3.1 / 3.2 checkpoint, normalized into `LlamaConfig`.
 * Accepts both the released form (`rope_theta` and `rope_scaling` at the top level, `torch_dtype`) and the
 * transformers 5 form (`rope_parameters` holding `rope_theta` and the scaling fields, `dtype`), so checkpoints
 * from either era load the same way. Also lists the tensor names and shapes such a model must have.
 */
import { Effect, Schema, SchemaIssue } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { CheckpointError, ModelConfigError } from "../../core/Errors.ts"

export interface LlamaRopeScaling {
  readonly factor: number
  readonly lowFreqFactor: number
  readonly highFreqFactor: number
  readonly originalMaxPositionEmbeddings: number
}

export interface LlamaConfig {
  readonly modelType: "llama"
  readonly vocabSize: number
  readonly hiddenSize: number
  readonly intermediateSize: number
  readonly numLayers: number
  readonly numHeads: number
  readonly numKvHeads: number
  readonly headDim: number
  readonly rmsNormEps: number
  readonly ropeTheta: number
  readonly ropeScaling: null | LlamaRopeScaling
  readonly maxPositionEmbeddings: number
  readonly tieWordEmbeddings: boolean
  readonly bosTokenId: number | null
  readonly eosTokenIds: ReadonlyArray<number>
  readonly dtype: "float32" | "float16" | "bfloat16"
  /**
   * Present when the checkpoint's linear weights are already 4-bit (AWQ GEMM or GPTQ, from `quantization_config`):
   * they are repacked losslessly into MatMulNBits (`CheckpointQuant.ts`) instead of read as float. Absent for float
   * checkpoints (so their content keys are those they had before this field existed).
   */
  readonly quantization?: CheckpointQuant
}

/**
 * A pre-quantized checkpoint, as `quantization_config` describes it (normalized, already checked to be loadable).
 * - `awq`: AutoAWQ's GEMM layout with zero points (`version: "gemm"`, `zero_point: true`).
 * - `gptq`: AutoGPTQ / GPTQModel's layout; `format` `gptq` (v1: zero points stored minus 1) or `gptq_v2` (stored as
 *   they are); `sym` is informational (the zero points are read from `qzeros` either way).
 */
export type CheckpointQuant =
  | { readonly method: "awq"; readonly bits: 4; readonly groupSize: number }
  | { readonly method: "gptq"; readonly bits: 4; readonly groupSize: number; readonly format: "gptq" | "gptq_v2"; readonly sym: boolean }

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const PositiveFinite = Schema.Finite.check(Schema.isGreaterThan(0))
const TokenId = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const TokenIds = Schema.Union([TokenId, Schema.Array(TokenId)])

/** `rope_parameters` (transformers 5) or `rope_scaling` (released checkpoints); older files spell `rope_type` as `type`. */
const RopeJson = Schema.Struct({
  rope_type: Schema.optionalKey(Schema.String),
  type: Schema.optionalKey(Schema.String),
  rope_theta: Schema.optionalKey(PositiveFinite),
  factor: Schema.optionalKey(PositiveFinite),
  low_freq_factor: Schema.optionalKey(PositiveFinite),
  high_freq_factor: Schema.optionalKey(PositiveFinite),
  original_max_position_embeddings: Schema.optionalKey(PositiveInt)
})
type RopeJson = typeof RopeJson.Type

/**
 * `quantization_config` of an AWQ checkpoint (AutoAWQ awq/models/_config.py `to_transformers_dict`: quant_method,
 * zero_point, group_size, bits, version lower-cased, modules_to_not_convert; transformers' AwqConfig reads the same keys).
 */
const AwqConfigJson = Schema.Struct({
  quant_method: Schema.Literal("awq"),
  bits: Schema.Int,
  group_size: Schema.Int,
  zero_point: Schema.optionalKey(Schema.Boolean),
  version: Schema.optionalKey(Schema.String),
  modules_to_not_convert: Schema.optionalKey(Schema.NullOr(Schema.Array(Schema.String)))
})

/**
 * `quantization_config` of a GPTQ checkpoint (AutoGPTQ auto_gptq/quantization/config.py: bits, group_size, desc_act,
 * sym, static_groups, quant_method, checkpoint_format "gptq" | "gptq_v2" | "marlin" | ...; GPTQModel writes the format
 * as `checkpoint_format` or, in newer versions, `format`; transformers' GPTQConfig has `checkpoint_format`).
 */
const GptqConfigJson = Schema.Struct({
  quant_method: Schema.Literal("gptq"),
  bits: Schema.Int,
  group_size: Schema.Int,
  desc_act: Schema.optionalKey(Schema.NullOr(Schema.Boolean)),
  sym: Schema.optionalKey(Schema.NullOr(Schema.Boolean)),
  static_groups: Schema.optionalKey(Schema.NullOr(Schema.Boolean)),
  checkpoint_format: Schema.optionalKey(Schema.NullOr(Schema.String)),
  format: Schema.optionalKey(Schema.NullOr(Schema.String)),
  /** GPTQModel's option to quantize the LM head too. */
  lm_head: Schema.optionalKey(Schema.NullOr(Schema.Boolean))
})

/** Any other `quant_method` (bitsandbytes, fp8, compressed-tensors, ...): decoded only to be refused by name. */
const OtherQuantJson = Schema.Struct({ quant_method: Schema.String.check(Schema.isPattern(/^(?!(awq|gptq)$)/)) })

export const QuantizationConfigJson = Schema.Union([AwqConfigJson, GptqConfigJson, OtherQuantJson])
export type QuantizationConfigJson = typeof QuantizationConfigJson.Type

/** The fields of `config.json` this adapter reads; other keys are ignored. */
export const LlamaConfigJson = Schema.Struct({
  model_type: Schema.String,
  vocab_size: PositiveInt,
  hidden_size: PositiveInt,
  intermediate_size: PositiveInt,
  num_hidden_layers: PositiveInt,
  num_attention_heads: PositiveInt,
  num_key_value_heads: Schema.optionalKey(Schema.NullOr(PositiveInt)),
  head_dim: Schema.optionalKey(Schema.NullOr(PositiveInt)),
  rms_norm_eps: Schema.optionalKey(PositiveFinite),
  rope_theta: Schema.optionalKey(PositiveFinite),
  rope_scaling: Schema.optionalKey(Schema.NullOr(RopeJson)),
  rope_parameters: Schema.optionalKey(Schema.NullOr(RopeJson)),
  max_position_embeddings: Schema.optionalKey(PositiveInt),
  tie_word_embeddings: Schema.optionalKey(Schema.Boolean),
  bos_token_id: Schema.optionalKey(Schema.NullOr(TokenId)),
  eos_token_id: Schema.optionalKey(Schema.NullOr(TokenIds)),
  attention_bias: Schema.optionalKey(Schema.Boolean),
  mlp_bias: Schema.optionalKey(Schema.Boolean),
  hidden_act: Schema.optionalKey(Schema.String),
  torch_dtype: Schema.optionalKey(Schema.NullOr(Schema.String)),
  dtype: Schema.optionalKey(Schema.NullOr(Schema.String)),
  quantization_config: Schema.optionalKey(Schema.NullOr(QuantizationConfigJson))
})
export type LlamaConfigJson = typeof LlamaConfigJson.Type

const GenerationConfigJson = Schema.Struct({ eos_token_id: Schema.optionalKey(Schema.NullOr(TokenIds)) })

const formatIssue = SchemaIssue.makeFormatterStandardSchemaV1()

/** One line for the first issue: the field, what was expected and the value found there. */
const schemaMessage = (error: Schema.SchemaError, input: unknown): string => {
  const first = formatIssue(error.issue).issues[0]
  if (first === undefined) return error.message.replace(/\s*\n\s*/g, " ")
  const keys = (first.path ?? []).map((k) => (typeof k === "object" && k !== null && "key" in k ? k.key : k))
  let found: unknown = input
  for (const k of keys) {
    found = typeof found === "object" && found !== null ? (found as Record<PropertyKey, unknown>)[k] : undefined
  }
  const field = keys.length === 0 ? "(root)" : keys.map(String).join(".")
  const message = first.message.replace(/\s*\n\s*/g, " ")
  return found === undefined ? `field ${field}: ${message}` : `field ${field}: ${message}, found ${JSON.stringify(found)}`
}

// Defaults are those of transformers' LlamaConfig, for fields some configs omit.
const DEFAULT_ROPE_THETA = 10000
const DEFAULT_RMS_NORM_EPS = 1e-6
const DEFAULT_MAX_POSITIONS = 2048

const configError = (file: string, message: string): ModelConfigError => new ModelConfigError({ path: file, message })

const normalizeRope = (
  file: string,
  json: LlamaConfigJson
): { readonly theta: number; readonly scaling: LlamaRopeScaling | null } => {
  const field = json.rope_parameters != null ? "rope_parameters" : "rope_scaling"
  const rope: RopeJson | null = json.rope_parameters ?? json.rope_scaling ?? null
  const theta = rope?.rope_theta ?? json.rope_theta ?? DEFAULT_ROPE_THETA
  const ropeType = rope?.rope_type ?? rope?.type ?? "default"
  if (rope === null || ropeType === "default") return { theta, scaling: null }
  if (ropeType !== "llama3") {
    throw configError(file, `${field}.rope_type is '${ropeType}' in ${file}: the Llama 3 adapter supports 'default' and 'llama3'`)
  }
  const need = (key: "factor" | "low_freq_factor" | "high_freq_factor" | "original_max_position_embeddings"): number => {
    const v = rope[key]
    if (v === undefined) throw configError(file, `${field}.${key} is missing in ${file}: rope_type 'llama3' needs it`)
    return v
  }
  const scaling: LlamaRopeScaling = {
    factor: need("factor"),
    lowFreqFactor: need("low_freq_factor"),
    highFreqFactor: need("high_freq_factor"),
    originalMaxPositionEmbeddings: need("original_max_position_embeddings")
  }
  if (scaling.highFreqFactor <= scaling.lowFreqFactor) {
    throw configError(
      file,
      `${field}.high_freq_factor (${scaling.highFreqFactor}) must exceed low_freq_factor (${scaling.lowFreqFactor}) in ${file}`
    )
  }
  return { theta, scaling }
}

const normalizeDtype = (file: string, json: LlamaConfigJson): LlamaConfig["dtype"] => {
  const raw = json.dtype ?? json.torch_dtype ?? "float32"
  if (raw === "float32" || raw === "float16" || raw === "bfloat16") return raw
  throw configError(file, `dtype is '${raw}' in ${file}: expected float32, float16 or bfloat16`)
}

/**
 * Block sizes MatMulNBits runs with: the operator asks for a power of two of at least 16 (ONNX Runtime
 * docs/ContribOperators.md, attribute block_size), and ORT 1.29's CPU kernel accepts only 16, 32, 64, 128 and 256
 * (contrib_ops/cpu/quantization/matmul_nbits.cc:132 refused 512 and 1024 when a session was created here). Each group
 * of a pre-quantized checkpoint becomes one block, so its group size must be one of these.
 */
export const matMulNBitsBlocks: ReadonlyArray<number> = [16, 32, 64, 128, 256]

/** A one-line summary for logs: `AWQ 4-bit g128`, `GPTQ v1 4-bit g128 sym`. */
export const describeCheckpointQuant = (q: CheckpointQuant): string =>
  q.method === "awq" ? `AWQ 4-bit g${q.groupSize}` : `GPTQ ${q.format === "gptq" ? "v1" : "v2"} 4-bit g${q.groupSize}${q.sym ? " sym" : ""}`

/** Checks `quantization_config` and normalizes it; throws a one-line ModelConfigError naming what is unsupported and why. */
const normalizeQuantization = (file: string, q: QuantizationConfigJson, where = `quantization_config in ${file}`): CheckpointQuant => {
  if (q.quant_method !== "awq" && q.quant_method !== "gptq") {
    throw configError(file, `${where}: quant_method '${q.quant_method}' is not supported: Chorus loads AWQ (GEMM) and GPTQ 4-bit checkpoints, or float ones`)
  }
  const method = q.quant_method
  if (!("bits" in q)) throw configError(file, `${where}: not a valid ${method} configuration`) // unreachable: the union decodes awq/gptq strictly
  if (q.bits !== 4) {
    throw configError(file, `${where}: bits is ${q.bits}: only 4-bit ${method.toUpperCase()} checkpoints map onto ONNX Runtime's MatMulNBits without requantizing`)
  }
  if (q.group_size === -1) {
    throw configError(file, `${where}: group_size is -1 (one group per input row): MatMulNBits needs one block size for every linear, and Llama's input dimensions differ; use a checkpoint quantized with groups (e.g. 128)`)
  }
  if (!matMulNBitsBlocks.includes(q.group_size)) {
    throw configError(file, `${where}: group_size ${q.group_size} cannot be a MatMulNBits block size (ONNX Runtime 1.29 runs 16, 32, 64, 128 and 256), and each group becomes one block`)
  }
  if (q.quant_method === "awq") {
    const version = (q.version ?? "gemm").toLowerCase()
    if (version !== "gemm") {
      throw configError(file, `${where}: AWQ version '${q.version}' is not supported: only the GEMM layout (qweight [in, out/8]) is repacked; re-export the model as GEMM`)
    }
    if (q.zero_point === false) {
      throw configError(file, `${where}: AWQ with zero_point false is not supported: AutoAWQ's GEMM layout always stores zero points (WQLinear_GEMM.from_linear asserts them)`)
    }
    if (q.modules_to_not_convert != null) {
      const linear = q.modules_to_not_convert.find((m) => /(q|k|v|o|gate|up|down)_proj/.test(m))
      if (linear !== undefined) {
        throw configError(file, `${where}: modules_to_not_convert lists '${linear}': checkpoints that leave some decoder linears float are not supported`)
      }
    }
    return { method: "awq", bits: 4, groupSize: q.group_size }
  }
  if (q.desc_act === true) {
    throw configError(file, `${where}: desc_act is true (act-order): its g_idx permutes the input rows across groups, which MatMulNBits' contiguous blocks cannot express without requantizing; use a checkpoint made with desc_act false`)
  }
  if (q.lm_head === true) {
    throw configError(file, `${where}: lm_head is true (a quantized LM head): Chorus keeps the LM head float and reads it as lm_head.weight; use a checkpoint with lm_head false`)
  }
  const format = q.checkpoint_format ?? q.format ?? "gptq"
  if (format !== "gptq" && format !== "gptq_v2") {
    throw configError(file, `${where}: GPTQ checkpoint format '${format}' is not supported: Chorus repacks 'gptq' (v1) and 'gptq_v2'`)
  }
  return { method: "gptq", bits: 4, groupSize: q.group_size, format, sym: q.sym ?? true }
}

const eosList = (v: number | ReadonlyArray<number> | null | undefined): ReadonlyArray<number> =>
  v == null ? [] : typeof v === "number" ? [v] : v

const normalize = (file: string, json: LlamaConfigJson, quantSource?: string): LlamaConfig => {
  if (json.attention_bias === true) throw configError(file, `attention_bias is true in ${file}: unsupported, expected false`)
  if (json.mlp_bias === true) throw configError(file, `mlp_bias is true in ${file}: unsupported, expected false`)
  if (json.hidden_act !== undefined && json.hidden_act !== "silu") {
    throw configError(file, `hidden_act is '${json.hidden_act}' in ${file}: the Llama 3 adapter supports 'silu'`)
  }
  const numHeads = json.num_attention_heads
  const numKvHeads = json.num_key_value_heads ?? numHeads
  if (numHeads % numKvHeads !== 0) {
    throw configError(
      file,
      `num_attention_heads (${numHeads}) is not a multiple of num_key_value_heads (${numKvHeads}) in ${file}`
    )
  }
  if (json.head_dim == null && json.hidden_size % numHeads !== 0) {
    throw configError(
      file,
      `hidden_size (${json.hidden_size}) is not a multiple of num_attention_heads (${numHeads}) in ${file} and head_dim is not given`
    )
  }
  const headDim = json.head_dim ?? json.hidden_size / numHeads
  if (headDim % 2 !== 0) throw configError(file, `head_dim is ${headDim} in ${file}: RoPE needs an even head_dim`)
  const rope = normalizeRope(file, json)
  const quantization = json.quantization_config == null ? undefined : normalizeQuantization(file, json.quantization_config, quantSource)
  return {
    modelType: "llama",
    vocabSize: json.vocab_size,
    hiddenSize: json.hidden_size,
    intermediateSize: json.intermediate_size,
    numLayers: json.num_hidden_layers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: json.rms_norm_eps ?? DEFAULT_RMS_NORM_EPS,
    ropeTheta: rope.theta,
    ropeScaling: rope.scaling,
    maxPositionEmbeddings: json.max_position_embeddings ?? DEFAULT_MAX_POSITIONS,
    tieWordEmbeddings: json.tie_word_embeddings ?? false,
    bosTokenId: json.bos_token_id ?? null,
    eosTokenIds: [...new Set(eosList(json.eos_token_id))],
    dtype: normalizeDtype(file, json),
    ...(quantization === undefined ? {} : { quantization })
  }
}

/**
 * Validates and normalizes a parsed `config.json`. `file` is only used in messages. Pure: no file access.
 */
export const parseLlamaConfig = (json: unknown, file: string, quantSource?: string): Effect.Effect<LlamaConfig, ModelConfigError> =>
  Effect.suspend(() => {
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      return Effect.fail(configError(file, `${file} is not a JSON object`))
    }
    // Checked before the schema so that a GPT-2 or Mistral config says what it is rather than which field is odd.
    const modelType = (json as { model_type?: unknown }).model_type
    if (modelType !== "llama") {
      return Effect.fail(
        configError(
          file,
          modelType === undefined
            ? `model_type is missing in ${file}: the Llama 3 adapter supports 'llama'`
            : `unknown model_type '${String(modelType)}' in ${file}: the Llama 3 adapter supports 'llama'`
        )
      )
    }
    return Schema.decodeUnknownEffect(LlamaConfigJson)(json).pipe(
      Effect.mapError((e) => configError(file, `invalid ${path.basename(file)} at ${file}: ${schemaMessage(e, json)}`)),
      Effect.flatMap((decoded) =>
        Effect.try({
          try: () => normalize(file, decoded, quantSource),
          catch: (e) => (e instanceof ModelConfigError ? e : configError(file, String(e)))
        })
      )
    )
  })

type ReadResult = { readonly kind: "missing" } | { readonly kind: "text"; readonly text: string }

const readOptional = (file: string): Effect.Effect<ReadResult, CheckpointError> =>
  Effect.tryPromise({
    try: async (): Promise<ReadResult> => {
      try {
        return { kind: "text", text: await fs.promises.readFile(file, "utf8") }
      } catch (cause) {
        if ((cause as { code?: unknown }).code === "ENOENT") return { kind: "missing" }
        throw cause
      }
    },
    catch: (cause) =>
      new CheckpointError({ path: file, message: `cannot read ${file}: ${cause instanceof Error ? cause.message : String(cause)}` })
  })

const parseJson = (file: string, text: string): Effect.Effect<unknown, ModelConfigError> =>
  Effect.try({
    try: (): unknown => JSON.parse(text),
    catch: (e) => configError(file, `${file} is not valid JSON: ${e instanceof Error ? e.message : String(e)}`)
  })

/**
 * Loads `config.json` from a checkpoint folder, merging the `eos_token_id`s of `generation_config.json`
 * (Llama 3 instruct models stop on `<|eot_id|>`, which only the generation config lists).
 */
export const loadLlamaConfig = (dir: string): Effect.Effect<LlamaConfig, CheckpointError | ModelConfigError> =>
  Effect.gen(function*() {
    const isDir = yield* Effect.promise(() =>
      fs.promises.stat(dir).then((s) => s.isDirectory(), () => false)
    )
    if (!isDir) return yield* Effect.fail(new CheckpointError({ path: dir, message: `model folder not found: ${dir}` }))
    const configFile = path.join(dir, "config.json")
    const configText = yield* readOptional(configFile)
    if (configText.kind === "missing") {
      return yield* Effect.fail(new CheckpointError({ path: configFile, message: `config.json not found in ${dir}` }))
    }
    let json = yield* parseJson(configFile, configText.text)
    // Older AutoGPTQ checkpoints keep their settings in quantize_config.json only (AutoGPTQ
    // auto_gptq/quantization/config.py: BaseQuantizeConfig.save_pretrained writes that file; quant_method may be absent).
    let quantSource: string | undefined
    const legacyFile = path.join(dir, "quantize_config.json")
    if (typeof json === "object" && json !== null && (json as { quantization_config?: unknown }).quantization_config == null) {
      const legacy = yield* readOptional(legacyFile)
      if (legacy.kind === "text") {
        const q = yield* parseJson(legacyFile, legacy.text)
        if (typeof q === "object" && q !== null && !Array.isArray(q)) {
          json = { ...json, quantization_config: { quant_method: "gptq", ...q } }
          quantSource = legacyFile
        }
      }
    }
    const config = yield* parseLlamaConfig(json, configFile, quantSource)

    const genFile = path.join(dir, "generation_config.json")
    const genText = yield* readOptional(genFile)
    if (genText.kind === "missing") return config
    const genJson = yield* parseJson(genFile, genText.text)
    const gen = yield* Schema.decodeUnknownEffect(GenerationConfigJson)(genJson).pipe(
      Effect.mapError((e) => configError(genFile, `invalid generation_config.json at ${genFile}: ${schemaMessage(e, genJson)}`))
    )
    return { ...config, eosTokenIds: [...new Set([...config.eosTokenIds, ...eosList(gen.eos_token_id)])] }
  })

/**
 * Every Hugging Face tensor name of the model with its shape ([out, in] for linear weights, as stored).
 * `lm_head.weight` is absent when the embeddings are tied.
 */
export const expectedTensorShapes = (config: LlamaConfig): Map<string, Array<number>> => {
  const { vocabSize: V, hiddenSize: H, intermediateSize: I, numHeads, numKvHeads, headDim } = config
  const shapes = new Map<string, Array<number>>()
  shapes.set("model.embed_tokens.weight", [V, H])
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}`
    shapes.set(`${p}.input_layernorm.weight`, [H])
    shapes.set(`${p}.self_attn.q_proj.weight`, [numHeads * headDim, H])
    shapes.set(`${p}.self_attn.k_proj.weight`, [numKvHeads * headDim, H])
    shapes.set(`${p}.self_attn.v_proj.weight`, [numKvHeads * headDim, H])
    shapes.set(`${p}.self_attn.o_proj.weight`, [H, numHeads * headDim])
    shapes.set(`${p}.post_attention_layernorm.weight`, [H])
    shapes.set(`${p}.mlp.gate_proj.weight`, [I, H])
    shapes.set(`${p}.mlp.up_proj.weight`, [I, H])
    shapes.set(`${p}.mlp.down_proj.weight`, [H, I])
  }
  shapes.set("model.norm.weight", [H])
  if (!config.tieWordEmbeddings) shapes.set("lm_head.weight", [V, H])
  const q = config.quantization
  if (q === undefined) return shapes
  // A pre-quantized checkpoint stores each decoder linear `<module>.weight` [out, in] as packed 4-bit tensors instead
  // (CheckpointQuant.ts `quantizedTensorShapes` cites where each shape comes from); embeddings, norms and the LM head
  // stay float.
  for (const [name, shape] of [...shapes]) {
    const m = QUANTIZED_LINEAR.exec(name)
    if (m === null) continue
    shapes.delete(name)
    for (const [suffix, s] of quantizedTensorShapes(q, shape[0], shape[1])) shapes.set(`${m[1]}.${suffix}`, s)
  }
  return shapes
}

const QUANTIZED_LINEAR = /^(model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj))\.weight$/

/**
 * The tensors an AWQ / GPTQ linear of logical shape `[out, in]` is stored as, with their shapes:
 * - AWQ GEMM (AutoAWQ awq/modules/linear/gemm.py, WQLinear_GEMM.__init__): `qweight` int32 `[in, out / 8]`,
 *   `qzeros` int32 `[in / group, out / 8]`, `scales` float16 `[in / group, out]`.
 * - GPTQ (AutoGPTQ auto_gptq/nn_modules/qlinear/qlinear_cuda.py, QuantLinear.__init__): `qweight` int32
 *   `[in / 32 * bits, out]`, `qzeros` int32 `[ceil(in / group), out / 32 * bits]`, `scales` `[ceil(in / group), out]`,
 *   `g_idx` int32 `[in]`.
 */
export const quantizedTensorShapes = (q: CheckpointQuant, out: number, inDim: number): Array<readonly [string, Array<number>]> => {
  const groups = Math.ceil(inDim / q.groupSize)
  return q.method === "awq"
    ? [["qweight", [inDim, out / 8]], ["qzeros", [groups, out / 8]], ["scales", [groups, out]]]
    : [["qweight", [inDim / 8, out]], ["qzeros", [groups, out / 8]], ["scales", [groups, out]], ["g_idx", [inDim]]]
}
