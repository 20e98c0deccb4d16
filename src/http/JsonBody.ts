/**
 * Reading a request body at the edge: a size limit enforced while the body streams in, a nesting limit checked
 * before JSON parsing, and Schema decoding that rejects unknown fields. Every failure is a ValidationError whose
 * `field` is the JSON path (`messages[0].content`) and whose message names the problem and the value given.
 */
import { ByteSize, Effect, Schema } from "effect"
import { HttpIncomingMessage, HttpServerRequest } from "effect/http"
import { ValidationError } from "../core/Errors.ts"
import { describeValue } from "./ChatInput.ts"
import { PayloadTooLarge } from "./ServerErrors.ts"

/** Bodies above this are refused with 413 (prompts of a full 128k context fit well below it). */
export const MAX_BODY_BYTES = 4 * 1024 * 1024

/**
 * Arrays and objects may nest this deep. No request Chorus accepts needs more than a handful of levels; the limit
 * keeps recursive work on client data (parsing, Schema decoding, error descriptions) far from the stack's end.
 */
export const MAX_JSON_DEPTH = 64

/** Whether JSON text nests arrays/objects deeper than `limit`: one linear pass, no recursion, no allocation. */
export const nestsDeeperThan = (text: string, limit: number): boolean => {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++ // a backslash: the next character is escaped, even a quote
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return true
    } else if (c === 0x5d || c === 0x7d) depth--
  }
  return false
}

const utf8 = new TextDecoder("utf-8", { fatal: true })

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
    : `${field}: ${first}, got ${describeValue(given)}`
  return new ValidationError({ field, message })
}

export const decodeJson = <S extends Schema.Top & { readonly DecodingServices: never }>(schema: S, input: unknown) =>
  Schema.decodeUnknownEffect(schema)(input, { onExcessProperty: "error" }).pipe(
    Effect.mapError((e) => schemaErrorToValidation(e, input))
  ) as Effect.Effect<S["Type"], ValidationError>

const tooLarge = (what: string) => new PayloadTooLarge({ limit: MAX_BODY_BYTES, message: `${what}; the limit is ${MAX_BODY_BYTES} bytes` })

/**
 * The body's bytes, at most MAX_BODY_BYTES of them. The limit holds while reading, for declared and chunked bodies
 * alike: past it the read stops at once (nothing more is buffered) and the 413 goes out; the platform then reads at
 * most 256 KiB more and closes the connection, so the client cannot make the server take in the rest.
 */
const readBodyBytes = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const declared = Number(request.headers["content-length"] ?? "0")
  if (declared > MAX_BODY_BYTES) return yield* Effect.fail(tooLarge(`the request body has ${declared} bytes`))
  return yield* request.arrayBuffer.pipe(
    Effect.provideService(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(MAX_BODY_BYTES)),
    Effect.catchTag("HttpServerError", (e) =>
      Effect.fail(
        e.reason._tag === "RequestParseError" && e.reason.reason === "BodyTooLarge"
          ? tooLarge("the request body is larger than that")
          : new ValidationError({ field: "body", message: "the request body could not be read (the client sent an incomplete body)" })
      )
    )
  )
})

/**
 * Parses JSON text received as `field` (the body, or a JSON-in-string parameter), refusing nesting beyond
 * MAX_JSON_DEPTH before the parser sees it. The failure names the field and the reason.
 */
export const parseJsonText = (text: string, field: string): Effect.Effect<unknown, ValidationError> => {
  const what = field === "body" ? "the request body" : field
  if (nestsDeeperThan(text, MAX_JSON_DEPTH)) {
    return Effect.fail(new ValidationError({ field, message: `${what} nests arrays or objects deeper than ${MAX_JSON_DEPTH} levels, the limit` }))
  }
  return Effect.try({
    try: () => JSON.parse(text) as unknown,
    catch: (e) => new ValidationError({ field, message: `${what} is not valid JSON: ${e instanceof Error ? e.message : String(e)}` })
  })
}

/** Reads and parses the JSON body of the current request. */
export const readJsonBody: Effect.Effect<unknown, ValidationError | PayloadTooLarge, HttpServerRequest.HttpServerRequest> = Effect.gen(
  function*() {
    const bytes = yield* readBodyBytes
    const text = yield* Effect.try({
      try: () => utf8.decode(bytes),
      catch: () => new ValidationError({ field: "body", message: "the request body is not valid UTF-8 (JSON must be UTF-8)" })
    })
    if (text.trim() === "") return yield* Effect.fail(new ValidationError({ field: "body", message: "the request body is empty; send a JSON object" }))
    return yield* parseJsonText(text, "body")
  }
)

/**
 * Decodes like OpenAI reads a body: top-level fields outside `known` are ignored (logged at debug level) and so are
 * unknown fields nested deeper, except the `refused` ones holding a value (not null, not empty): those name a
 * feature the server lacks, and a client relying on one must hear about it.
 */
export const decodeJsonLenient = <S extends Schema.Top & { readonly DecodingServices: never }>(
  schema: S,
  input: unknown,
  options: { readonly known: ReadonlyArray<string>; readonly refused: ReadonlyArray<string> }
): Effect.Effect<S["Type"], ValidationError> =>
  Effect.gen(function*() {
    if (input !== null && typeof input === "object" && !Array.isArray(input)) {
      const extra = Object.keys(input).filter((k) => !options.known.includes(k))
      for (const k of extra) {
        const v = (input as Record<string, unknown>)[k]
        const empty = v === null || (Array.isArray(v) && v.length === 0) || (typeof v === "object" && v !== null && Object.keys(v).length === 0)
        if (options.refused.includes(k) && !empty) {
          return yield* Effect.fail(new ValidationError({ field: k, message: `unsupported field '${k}': this server does not implement it` }))
        }
      }
      if (extra.length > 0) yield* Effect.logDebug(`ignored unknown request fields: ${extra.join(", ")}`)
    }
    return yield* Schema.decodeUnknownEffect(schema)(input, { onExcessProperty: "ignore" }).pipe(
      Effect.mapError((e) => schemaErrorToValidation(e, input))
    ) as Effect.Effect<S["Type"], ValidationError>
  })
