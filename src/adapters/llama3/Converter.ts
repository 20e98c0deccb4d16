/**
 * Converts a Hugging Face Llama 3 checkpoint into pipeline-shard ONNX graphs plus a manifest, and caches the
 * result by content so that a restart with the same checkpoint and options loads at once.
 *
 * Cache layout (`$CHORUS_CACHE` or `~/.cache/chorus`): `converted/<key>/{chorus-model.json, shard-k.onnx,
 * shard-k.onnx.data}` and `hashes.json` (file hashes memoized by realpath + size + mtime, because hashing a
 * 16 GB checkpoint on every start is too slow). A conversion writes into a temporary sibling folder and renames
 * it at the end; any failure or interruption removes the temporary folder, so the cache never holds half a model.
 */
import { Effect, Schema } from "effect"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { chorusCacheDir, writeCacheFile, writeCacheFolder, writeCacheFolderNamedBy } from "../../checkpoint/CacheEntry.ts"
import { DIGEST_SCHEME, digestFiles } from "../../checkpoint/FileDigest.ts"
import { openCheckpoint } from "../../checkpoint/Safetensors.ts"
import type { TensorSource } from "../../checkpoint/TensorSource.ts"
import { type CheckpointError, ConversionError, type ModelConfigError } from "../../core/Errors.ts"
import { type CalibrationTokens, calibrationTokens, collectActivationStats } from "./ActivationStats.ts"
import { defaultCalibrationText } from "./CalibrationText.ts"
import { defaultConvertThreads, makeConvertPool } from "./ConvertPool.ts"
import { type AttentionLayout, buildShardGraph, graphTensors, type ModelDType, type ShardGraph, validateTensors, weightBytes, writeShard, writeShards } from "./GraphBuilder.ts"
import { type LlamaConfig, loadLlamaConfig } from "./LlamaConfig.ts"
import { Int4Settings } from "./Quantization.ts"

/** Bumped whenever the graph layout changes: it is part of the cache key, so old conversions are not reused. */
export const FORMAT_VERSION = 7
export const MANIFEST_FILE = "chorus-model.json"
export const DEFAULT_MAX_CONTEXT = 8192

const Int = Schema.Int
const RopeScalingSchema = Schema.Struct({
  factor: Schema.Finite,
  lowFreqFactor: Schema.Finite,
  highFreqFactor: Schema.Finite,
  originalMaxPositionEmbeddings: Int
})

/** `LlamaConfig.quantization`: the AWQ / GPTQ layout of a pre-quantized checkpoint. */
const CheckpointQuantSchema = Schema.Union([
  Schema.Struct({ method: Schema.Literal("awq"), bits: Schema.Literal(4), groupSize: Int }),
  Schema.Struct({ method: Schema.Literal("gptq"), bits: Schema.Literal(4), groupSize: Int, format: Schema.Literals(["gptq", "gptq_v2"]), sym: Schema.Boolean })
])

/** The normalized `LlamaConfig`, as stored in the manifest. */
export const LlamaConfigSchema = Schema.Struct({
  modelType: Schema.Literal("llama"),
  vocabSize: Int,
  hiddenSize: Int,
  intermediateSize: Int,
  numLayers: Int,
  numHeads: Int,
  numKvHeads: Int,
  headDim: Int,
  rmsNormEps: Schema.Finite,
  ropeTheta: Schema.Finite,
  ropeScaling: Schema.NullOr(RopeScalingSchema),
  maxPositionEmbeddings: Int,
  tieWordEmbeddings: Schema.Boolean,
  bosTokenId: Schema.NullOr(Int),
  eosTokenIds: Schema.Array(Int),
  dtype: Schema.Literals(["float32", "float16", "bfloat16"]),
  /** Present for AWQ / GPTQ checkpoints (their linears are repacked into MatMulNBits); part of the content key. */
  quantization: Schema.optionalKey(CheckpointQuantSchema)
})

