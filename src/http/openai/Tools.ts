/**
 * Tool calling for the OpenAI routes: which tools a request offers and how it lets the model use them
 * (`tool_choice`), the grammar that forces a call, and the model's output read back as calls.
 *
 * The model writes a call as Llama 3.1 does: `{"name": ..., "parameters": {...}}` (optionally after
 * `<|python_tag|>`; `arguments` is accepted for `parameters`, a `"type": "function"` member and OpenAI's
 * `{"type": "function", "function": {...}}` wrapping too), several calls separated by `;` or newlines. When the
 * request forces a call (`required`, or a named function), the sampler is constrained to exactly that shape with the
 * function's parameters schema, so the call is valid whatever the weights. With `auto` the model may answer in text
 * or call: output that begins with `{"name"` (or `{"type"`, or the python tag) and parses as calls of offered functions is calls,
 * anything else is text.
 */
import { Effect } from "effect"
import { randomUUID } from "node:crypto"
import { ValidationError } from "../../core/Errors.ts"
import { checkJsonSchema, type GrammarSpec } from "../../core/sampling/Grammar.ts"
import type { ToolDefinition } from "../../core/text/ChatMessage.ts"

/** How the model may use the tools. `none` never reaches here: such a request has no tools. */
export type ToolMode = { readonly kind: "auto" } | { readonly kind: "required" } | { readonly kind: "named"; readonly name: string }

export interface ToolSetup {
  readonly tools: ReadonlyArray<ToolDefinition>
  readonly mode: ToolMode
  /** Several calls in one answer (`parallel_tool_calls`, default true); false keeps the first. */
  readonly parallel: boolean
}

/** A call the model made, arguments as JSON text. */
export interface ParsedCall {
  readonly id: string
  readonly name: string
  readonly arguments: string
}

const invalid = (field: string, message: string) => Effect.fail(new ValidationError({ field, message }))

/**
 * The request's tools and tool choice, checked: names unique, parameters schemas usable by the grammar, a named
 * choice among the tools, a forcing choice with tools. Undefined when the model gets no tools (none given, or
 * `tool_choice: "none"`).
 */
export const toolSetup = (
  tools: ReadonlyArray<ToolDefinition> | null | undefined,
  choice: "auto" | "none" | "required" | { readonly name: string } | null | undefined,
  parallel: boolean | null | undefined
): Effect.Effect<ToolSetup | undefined, ValidationError> =>
  Effect.gen(function*() {
    const list = tools ?? []
    if (list.length === 0) {
      if (choice === "required" || (typeof choice === "object" && choice !== null)) {
        return yield* invalid("tool_choice", `tool_choice ${typeof choice === "string" ? `"${choice}"` : `naming '${choice.name}'`} needs tools`)
      }
      return undefined
    }
    const seen = new Set<string>()
    for (const [i, t] of list.entries()) {
      if (seen.has(t.name)) return yield* invalid("tools", `tools[${i}]: the function name '${t.name}' is used twice`)
      seen.add(t.name)
      if (t.parameters !== undefined) {
        if (t.parameters["type"] !== undefined && t.parameters["type"] !== "object") {
          return yield* invalid("tools", `tools[${i}] ('${t.name}'): parameters must be an object schema, got type ${JSON.stringify(t.parameters["type"])}`)
        }
        const why = checkJsonSchema(JSON.stringify(t.parameters))
        if (why !== undefined) return yield* invalid("tools", `tools[${i}] ('${t.name}'): parameters is not a usable JSON schema: ${why}`)
      }
    }
    if (choice === "none") return undefined
    let mode: ToolMode = { kind: "auto" }
    if (choice === "required") mode = { kind: "required" }
    else if (typeof choice === "object" && choice !== null) {
      if (!seen.has(choice.name)) {
        return yield* invalid("tool_choice", `tool_choice names '${choice.name}', which is not among the tools (${[...seen].join(", ")})`)
      }
      mode = { kind: "named", name: choice.name }
    }
    return { tools: list, mode, parallel: parallel ?? true }
  })

