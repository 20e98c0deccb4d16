/**
 * The HBM roofline of Llama decode, the physical limit that `npm run bench:gpu` compares Chorus and PyTorch with.
 *
 * A decode step must read every streamed weight once (all of the checkpoint's tensors at the run's precision, less
 * the embedding table, of which a step only gathers one row per sequence; a tied table is read whole as the LM head)
 * plus the keys and values of every cached position of every sequence. Its floor is those bytes over the achievable
 * streaming rate, taken as a measured device-to-device copy counting bytes read plus bytes written (what a copy
 * kernel moves per second; the datasheet rate is higher and no kernel reaches it). Prefill is bound by arithmetic
 * as well: its floor is the larger of the weight read and the matrix FLOPs over a measured matmul rate.
 */
import { Effect } from "effect"
import { loadLlamaConfig } from "../../src/adapters/llama3/LlamaConfig.ts"
import { openCheckpoint } from "../../src/checkpoint/Safetensors.ts"
import type { CheckpointError, ModelConfigError } from "../../src/core/Errors.ts"

/** What the roofline needs to know of a model. */
export interface ModelShape {
  readonly numLayers: number
  readonly numHeads: number
  readonly numKvHeads: number
  readonly headDim: number
  readonly hiddenSize: number
  readonly intermediateSize: number
  readonly vocabSize: number
  readonly tiedEmbeddings: boolean
  /** Elements of every tensor of the checkpoint. */
  readonly totalElements: number
  /** Elements of `model.embed_tokens.weight`. */
  readonly embeddingElements: number
  /** Bytes per element at run time (2 for float16). */
  readonly bytesPerElement: number
}

/** Bytes of cached keys and values per token: 2 (K and V) x layers x kv heads x head dim x element size. */
export const kvBytesPerToken = (m: ModelShape): number => 2 * m.numLayers * m.numKvHeads * m.headDim * m.bytesPerElement

/** Weight bytes one decode step of `batch` sequences reads (the embedding rows it gathers included). */
export const weightBytesPerStep = (m: ModelShape, batch: number): number => {
  const gathered = batch * m.hiddenSize * m.bytesPerElement
  return m.tiedEmbeddings
    ? m.totalElements * m.bytesPerElement + gathered
    : (m.totalElements - m.embeddingElements) * m.bytesPerElement + gathered
}

/** Bytes one decode step reads when its sequences attend to `contextTokens` cached positions in total. */
export const decodeStepBytes = (m: ModelShape, batch: number, contextTokens: number): number =>
  weightBytesPerStep(m, batch) + kvBytesPerToken(m) * contextTokens

export interface DecodeWorkload {
  readonly batch: number
  /** Prompt length of each sequence: the first timed step's token sits at this position. */
  readonly startPosition: number
  /** Timed decode steps. */
  readonly steps: number
}

export interface DecodeRoofline {
  readonly seconds: number
  readonly msPerStep: number
  readonly tokensPerSecond: number
  /** Bytes read over all the steps. */
  readonly bytes: number
}

/**
 * The floor of `steps` decode steps of `batch` equal-length sequences: step s processes position startPosition + s
 * and so attends to startPosition + s + 1 positions per sequence.
 */
export const decodeRoofline = (m: ModelShape, w: DecodeWorkload, bandwidthBytesPerSecond: number): DecodeRoofline => {
  if (!(bandwidthBytesPerSecond > 0)) throw new RangeError(`bandwidth must be positive, found ${bandwidthBytesPerSecond}`)
  if (w.steps < 1 || w.batch < 1) throw new RangeError(`steps and batch must be at least 1, found ${w.steps} and ${w.batch}`)
  // Sum over s of (startPosition + s + 1) = steps * (startPosition + 1) + steps * (steps - 1) / 2.
  const positions = w.steps * (w.startPosition + 1) + (w.steps * (w.steps - 1)) / 2
  const bytes = w.steps * weightBytesPerStep(m, w.batch) + kvBytesPerToken(m) * w.batch * positions
  const seconds = bytes / bandwidthBytesPerSecond
  return { seconds, msPerStep: (1000 * seconds) / w.steps, tokensPerSecond: (w.batch * w.steps) / seconds, bytes }
}

/** Matrix FLOPs of a prefill of `tokens` positions of one sequence with logits for the last one only. */
export const prefillFlops = (m: ModelShape, tokens: number): number => {
  const q = m.numHeads * m.headDim
  const kv = m.numKvHeads * m.headDim
  const perLayer = m.hiddenSize * (q + 2 * kv) + q * m.hiddenSize + 3 * m.hiddenSize * m.intermediateSize
  // Causal attention: QK^T and PV each cost 2 * heads * headDim per (query, key) pair, over tokens^2 / 2 pairs.
  const attention = 2 * m.numLayers * q * tokens * tokens
  return 2 * m.numLayers * perLayer * tokens + attention + 2 * m.vocabSize * m.hiddenSize
}

/** The floor of a prefill (time to first token): reading the weights once or doing its FLOPs, whichever is slower. */
export const prefillRooflineMs = (m: ModelShape, tokens: number, bandwidthBytesPerSecond: number, flopsPerSecond: number): number =>
  1000 * Math.max(weightBytesPerStep(m, 1) / bandwidthBytesPerSecond, prefillFlops(m, tokens) / flopsPerSecond)

/** Reads a checkpoint's config and safetensors headers (no tensor data) into a ModelShape at `bytesPerElement`. */
export const loadModelShape = (
  modelDir: string,
  bytesPerElement: number
): Effect.Effect<ModelShape, CheckpointError | ModelConfigError> =>
  Effect.gen(function*() {
    const config = yield* loadLlamaConfig(modelDir)
    const source = yield* openCheckpoint(modelDir)
    const elements = (name: string) => source.info(name)?.shape.reduce((a, b) => a * b, 1) ?? 0
    return {
      numLayers: config.numLayers,
      numHeads: config.numHeads,
      numKvHeads: config.numKvHeads,
      headDim: config.headDim,
      hiddenSize: config.hiddenSize,
      intermediateSize: config.intermediateSize,
      vocabSize: config.vocabSize,
      tiedEmbeddings: config.tieWordEmbeddings || source.info("lm_head.weight") === undefined,
      totalElements: source.names.reduce((sum, name) => sum + elements(name), 0),
      embeddingElements: elements("model.embed_tokens.weight"),
      bytesPerElement
    }
  })