export const ShardEntry = Schema.Struct({
  /** Graph file name, relative to the manifest's folder; its weights are in `<file>.data`. */
  file: Schema.String,
  layers: Schema.Tuple([Int, Int]),
  first: Schema.Boolean,
  last: Schema.Boolean
})
export type ShardEntry = typeof ShardEntry.Type

export const ModelManifest = Schema.Struct({
  formatVersion: Schema.Literal(FORMAT_VERSION),
  /** Content key: sha256 over config.json, the checkpoint files' digests (`FileDigest.ts`) and the options. */
  key: Schema.String,
  sourceDir: Schema.String,
  config: LlamaConfigSchema,
  dtype: Schema.Literals(["float32", "float16", "bfloat16"]),
  maxContext: Int,
  /** Attention layout of the graphs (GraphBuilder's `AttentionLayout`); absent in manifests of earlier conversions. */
  attention: Schema.optional(Schema.Literals(["rotary-outside", "fused", "paged"])),
  /** Weight-only quantization (MatMulNBits); absent: float weights. */
  quantize: Schema.optional(Int4Settings),
  /** With `quantize.search` `activation-clip`: the calibration tokens used (count and sha256, also in the key). */
  calibration: Schema.optional(Schema.Struct({ tokens: Int, digest: Schema.String })),
  shards: Schema.Array(ShardEntry)
})
export type ModelManifest = typeof ModelManifest.Type

export interface ConvertedModel {
  /** Folder holding the manifest and the shards. */
  readonly dir: string
  readonly manifest: ModelManifest
  /** Absolute path of each shard's `.onnx`, in pipeline order. */
  readonly shardPaths: ReadonlyArray<string>
  /** True when the conversion was found in the cache. */
  readonly cached: boolean
}

export interface ConvertProgress {
  readonly bytesDone: number
  readonly bytesTotal: number
  /** The initializer just written. */
  readonly tensor: string
}

export interface ConvertOptions {
  readonly modelDir: string
  /** Write here instead of the cache (no content-key lookup; the folder is created if needed). */
  readonly outDir?: string
  readonly dtype: ModelDType
  readonly shards: number
  /**
   * Layers per shard (`shards` entries, summing to the model's layers), e.g. from `planShardsByMemory` for GPUs of
   * different sizes. Default: equal counts (`planShards`).
   */
  readonly layerSplit?: ReadonlyArray<number>
  /** Defaults to min(max_position_embeddings, 8192). */
  readonly maxContext?: number
  /** `rotary-outside` (default, for onnxruntime-node), `fused` (device runtime, row cache) or `paged` (device runtime, block pool; float16/bfloat16). */
  readonly attention?: AttentionLayout
  /** 4-bit weights through MatMulNBits (`Quantization.ts`); omitted: float weights. */
  readonly quantize?: Int4Settings
  /**
   * With `quantize.search` `activation-clip`: the text whose activations weight the search (`ActivationStats.ts`);
   * default: the built-in one (`CalibrationText.ts`). Ignored otherwise.
   */
  readonly calibrationText?: string
  readonly onProgress?: (progress: ConvertProgress) => void
  /**
   * Conversion worker threads (default: `defaultConvertThreads()`, one per core, at most 16). `0` runs the
   * sequential path on the main thread (one tensor at a time; the reference the parallel path matches byte for byte).
   */
  readonly threads?: number
}

export { chorusCacheDir } from "../../checkpoint/CacheEntry.ts"

/**
 * Splits `numLayers` decoder layers into `n` contiguous `[l0, l1)` ranges whose sizes differ by at most one
 * (earlier shards take the extra layers: the last one also carries the LM head). Throws a RangeError for an
 * `n` outside `1..numLayers`.
 */