/** The JSON schema of one call of `tool`, as the model writes it. */
const callSchema = (tool: ToolDefinition) => ({
  type: "object",
  properties: { name: { const: tool.name }, parameters: tool.parameters ?? { type: "object" } },
  required: ["name", "parameters"],
  additionalProperties: false
})

/** The grammar that forces one call (of the named function, or of any tool for `required`); none for `auto`. */
export const toolGrammar = (setup: ToolSetup): GrammarSpec | undefined => {
  if (setup.mode.kind === "auto") return undefined
  const name = setup.mode.kind === "named" ? setup.mode.name : undefined
  const tools = name === undefined ? setup.tools : setup.tools.filter((t) => t.name === name)
  const schema = tools.length === 1 ? callSchema(tools[0]!) : { anyOf: tools.map(callSchema) }
  return { kind: "json_schema", schema: JSON.stringify(schema) }
}

/** A fresh call id, OpenAI-like. */
export const callId = (): string => `call_${randomUUID().replaceAll("-", "").slice(0, 24)}`

const PYTHON_TAG = "<|python_tag|>"

/** The end of the JSON object that starts at `from` (index after its `}`), or -1. */
const objectEnd = (text: string, from: number): number => {
  let depth = 0
  let inString = false
  for (let i = from; i < text.length; i++) {
    const c = text[i]
    if (inString) {
      if (c === "\\") i++
      else if (c === "\"") inString = false
    } else if (c === "\"") inString = true
    else if (c === "{") depth++
    else if (c === "}") {
      depth--
      if (depth === 0) return i + 1
    }
  }
  return -1
}

/**
 * The model's output as calls of the offered functions, or undefined when it is not (only) calls: then it is the
 * answer's text.
 */
