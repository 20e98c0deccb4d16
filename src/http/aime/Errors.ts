/**
 * The one mapping from errors to AIME error answers: `{ success: false, error, ep_version }` with the reference's
 * status codes. `error` is a list of messages for authentication and validation problems and a plain string for
 * queue-full and lapsed jobs, exactly as the reference sends them (its clients accept both).
 *
 * @since 0.1.0
 */
import { Schema } from "effect"
import type { EngineError } from "../../core/Engine.ts"
import type { Draining, NotReady, PayloadTooLarge, Unauthorized, UnknownJob } from "../ServerErrors.ts"

/** One or more submission parameters are unknown or out of range: one message per problem. */
export class AimeInputError extends Schema.TaggedError<AimeInputError>()("AimeInputError", {
  messages: Schema.Array(Schema.String)
}) {
  readonly errorType = "validation_error"
  override get message() {
    return this.messages.join("; ")
  }
}

/** A job ran past the engine's deadline (queued or generating). */
export class JobLapsed extends Schema.TaggedError<JobLapsed>()("JobLapsed", { jobId: Schema.String, endpoint: Schema.String }) {
  readonly errorType = "timeout"
  override get message() {
    return `Job ${this.jobId} on ${this.endpoint} lapsed!`
  }
}

/** A job was canceled (through the cancel route) while a blocking request waited for it. */
export class JobCanceled extends Schema.TaggedError<JobCanceled>()("JobCanceled", { jobId: Schema.String, endpoint: Schema.String }) {
  readonly errorType = "canceled"
  override get message() {
    return `Job ${this.jobId} on ${this.endpoint} canceled!`
  }
}

export type AimeError = EngineError | AimeInputError | JobLapsed | JobCanceled | Unauthorized | UnknownJob | NotReady | Draining | PayloadTooLarge

export interface AimeErrorBody {
  readonly success: false
  readonly error: string | ReadonlyArray<string>
  readonly ep_version: number
}

export const toAimeError = (e: AimeError, epVersion: number): { readonly status: number; readonly body: AimeErrorBody } => {
  const list = (status: number, messages: ReadonlyArray<string>) => ({ status, body: { success: false as const, error: messages, ep_version: epVersion } })
  const text = (status: number, message: string) => ({ status, body: { success: false as const, error: message, ep_version: epVersion } })
  switch (e._tag) {
    case "AimeInputError":
      return list(400, e.messages)
    case "ValidationError":
    case "ContextLengthError":
      return list(400, [e.message])
    case "Overloaded":
      return text(400, `Job queue reached max length ${e.maxQueue}!`)
    case "Unauthorized":
      return list(401, [e.message])
    case "UnknownJob":
      return list(402, [e.message])
    case "JobLapsed":
    case "JobCanceled":
    case "DeadlineExceeded":
      return text(400, e.message)
    case "PayloadTooLarge":
      return list(413, [e.message])
    // Chorus's own: the reference has no loading or shutdown phase.
    case "NotReady":
    case "Draining":
      return text(503, e.message)
    case "GenerationError":
      return text(500, e.message)
  }
}
