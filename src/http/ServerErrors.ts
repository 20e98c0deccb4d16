/**
 * Errors of the HTTP surface itself (not of the engine): who may call, whether the model is there, whether the
 * server still takes requests. Each protocol module maps them, with the core errors, in its own `Errors.ts`.
 */
import { Schema } from "effect"

/** Missing or wrong API key. */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", { message: Schema.String }) {
  readonly errorType = "unauthorized"
}

/** The request names a model this server does not serve. */
export class UnknownModel extends Schema.TaggedError<UnknownModel>()("UnknownModel", { model: Schema.String, message: Schema.String }) {
  readonly errorType = "model_not_found"
}

/** An AIME job id that does not exist (or belongs to another key). */
export class UnknownJob extends Schema.TaggedError<UnknownJob>()("UnknownJob", { jobId: Schema.String, message: Schema.String }) {
  readonly errorType = "unknown_job"
}

/** The model is still loading. */
export class NotReady extends Schema.TaggedError<NotReady>()("NotReady", { message: Schema.String }) {
  readonly errorType = "not_ready"
}

/** The server is shutting down and takes no new requests. */
export class Draining extends Schema.TaggedError<Draining>()("Draining", { message: Schema.String }) {
  readonly errorType = "draining"
}

/** The grace period after SIGTERM ran out while this request was still running. */
export class ShutDown extends Schema.TaggedError<ShutDown>()("ShutDown", { message: Schema.String }) {
  readonly errorType = "shutdown"
}

/** The request body is larger than the server accepts. */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", { limit: Schema.Number, message: Schema.String }) {
  readonly errorType = "payload_too_large"
}
