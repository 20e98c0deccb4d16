/**
 * Core errors. They know nothing of HTTP or exit codes: each surface (CLI, OpenAI routes, AIME routes) maps them
 * once, in its own module. `errorType` is a stable snake_case label used in bodies, logs and metrics.
 */
import { Schema } from "effect"

/** A request or option is out of range or malformed. `field` names it (`top_p`, `--max-tokens`). */
export class ValidationError extends Schema.TaggedError<ValidationError>()("ValidationError", {
  field: Schema.String,
  message: Schema.String
}) {
  readonly errorType = "validation_error"
}

/**
 * A checkpoint cannot be used: a missing folder or file, a corrupt header, a missing tensor or a wrong shape.
 * `message` is one line naming the file, the tensor, the expected and the found shape where they apply.
 */
export class CheckpointError extends Schema.TaggedError<CheckpointError>()("CheckpointError", {
  path: Schema.String,
  message: Schema.String
}) {
  readonly errorType = "checkpoint_error"
}

/** The checkpoint's `config.json` is not a model this adapter can run (unknown `model_type`, bad values). */
export class ModelConfigError extends Schema.TaggedError<ModelConfigError>()("ModelConfigError", {
  path: Schema.String,
  message: Schema.String
}) {
  readonly errorType = "model_config_error"
}

/** The prompt does not fit the context window even after truncation. */
export class ContextLengthError extends Schema.TaggedError<ContextLengthError>()("ContextLengthError", {
  promptTokens: Schema.Number,
  contextLength: Schema.Number,
  message: Schema.String
}) {
  readonly errorType = "context_length_exceeded"
}

/** A shard worker failed while running a step (its thread died, or ORT threw). */
export class GenerationError extends Schema.TaggedError<GenerationError>()("GenerationError", {
  message: Schema.String
}) {
  readonly errorType = "generation_error"
}

/** Converting a checkpoint to ONNX failed (disk full, unwritable cache). */
export class ConversionError extends Schema.TaggedError<ConversionError>()("ConversionError", {
  message: Schema.String
}) {
  readonly errorType = "conversion_error"
}

/** The waiting queue is full: the request is refused at once instead of waiting without bound. */
export class Overloaded extends Schema.TaggedError<Overloaded>()("Overloaded", {
  maxQueue: Schema.Number,
  message: Schema.String
}) {
  readonly errorType = "overloaded"
}

/** The request outlived its deadline (queued or generating); what was generated so far has been streamed. */
export class DeadlineExceeded extends Schema.TaggedError<DeadlineExceeded>()("DeadlineExceeded", {
  timeoutMs: Schema.Number,
  message: Schema.String
}) {
  readonly errorType = "timeout"
}