export const parseToolCalls = (text: string, setup: ToolSetup): Array<ParsedCall> | undefined => {
  let rest = text.trim()
  if (rest.startsWith(PYTHON_TAG)) rest = rest.slice(PYTHON_TAG.length).trim()
  const names = new Set(setup.tools.map((t) => t.name))
  const calls: Array<ParsedCall> = []
  let at = 0
  while (at < rest.length) {
    if (rest[at] !== "{") return undefined
    const end = objectEnd(rest, at)
    if (end < 0) return undefined
    let value: unknown
    try {
      value = JSON.parse(rest.slice(at, end))
    } catch {
      return undefined
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined
    const outer = value as Record<string, unknown>
    // `{"type": "function", "function": {"name", "parameters"}}` (OpenAI's shape) or the call itself.
    const inner = outer["function"]
    const o = typeof inner === "object" && inner !== null && !Array.isArray(inner) ? inner as Record<string, unknown> : outer
    const name = o["name"]
    let args = o["parameters"] ?? o["arguments"] ?? {}
    if (typeof args === "string") {
      try {
        args = JSON.parse(args)
      } catch {
        return undefined
      }
    }
    if (typeof name !== "string" || !names.has(name) || typeof args !== "object" || args === null || Array.isArray(args)) return undefined
    calls.push({ id: callId(), name, arguments: JSON.stringify(args) })
    at = end
    while (at < rest.length && /[\s;,]/.test(rest[at]!)) at++
    if (rest.startsWith(PYTHON_TAG, at)) at += PYTHON_TAG.length
    while (at < rest.length && /\s/.test(rest[at]!)) at++
  }
  if (calls.length === 0) return undefined
  return setup.parallel ? calls : calls.slice(0, 1)
}

/** The first keys of an object that may be a call: `{"name"`, or `{"type": "function", ...` as Llama 3.2 writes. */
const CALL_KEYS = new Set(["name", "type", "function"])

/** Whether text that begins so may still turn out to be a call (the python tag, or an object whose first key is a
 *  call's; whitespace first). */
const callStatus = (text: string): "call" | "text" | "undecided" => {
  const t = text.trimStart()
  if (t === "") return "undecided"
  if (t.startsWith(PYTHON_TAG)) return "call"
  if (PYTHON_TAG.startsWith(t) || /^\{\s*("[a-z]*)?$/.test(t)) return "undecided"
  const key = /^\{\s*"([a-z]*)"/.exec(t)
  return key !== null && CALL_KEYS.has(key[1]!) ? "call" : "text"
}

/**
 * One choice's streamed text, split into what can be sent as text now and what is held because it may be a call:
 * with a forced call everything is held; with `auto`, the text is held until its start shows whether it is a call.
 * Held text is parsed at the end; when it is not calls, it is sent as text then.
 */
export class ToolStream {
  private held = ""
  private state: "call" | "text" | "undecided"
  private readonly setup: ToolSetup

  constructor(setup: ToolSetup) {
    this.setup = setup
    this.state = setup.mode.kind === "auto" ? "undecided" : "call"
  }

  /** Text to send now (possibly ""). */
  push(text: string): string {
    if (this.state === "text") return text
    this.held += text
    if (this.state === "undecided") {
      this.state = callStatus(this.held)
      if (this.state === "text") {
        const out = this.held
        this.held = ""
        return out
      }
    }
    return ""
  }

  /** At the end: the calls, or the held text to send. */
  finish(text: string): { readonly text: string; readonly calls?: Array<ParsedCall> } {
    const all = this.push(text)
    if (this.state === "text") return { text: all }
    const calls = parseToolCalls(this.held, this.setup)
    const held = this.held
    this.held = ""
    return calls === undefined ? { text: held } : { text: "", calls }
  }
}

/** What a forced call's stream gives per piece of text: the call's head once its name is known, argument text. */
export interface CallPiece {
  readonly start?: { readonly id: string; readonly name: string }
  readonly args: string
}

/** The grammar's compact start of a forced call, up to its arguments. */
const FORCED_HEAD = /^\{"name":"([^"\\]*)","parameters":/

/**
 * A forced call streamed as it is generated. The grammar makes the text exactly `{"name":"f","parameters":ARGS}`,
 * so the head gives the name and everything after it, but for the closing `}`, is the arguments' text: it is sent
 * as it comes, holding back one character (which may be that last `}`). A call's arguments are the model's text
 * verbatim, streamed or not (`forcedCall`).
 */
export class ForcedCallStream {
  private text = ""
  private head = 0
  private sent = 0
  readonly id = callId()

  /** The head (once) and the argument text that can be sent now. */
  push(text: string): CallPiece {
    this.text += text
    let start: CallPiece["start"]
    if (this.head === 0) {
      const m = FORCED_HEAD.exec(this.text)
      if (m === null) return { args: "" }
      this.head = this.sent = m[0].length
      start = { id: this.id, name: m[1]! }
    }
    const until = Math.max(this.sent, this.text.length - 1)
    const args = this.text.slice(this.sent, until)
    this.sent = until
    return start === undefined ? { args } : { start, args }
  }

  /**
   * At the end: the rest of the arguments, and the call when the text is a whole call of an offered function (else
   * `text`: the model's whole text, when no head was ever sent; a head already sent stays a cut-off call).
   */
  finish(text: string, setup: ToolSetup): CallPiece & { readonly call?: ParsedCall; readonly text?: string } {
    const piece = this.push(text)
    const call = forcedCall(this.text, setup, this.id)
    if (this.head === 0) return call === undefined ? { args: "", text: this.text } : { start: { id: call.id, name: call.name }, args: call.arguments, call }
    const end = call === undefined ? this.text.length : this.text.length - 1
    const args = piece.args + this.text.slice(this.sent, end)
    this.sent = end
    return call === undefined ? { ...piece, args } : { ...piece, args, call }
  }
}

/** A forced call's text as its call, the arguments verbatim; undefined when it is not a whole call. */
export const forcedCall = (text: string, setup: ToolSetup, id = callId()): ParsedCall | undefined => {
  const calls = parseToolCalls(text, { ...setup, parallel: false })
  const m = FORCED_HEAD.exec(text)
  if (calls === undefined || m === null || !text.endsWith("}")) return undefined
  return { id, name: calls[0]!.name, arguments: text.slice(m[0].length, -1) }
}