export const planShards = (numLayers: number, n: number): Array<readonly [number, number]> => {
  if (!Number.isInteger(n) || n < 1 || n > numLayers) {
    throw new RangeError(`shards must be an integer from 1 to ${numLayers} (the number of layers), found ${n}`)
  }
  const base = Math.floor(numLayers / n)
  const extra = numLayers % n
  const ranges: Array<readonly [number, number]> = []
  let l0 = 0
  for (let k = 0; k < n; k++) {
    const l1 = l0 + base + (k < extra ? 1 : 0)
    ranges.push([l0, l1])
    l0 = l1
  }
  return ranges
}

const message = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))
const conversionError = (what: string) => (cause: unknown) => new ConversionError({ message: `${what}: ${message(cause)}` })

/** Contiguous `[l0, l1)` ranges from layer counts per shard. */
export const rangesOf = (layersPerShard: ReadonlyArray<number>): Array<readonly [number, number]> => {
  const ranges: Array<readonly [number, number]> = []
  let l0 = 0
  for (const n of layersPerShard) {
    ranges.push([l0, l0 + n])
    l0 += n
  }
  return ranges
}

/** The ranges of an explicit split: `n` positive layer counts summing to `numLayers`, or a RangeError saying why not. */
export const splitRanges = (numLayers: number, n: number, layers: ReadonlyArray<number>): Array<readonly [number, number]> => {
  if (layers.length !== n) throw new RangeError(`a layer split for ${n} shard(s) needs ${n} counts, found ${layers.length} (${layers.join(",")})`)
  if (layers.some((l) => !Number.isInteger(l) || l < 1)) throw new RangeError(`every shard needs at least one layer, found ${layers.join(",")}`)
  const sum = layers.reduce((a, b) => a + b, 0)
  if (sum !== numLayers) throw new RangeError(`a layer split must add up to the model's ${numLayers} layers, found ${layers.join(" + ")} = ${sum}`)
  return rangesOf(layers)
}

// ---------------------------------------------------------------------------------------------- content key

// `digest` is `<scheme>:<hex>` (FileDigest.ts); entries of another scheme are hashed again.
const HashMemo = Schema.Record(Schema.String, Schema.Struct({ size: Schema.Number, mtimeMs: Schema.Number, digest: Schema.String }))
type HashMemo = typeof HashMemo.Type

const readMemo = async (file: string): Promise<Record<string, HashMemo[string]>> => {
  try {
    const decoded = Schema.decodeUnknownExit(HashMemo)(JSON.parse(await fs.promises.readFile(file, "utf8")))
    return decoded._tag === "Success" ? { ...decoded.value } : {}
  } catch {
    return {} // missing, corrupt or of an older layout: rehash
  }
}

/**
 * The content digest of each file (`FileDigest.ts`, every core), reusing `<cache>/hashes.json` entries whose
 * realpath, size and mtime still match, so only a first start hashes.
 */
