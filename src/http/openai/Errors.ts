/**
 * The one mapping from errors to the OpenAI error shape: status, `{ error: { message, type, param, code } }`, and
 * the SSE error event for a stream that already started.
 */
import type { EngineError } from "../../core/Engine.ts"
import type { Draining, NotReady, PayloadTooLarge, ShutDown, Unauthorized, UnknownModel } from "../ServerErrors.ts"

export type OpenAiError = EngineError | Unauthorized | UnknownModel | NotReady | Draining | ShutDown | PayloadTooLarge

export interface OpenAiErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null }
}

export const toOpenAiError = (e: OpenAiError): { readonly status: number; readonly body: OpenAiErrorBody } => {
  const body = (type: string, param: string | null, code: string | null): OpenAiErrorBody => ({ error: { message: e.message, type, param, code } })
  switch (e._tag) {
    case "ValidationError":
      return { status: 400, body: body("invalid_request_error", e.field, null) }
    case "ContextLengthError":
      return { status: 400, body: body("invalid_request_error", "messages", "context_length_exceeded") }
    case "PayloadTooLarge":
      return { status: 413, body: body("invalid_request_error", null, "payload_too_large") }
    case "Unauthorized":
      return { status: 401, body: body("invalid_request_error", null, "invalid_api_key") }
    case "UnknownModel":
      return { status: 404, body: body("invalid_request_error", "model", "model_not_found") }
    case "Overloaded":
      return { status: 429, body: body("rate_limit_error", null, "overloaded") }
    case "NotReady":
      return { status: 503, body: body("server_error", null, "not_ready") }
    case "Draining":
      return { status: 503, body: body("server_error", null, "draining") }
    case "ShutDown":
      return { status: 503, body: body("server_error", null, "shutdown") }
    case "DeadlineExceeded":
      return { status: 504, body: body("timeout_error", null, "timeout") }
    case "GenerationError":
      return { status: 500, body: body("server_error", null, "generation_error") }
  }
}
