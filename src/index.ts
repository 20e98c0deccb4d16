/**
 * Chorus: serve Llama 3 to many chat users at once. The public entry point for embedding the engine.
 *
 * @since 0.1.0
 */
export { describeCapacity, Engine, type EngineCapacity, type EngineError, type EngineOptions, type EngineStats } from "./core/Engine.ts"
export type { FinishReason, GenerateRequest, GenerationEvent, PromptInput, Usage } from "./core/Request.ts"
export type { EngineObserver, FinishedReason, FinishedRequest, StepTiming } from "./core/EngineObserver.ts"
export type { DecodeAttention } from "./core/native/DecodeAttention.ts"
export type { SamplingParams } from "./core/sampling/SamplingParams.ts"
export type { ChatMessage } from "./core/text/ChatMessage.ts"
export {
  CheckpointError,
  ContextLengthError,
  ConversionError,
  GenerationError,
  ModelConfigError,
  ValidationError
} from "./core/Errors.ts"
export type { LoadedModel, ModelAdapter, PromptOptions, ShardSpec, TextCodec } from "./core/ModelAdapter.ts"
export type { ShardLoad, StepPlan, StepResult } from "./core/shard/StepProtocol.ts"
