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
}

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
  dtype: Schema.optionalKey(Schema.NullOr(Schema.String))
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

const eosList = (v: number | ReadonlyArray<number> | null | undefined): ReadonlyArray<number> =>
  v == null ? [] : typeof v === "number" ? [v] : v

const normalize = (file: string, json: LlamaConfigJson): LlamaConfig => {
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
    dtype: normalizeDtype(file, json)
  }
}

/**
 * Validates and normalizes a parsed `config.json`. `file` is only used in messages. Pure: no file access.
 */
export const parseLlamaConfig = (json: unknown, file: string): Effect.Effect<LlamaConfig, ModelConfigError> =>
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
          try: () => normalize(file, decoded),
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
    const config = yield* parseLlamaConfig(yield* parseJson(configFile, configText.text), configFile)

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
  return shapes
}
