/**
 * Reading a request body at the edge: a size limit, JSON parsing, and Schema decoding that rejects unknown fields.
 * Every failure is a ValidationError whose `field` is the JSON path (`messages[0].content`) and whose message
 * names the problem and the value given.
 */
import { Effect, Schema } from "effect"
import { HttpServerRequest } from "effect/http"
import { ValidationError } from "../core/Errors.ts"
import { PayloadTooLarge } from "./ServerErrors.ts"

/** Bodies above this are refused with 413 (prompts of a full 128k context fit well below it). */
export const MAX_BODY_BYTES = 4 * 1024 * 1024

const describe = (value: unknown): string => {
  if (value === undefined) return "nothing"
  const text = JSON.stringify(value)
  return text === undefined ? String(value) : text.length > 60 ? `${text.slice(0, 57)}...` : text
}

/** `["messages"][0]["content"]` -> ["messages", 0, "content"] */
const parsePath = (at: string): Array<string | number> =>
  [...at.matchAll(/\[(?:"((?:[^"\\]|\\.)*)"|(\d+))\]/g)].map((m) => (m[2] !== undefined ? Number(m[2]) : JSON.parse(`"${m[1]}"`) as string))

const formatPath = (path: ReadonlyArray<string | number>) =>
  path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`)).join("")

const valueAt = (input: unknown, path: ReadonlyArray<string | number>): unknown =>
  path.reduce<unknown>((v, k) => (v !== null && typeof v === "object" ? (v as Record<string | number, unknown>)[k] : undefined), input)

/** Turns a Schema failure into one line naming the field, the expectation and the value given. */
export const schemaErrorToValidation = (error: Schema.SchemaError, input: unknown): ValidationError => {
  const [first = "invalid request", ...rest] = error.message.split("\n")
  const at = rest.map((l) => l.trim()).find((l) => l.startsWith("at "))
  const path = at === undefined ? [] : parsePath(at.slice(3))
  const field = path.length === 0 ? "body" : formatPath(path)
  if (first.startsWith("Expected no excess property")) {
    return new ValidationError({ field, message: `unsupported field '${field}'` })
  }
  const given = valueAt(input, path)
  const message = given === undefined && first.includes("undefined") === false
    ? `${field}: ${first} (missing)`
    : `${field}: ${first}, got ${describe(given)}`
  return new ValidationError({ field, message })
}

export const decodeJson = <S extends Schema.Top & { readonly DecodingServices: never }>(schema: S, input: unknown) =>
  Schema.decodeUnknownEffect(schema)(input, { onExcessProperty: "error" }).pipe(
    Effect.mapError((e) => schemaErrorToValidation(e, input))
  ) as Effect.Effect<S["Type"], ValidationError>

/** Reads and parses the JSON body of the current request. */
export const readJsonBody: Effect.Effect<unknown, ValidationError | PayloadTooLarge, HttpServerRequest.HttpServerRequest> = Effect.gen(
  function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const declared = Number(request.headers["content-length"] ?? "0")
    if (declared > MAX_BODY_BYTES) {
      return yield* Effect.fail(new PayloadTooLarge({ limit: MAX_BODY_BYTES, message: `the request body has ${declared} bytes; the limit is ${MAX_BODY_BYTES}` }))
    }
    const text = yield* request.text.pipe(
      Effect.mapError(() => new ValidationError({ field: "body", message: "the request body could not be read" }))
    )
    if (text.length > MAX_BODY_BYTES) {
      return yield* Effect.fail(new PayloadTooLarge({ limit: MAX_BODY_BYTES, message: `the request body is larger than ${MAX_BODY_BYTES} bytes` }))
    }
    if (text.trim() === "") return yield* Effect.fail(new ValidationError({ field: "body", message: "the request body is empty; send a JSON object" }))
    return yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (e) => new ValidationError({ field: "body", message: `the request body is not valid JSON: ${e instanceof Error ? e.message : String(e)}` })
    })
  }
)