function hashFiles(cacheDir: string, files: ReadonlyArray<string>, memoOnly: true): Effect.Effect<Array<string> | undefined, ConversionError>
function hashFiles(cacheDir: string, files: ReadonlyArray<string>): Effect.Effect<Array<string>, ConversionError>
function hashFiles(cacheDir: string, files: ReadonlyArray<string>, memoOnly = false): Effect.Effect<Array<string> | undefined, ConversionError> {
  return Effect.gen(function*() {
    const memoFile = path.join(cacheDir, "hashes.json")
    const fail = conversionError(`cannot hash the checkpoint files (hash memo in ${memoFile})`)
    const { memo, entries } = yield* Effect.tryPromise({
      try: async () => {
        const memo = await readMemo(memoFile)
        const entries = await Promise.all(files.map(async (file) => {
          const real = await fs.promises.realpath(file)
          const stat = await fs.promises.stat(real)
          const hit = memo[real]
          const fresh = hit !== undefined && hit.size === stat.size && hit.mtimeMs === stat.mtimeMs && hit.digest.startsWith(`${DIGEST_SCHEME}:`)
          return { real, size: stat.size, mtimeMs: stat.mtimeMs, digest: fresh ? hit.digest : undefined }
        }))
        return { memo, entries }
      },
      catch: fail
    })
    const missing = [...new Set(entries.filter((e) => e.digest === undefined).map((e) => e.real))]
    if (missing.length === 0) return entries.map((e) => e.digest!)
    if (memoOnly) return undefined
    const t0 = performance.now()
    const digests = yield* digestFiles(missing).pipe(Effect.mapError(fail))
    const bytes = entries.filter((e) => e.digest === undefined).reduce((n, e) => n + e.size, 0)
    yield* Effect.logInfo(`chorus: content digests of ${missing.length} checkpoint file(s), ${(bytes / 1e9).toFixed(2)} GB, in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    const byFile = new Map(missing.map((f, i) => [f, digests[i]!]))
    for (const e of entries) if (e.digest === undefined) memo[e.real] = { size: e.size, mtimeMs: e.mtimeMs, digest: byFile.get(e.real)! }
    yield* Effect.tryPromise({
      try: async () => {
        // Forget files that are gone (deleted checkpoints, temporary copies) so the memo does not grow forever.
        for (const file of Object.keys(memo)) if (!fs.existsSync(file)) delete memo[file]
        await writeCacheFile(memoFile, JSON.stringify(memo, null, 1))
      },
      catch: fail
    })
    return entries.map((e) => e.digest ?? byFile.get(e.real)!)
  })
}

interface KeyInput {
  readonly cacheDir: string
  readonly modelDir: string
  readonly files: ReadonlyArray<string>
  readonly config: LlamaConfig
  readonly dtype: ModelDType
  readonly shards: number
  readonly layerSplit: ReadonlyArray<number> | undefined
  readonly maxContext: number
  readonly attention: AttentionLayout
  readonly quantize: Int4Settings | undefined
  /** Digest of the calibration tokens, with the activation-weighted search. */
  readonly calibration: string | undefined
}

const withoutSearch = ({ search: _search, ...rest }: Int4Settings) => rest

/** The conversion's cache key; with `memoOnly`, undefined unless every file's digest is in the hash memo (no hashing). */
function contentKey(k: KeyInput, memoOnly: true): Effect.Effect<string | undefined, ConversionError>
function contentKey(k: KeyInput): Effect.Effect<string, ConversionError>
function contentKey(k: KeyInput, memoOnly = false): Effect.Effect<string | undefined, ConversionError> {
  return Effect.gen(function*() {
    const configFile = path.join(k.modelDir, "config.json")
    const generationFile = path.join(k.modelDir, "generation_config.json")
    const extra = fs.existsSync(generationFile) ? [generationFile] : []
    const sources = [...new Set([configFile, ...extra, ...k.files])]
    const hashes = memoOnly ? yield* hashFiles(k.cacheDir, sources, true) : yield* hashFiles(k.cacheDir, sources)
    if (hashes === undefined) return undefined
    const material = JSON.stringify({
      formatVersion: FORMAT_VERSION,
      dtype: k.dtype,
      shards: k.shards,
      ...(k.layerSplit === undefined ? {} : { layerSplit: k.layerSplit }),
      maxContext: k.maxContext,
      attention: k.attention,
      // Only when set: float conversions keep the keys they had before quantization existed (no needless reconversion),
      // and an int4 conversion of the same checkpoint gets a key of its own, so both coexist in the cache.
      // `search` only when it is not `none`: int4 conversions without the search keep the keys they had before it existed.
      ...(k.quantize === undefined ? {} : { quantize: k.quantize.search === "none" ? withoutSearch(k.quantize) : k.quantize }),
      ...(k.calibration === undefined ? {} : { calibration: k.calibration }),
      // The normalized config carries an AWQ / GPTQ checkpoint's `quantization` (and config.json's own hash is in
      // `files`), so a pre-quantized checkpoint never shares a key with a float one.
      config: k.config,
      files: sources.map((f, i) => [path.basename(f), hashes[i]])
    })
    return crypto.createHash("sha256").update(material).digest("hex")
  })
}

// ---------------------------------------------------------------------------------------------- manifest

/** Reads and validates `chorus-model.json` in `dir` and checks that every shard file is there. */
export const loadConvertedModel = (dir: string): Effect.Effect<ConvertedModel, ConversionError> =>
  Effect.gen(function*() {
    const file = path.join(dir, MANIFEST_FILE)
    const text = yield* Effect.tryPromise({
      try: () => fs.promises.readFile(file, "utf8"),
      catch: conversionError(`cannot read the converted-model manifest ${file}`)
    })
    const json = yield* Effect.try({ try: (): unknown => JSON.parse(text), catch: conversionError(`${file} is not valid JSON`) })
    const manifest = yield* Schema.decodeUnknownEffect(ModelManifest)(json).pipe(
      Effect.mapError((e) => new ConversionError({ message: `invalid manifest ${file}: ${e.message.replace(/\s*\n\s*/g, " ")}` }))
    )
    const shardPaths = manifest.shards.map((s) => path.join(dir, s.file))
    for (const p of shardPaths.flatMap((p) => [p, `${p}.data`])) {
      if (!fs.existsSync(p)) return yield* Effect.fail(new ConversionError({ message: `converted model in ${dir} is incomplete: ${p} is missing` }))
    }
    return { dir, manifest, shardPaths, cached: false }
  })

// ---------------------------------------------------------------------------------------------- conversion

interface Plan {
  readonly config: LlamaConfig
  readonly graphs: ReadonlyArray<ShardGraph>
}

/** Bytes of the shards' external data files. */
const dataBytes = (graphs: ReadonlyArray<ShardGraph>): number =>
  graphs.reduce((n, g) => n + g.weights.reduce((m, w) => m + weightBytes(w, g.options.dtype), 0), 0)

/** The manifest, written last: a folder with it is complete. */
const writeManifest = (dir: string, manifest: ModelManifest): Effect.Effect<void, ConversionError> => {
  const text = JSON.stringify(Schema.encodeSync(ModelManifest)(manifest), null, 2)
  return Effect.uninterruptible(Effect.tryPromise({
    try: () => fs.promises.writeFile(path.join(dir, MANIFEST_FILE), text),
    catch: conversionError(`cannot write ${path.join(dir, MANIFEST_FILE)}`)
  }))
}

/** Writes every shard (graph and data) into `dir` (which exists) as `files` (one `.onnx` name per shard). */
const writeShardFiles = (
  dir: string,
  plan: Plan,
  files: ReadonlyArray<string>,
  source: TensorSource,
  onProgress: ConvertOptions["onProgress"],
  threads: number,
  importanceOf: Effect.Effect<ReadonlyMap<string, Float32Array> | undefined, CheckpointError | ModelConfigError | ConversionError>
): Effect.Effect<void, CheckpointError | ModelConfigError | ConversionError> =>
  Effect.gen(function*() {
    const importance = yield* importanceOf
    const bytesTotal = dataBytes(plan.graphs)
    let bytesDone = 0
    const onTensor = (tensor: string, bytes: number) => {
      bytesDone += bytes
      onProgress?.({ bytesDone, bytesTotal, tensor })
    }
    const onnxPaths = files.map((f) => path.join(dir, f))
    if (threads === 0) {
      for (const [k, graph] of plan.graphs.entries()) yield* writeShard(source, plan.config, graph, onnxPaths[k], { onTensor, ...(importance === undefined ? {} : { importance }) })
    } else {
      yield* Effect.scoped(
        Effect.flatMap(makeConvertPool(threads), (pool) => writeShards(source, plan.config, plan.graphs, onnxPaths, pool, { onTensor, ...(importance === undefined ? {} : { importance }) }))
      )
    }
  })

/**
 * Converts `modelDir` into `shards` ONNX shard graphs (or finds the conversion in the cache). Shapes of every
 * tensor are checked before anything is written.
 */
export const convertCheckpoint = (
  options: ConvertOptions
): Effect.Effect<ConvertedModel, CheckpointError | ModelConfigError | ConversionError> =>
  Effect.gen(function*() {
    const modelDir = path.resolve(options.modelDir)
    const config = yield* loadLlamaConfig(modelDir)
    const maxContext = options.maxContext ?? Math.min(config.maxPositionEmbeddings, DEFAULT_MAX_CONTEXT)
    if (!Number.isInteger(maxContext) || maxContext < 1 || maxContext > config.maxPositionEmbeddings) {
      return yield* Effect.fail(
        new ConversionError({
          message: `maxContext must be an integer from 1 to ${config.maxPositionEmbeddings} (max_position_embeddings in ${path.join(modelDir, "config.json")}), found ${maxContext}`
        })
      )
    }
    const ranges = yield* Effect.try({
      try: () => (options.layerSplit === undefined ? planShards(config.numLayers, options.shards) : splitRanges(config.numLayers, options.shards, options.layerSplit)),
      catch: conversionError(`cannot split ${modelDir}`)
    })
    // Only a split other than the equal one is part of the key, so equal splits keep the keys they always had.
    const equal = planShards(config.numLayers, options.shards)
    const layerSplit = ranges.some((r, i) => r[0] !== equal[i]![0] || r[1] !== equal[i]![1]) ? ranges.map(([l0, l1]) => l1 - l0) : undefined
    const attention = options.attention ?? "rotary-outside"
    const threads = options.threads ?? defaultConvertThreads()
    if (!Number.isInteger(threads) || threads < 0) {
      return yield* Effect.fail(new ConversionError({ message: `conversion threads (the threads option, else CHORUS_CONVERT_THREADS) must be a non-negative integer, found ${threads}` }))
    }
    const quantize = options.quantize
    const graphs = yield* Effect.try({
      try: () => ranges.map((layers) => buildShardGraph(config, { layers, dtype: options.dtype, maxContext, attention, ...(quantize === undefined ? {} : { quantize }) })),
      catch: conversionError(`cannot build the graphs of ${modelDir}`)
    })
    const source = yield* openCheckpoint(modelDir)
    yield* validateTensors(source, config, graphTensors(graphs))

    // The activation-weighted search: the calibration tokens are known up front (the key hashes them); the statistics,
    // which need the float model converted and run, are taken only when shards are written (not on a cache hit).
    const calibration: CalibrationTokens | undefined = quantize?.search === "activation-clip"
      ? yield* calibrationTokens(modelDir, config, options.calibrationText ?? defaultCalibrationText, Math.min(config.maxPositionEmbeddings, DEFAULT_MAX_CONTEXT))
      : undefined
    const importanceOf = calibration === undefined ? Effect.succeed(undefined) : Effect.gen(function*() {
      yield* Effect.logInfo(`chorus: --quant-search activation-clip: calibrating on the float32 model of ${path.basename(modelDir)} (converted into the cache unless it is there)`)
      // the default options of a float32 conversion, so that this entry is the one a float32 run of the model uses
      const float = yield* convertCheckpoint({ modelDir, dtype: "float32", shards: 1, threads })
      return yield* collectActivationStats(config, { dataFile: `${float.shardPaths[0]}.data`, maxContext: float.manifest.maxContext }, calibration, threads > 0 ? threads : undefined)
    })

    const cacheDir = chorusCacheDir()
    const keyInput: KeyInput = {
      cacheDir,
      modelDir,
      files: source.files,
      config,
      dtype: options.dtype,
      shards: options.shards,
      layerSplit,
      maxContext,
      attention,
      quantize,
      calibration: calibration?.digest
    }
    const shardFiles = ranges.map((_, k) => `shard-${k}.onnx`)
    const manifestOf = (key: string): ModelManifest => ({
      formatVersion: FORMAT_VERSION,
      key,
      sourceDir: modelDir,
      config: { ...config, eosTokenIds: [...config.eosTokenIds] },
      dtype: options.dtype,
      maxContext,
      attention,
      ...(quantize === undefined ? {} : { quantize }),
      ...(calibration === undefined ? {} : { calibration: { tokens: calibration.tokens, digest: calibration.digest } }),
      shards: ranges.map(([l0, l1], k) => ({ file: shardFiles[k]!, layers: [l0, l1] as const, first: l0 === 0, last: l1 === config.numLayers }))
    })
    const plan: Plan = { config, graphs }
    // The key hashes every checkpoint file, which a first start has not seen (no digest in the hash memo): there the
    // digests run while the shards are written (both read the same files; read cold from disk, that is most of a
    // first start), and the manifest, which names the key, comes last.
    const shardsAndKey = (dir: string) =>
      Effect.map(
        Effect.all([contentKey(keyInput), writeShardFiles(dir, plan, shardFiles, source, options.onProgress, threads, importanceOf)], { concurrency: 2 }),
        ([key]) => key
      )
    const t0 = performance.now()
    const logConverted = Effect.suspend(() => {
      const seconds = (performance.now() - t0) / 1000
      const written = dataBytes(graphs)
      return Effect.logInfo(`chorus: converted ${path.basename(modelDir)} into ${graphs.length} shard(s), ${(written / 1e9).toFixed(2)} GB, in ${seconds.toFixed(1)} s (${(written / 1e6 / seconds).toFixed(0)} MB/s, ${threads} threads)`)
    })

    if (options.outDir !== undefined) {
      const outDir = path.resolve(options.outDir)
      yield* Effect.tryPromise({ try: () => fs.promises.mkdir(outDir, { recursive: true }), catch: conversionError(`cannot create ${outDir}`) })
      const key = yield* shardsAndKey(outDir)
      yield* writeManifest(outDir, manifestOf(key))
      return yield* loadConvertedModel(outDir)
    }

    const convertedDir = path.join(cacheDir, "converted")
    const isComplete = (dir: string) => fs.existsSync(path.join(dir, MANIFEST_FILE))
    // An entry that is there and readable is the answer; an unreadable one (edited by hand, files deleted) is removed.
    const cachedAt = (finalDir: string) =>
      Effect.gen(function*() {
        if (!isComplete(finalDir)) return undefined
        const hit = yield* Effect.result(loadConvertedModel(finalDir))
        if (hit._tag === "Success") return { ...hit.success, cached: true }
        yield* Effect.promise(() => fs.promises.rm(finalDir, { recursive: true, force: true }).catch(() => undefined))
        return undefined
      })
    const known = yield* contentKey(keyInput, true)
    if (known !== undefined) {
      const finalDir = path.join(convertedDir, known)
      const hit = yield* cachedAt(finalDir)
      if (hit !== undefined) return hit
      yield* writeCacheFolder(finalDir, isComplete, (tmp) =>
        Effect.andThen(writeShardFiles(tmp, plan, shardFiles, source, options.onProgress, threads, importanceOf), writeManifest(tmp, manifestOf(known))))
      yield* logConverted
      return yield* loadConvertedModel(finalDir)
    }
    const finalDir = yield* writeCacheFolderNamedBy(convertedDir, "pending", isComplete, (tmp) =>
      Effect.gen(function*() {
        const key = yield* shardsAndKey(tmp)
        const dir = path.join(convertedDir, key)
        // The same content converted before under another path: keep that entry (this folder is dropped).
        if ((yield* cachedAt(dir)) === undefined) yield* writeManifest(tmp, manifestOf(key))
        return dir
      }))
    yield* logConverted
    return yield* loadConvertedModel(finalDir)
  })
