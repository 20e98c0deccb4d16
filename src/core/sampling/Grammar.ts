/**
 * Constrained decoding: JSON (any object) or a JSON schema, through xgrammar's WebAssembly build
 * (`@mlc-ai/web-xgrammar`). The shard worker that samples compiles the grammar (cached per schema), keeps one matcher
 * per sequence and masks each step's logits to the tokens the matcher allows; logits never leave the worker.
 *
 * The package is a browser/UMD bundle: it is evaluated here as CommonJS, with two small source edits (Node's `module`
 * through `require` rather than a dynamic import, and the emscripten binding exposed) so that, once the WebAssembly
 * module is up (a top-level await, ~20 ms), every call is synchronous — sampling is.
 */
import fs from "node:fs"
import { createRequire } from "node:module"
import vm from "node:vm"

/** The constraint of one sequence, as plain data (it crosses to the worker in `SamplingParams`). */
export type GrammarSpec =
  | { readonly kind: "json" }
  | { readonly kind: "json_schema"; readonly schema: string }

/**
 * The vocabulary as xgrammar needs it: each id's text in byte-level encoding (GPT-2's byte-to-unicode table), "" for
 * special tokens (never allowed, except the stop tokens once the grammar is complete).
 */
export interface GrammarVocab {
  readonly tokens: ReadonlyArray<string>
  readonly stopTokenIds: ReadonlyArray<number>
}

// ---- the emscripten binding, as far as it is used ----
interface Deletable {
  delete(): void
}
interface VectorInt extends Deletable {}
interface NativeCompiled extends Deletable {}
interface NativeMatcher extends Deletable {
  AcceptToken(id: number, verbose: boolean): boolean
  AcceptString(text: string, verbose: boolean): boolean
  GetNextTokenBitmask(vocabSize: number): VectorInt
  IsTerminated(): boolean
}
interface NativeCompiler extends Deletable {
  CompileJSONSchema(
    schema: string,
    anyWhitespace: boolean,
    indent: number | undefined,
    separators: { first: string; second: string } | undefined,
    strictMode: boolean,
    maxWhitespaceCnt: number | undefined
  ): NativeCompiled
  CompileBuiltinJSONGrammar(): NativeCompiled
  CompileGrammar(grammar: Deletable): NativeCompiled
}
interface Binding {
  TokenizerInfo: new(vocab: Deletable, vocabType: string, vocabSize: number, stop: VectorInt | undefined, prependSpace: boolean) => Deletable
  GrammarCompiler: new(info: Deletable, maxThreads: number, cache: boolean) => NativeCompiler
  GrammarMatcher: new(compiled: NativeCompiled, stop: VectorInt | undefined, terminateWithoutStop: boolean, rollback: number) => NativeMatcher
  Grammar: {
    FromEBNF: new(ebnf: string, rootRule: string) => Deletable
  }
  _JSONSchemaToEBNF(
    schema: string,
    anyWhitespace: boolean,
    indent: number | undefined,
    separators: { first: string; second: string } | undefined,
    strictMode: boolean,
    maxWhitespaceCnt: number | undefined,
    format: unknown
  ): string
  JSONFormat: { kJSON: unknown }
  vecStringFromJSArray(a: ReadonlyArray<string>): Deletable
  vecIntFromJSArray(a: ReadonlyArray<number>): VectorInt
  vecIntToView(v: VectorInt): Int32Array
}

/** xgrammar's last `[FATAL] ...` line: its C++ checks abort with a generic error and print the reason. */
let lastError = ""

const loadBinding = async (): Promise<Binding> => {
  const require = createRequire(import.meta.url)
  const file = require.resolve("@mlc-ai/web-xgrammar")
  let source = fs.readFileSync(file, "utf8")
  const edits: Array<[string, string]> = [
    ["await import('module')", "require('module')"],
    ["binding = await Module();", "binding = await Module({ printErr: exports.__printErr, print: () => {} });"],
    ["let binding = null;", "let binding = null; exports.__binding = async () => { await asyncInitBinding(); return binding; };"]
  ]
  for (const [from, to] of edits) {
    if (!source.includes(from)) throw new Error(`@mlc-ai/web-xgrammar: unexpected bundle (no "${from}"); pin a known version`)
    source = source.replace(from, to)
  }
  const wrapper = vm.runInThisContext(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, { filename: file })
  const mod = { exports: {} as Record<string, unknown> }
  mod.exports["__printErr"] = (line: string) => {
    if (line.includes("[FATAL]") || lastError === "") lastError = line
  }
  wrapper.call(mod.exports, mod.exports, require, mod, file, file.slice(0, file.lastIndexOf("/")))
  return (mod.exports["__binding"] as () => Promise<Binding>)()
}

const binding: Binding = await loadBinding()

/** Runs a binding call; a C++ check that failed becomes an Error carrying xgrammar's reason. */
const guarded = <A>(what: string, f: () => A): A => {
  lastError = ""
  try {
    return f()
  } catch (e) {
    const reason = lastError.replace(/^.*\[FATAL\]\s*\S+:\d+:\s*/, "").replace(/^Check failed: \(.*?\) is false: /, "")
    throw new Error(reason !== "" ? `${what}: ${reason}` : `${what}: ${e instanceof Error ? e.message : String(e)}`)
  }
}

/** How schemas are turned into grammars: compact separators, no free whitespace (fewer tokens, nothing to loop on). */
const SCHEMA_OPTIONS = { anyWhitespace: false, separators: { first: ",", second: ":" } } as const

const JSON_OBJECT = JSON.stringify({ type: "object" })

// ---- exact integer ranges ----

/** EBNF of the decimal numbers of one length n from s to t (equal-length digit strings, s <= t). */
const sameLength = (s: string, t: string): string => {
  if (s === t) return `"${s}"`
  if (s.length === 1) return `[${s}-${t}]`
  const rest = s.length - 1
  if (s[0] === t[0]) return `"${s[0]}" (${sameLength(s.slice(1), t.slice(1))})`
  const zeros = "0".repeat(rest)
  const nines = "9".repeat(rest)
  if (s.slice(1) === zeros && t.slice(1) === nines) return `[${s[0]}-${t[0]}] [0-9]{${rest}}`
  const parts: Array<string> = []
  const s0 = Number(s[0])
  const t0 = Number(t[0])
  let from = s0
  let to = t0
  if (s.slice(1) !== zeros) {
    parts.push(`"${s0}" (${sameLength(s.slice(1), nines)})`)
    from = s0 + 1
  }
  if (t.slice(1) !== nines) to = t0 - 1
  if (from <= to) parts.push(`[${from}-${to}] [0-9]{${rest}}`)
  if (t.slice(1) !== nines) parts.push(`"${t0}" (${sameLength(zeros, t.slice(1))})`)
  return parts.join(" | ")
}

/** EBNF of the canonical decimals (no leading zero) of the integers a..b, 0 <= a <= b (b may be Infinity). */
const nonNegative = (a: number, b: number): string => {
  const parts: Array<string> = []
  const digits = (n: number) => String(n).length
  const last = Number.isFinite(b) ? digits(b) : digits(a)
  for (let len = digits(a); len <= last; len++) {
    const lo = Math.max(a, len === 1 ? 0 : 10 ** (len - 1))
    const hi = Math.min(b, 10 ** len - 1)
    if (lo <= hi) parts.push(sameLength(String(lo), String(hi)))
  }
  if (!Number.isFinite(b)) parts.push(`[1-9] [0-9]{${last}} [0-9]*`)
  return parts.map((p) => `(${p})`).join(" | ")
}

/** EBNF of the JSON integers lo..hi (either may be infinite); undefined when the range is empty. */
export const integerRangeEbnf = (lo: number, hi: number): string | undefined => {
  if (lo > hi) return undefined
  const parts: Array<string> = []
  if (lo < 0) parts.push(`"-" (${nonNegative(hi < 0 ? -hi : 1, -lo)})`)
  if (hi >= 0) parts.push(nonNegative(Math.max(lo, 0), hi))
  return parts.join(" | ")
}

const PLACEHOLDER = "chorus-exact-integer-range"

/**
 * xgrammar 0.1.27 bounds integers inexactly (`maximum: 120` admits 121-129, `minimum: 5` admits 1-4, `minimum: -120`
 * refuses -1). Every integer schema with bounds (and nothing else that constrains the value) becomes a placeholder
 * constant here, and its exact grammar replaces the placeholder in xgrammar's EBNF.
 */
const exactIntegers = (schema: string): { readonly schema: string; readonly ranges: ReadonlyArray<string> } => {
  const ranges: Array<string> = []
  const skip = new Set(["enum", "const", "default", "examples"])
  const walk = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(walk)
    if (typeof node !== "object" || node === null) return node
    const o = node as Record<string, unknown>
    const num = (k: string) => (typeof o[k] === "number" && Number.isFinite(o[k]) ? (o[k] as number) : undefined)
    const bounded = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"].some((k) => num(k) !== undefined)
    const others = ["enum", "const", "multipleOf", "anyOf", "oneOf", "allOf", "not", "$ref"].some((k) => k in o)
    if (o["type"] === "integer" && bounded && !others) {
      let lo = -Infinity
      let hi = Infinity
      if (num("minimum") !== undefined) lo = Math.ceil(num("minimum")!)
      if (num("exclusiveMinimum") !== undefined) lo = Math.max(lo, Math.floor(num("exclusiveMinimum")!) + 1)
      if (num("maximum") !== undefined) hi = Math.floor(num("maximum")!)
      if (num("exclusiveMaximum") !== undefined) hi = Math.min(hi, Math.ceil(num("exclusiveMaximum")!) - 1)
      const safe = (n: number) => !Number.isFinite(n) || Math.abs(n) <= Number.MAX_SAFE_INTEGER
      const ebnf = safe(lo) && safe(hi) ? integerRangeEbnf(lo, hi) : undefined
      if (ebnf !== undefined) {
        ranges.push(ebnf)
        const { type: _t, minimum: _a, maximum: _b, exclusiveMinimum: _c, exclusiveMaximum: _d, ...rest } = o
        return { ...rest, const: `${PLACEHOLDER}-${ranges.length - 1}` }
      }
    }
    return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, skip.has(k) ? v : walk(v)]))
  }
  const rewritten = walk(JSON.parse(schema))
  return ranges.length === 0 ? { schema, ranges } : { schema: JSON.stringify(rewritten), ranges }
}

/**
 * The grammar of a schema, as EBNF, with two fixes to xgrammar 0.1.27: exact integer bounds (above), and strings of
 * bounded length (`maxLength`), which it writes as `[^"\\\r\n]{0,n}` and so lets raw control characters (a tab)
 * in: invalid JSON. Its unbounded strings already exclude U+0000-U+001F; bounded ones are made to as well.
 */
const schemaEbnf = (schema: string, strict: boolean): string => {
  const exact = exactIntegers(schema)
  let ebnf = binding._JSONSchemaToEBNF(exact.schema, SCHEMA_OPTIONS.anyWhitespace, undefined, SCHEMA_OPTIONS.separators, strict, undefined, binding.JSONFormat.kJSON)
    .replaceAll(String.raw`[^"\\\r\n]`, String.raw`[^\0-\x1f"\\]`)
  exact.ranges.forEach((range, i) => {
    ebnf = ebnf.replaceAll(`"\\"${PLACEHOLDER}-${i}\\""`, `(${range})`)
  })
  return ebnf
}

/** The grammar of a schema, parsed (a failed check throws with xgrammar's reason). */
const schemaGrammar = (schema: string, strict: boolean): Deletable =>
  guarded("invalid JSON schema", () => new binding.Grammar.FromEBNF(schemaEbnf(schema, strict), "root"))

/** Whether the grammar of `schema` (as the worker compiles it) accepts `text` whole. For tests: slow. */
export const schemaAccepts = (schema: string, text: string): boolean => {
  const strings = binding.vecStringFromJSArray([])
  const info = new binding.TokenizerInfo(strings, "RAW", 0, undefined, false)
  const compiler = new binding.GrammarCompiler(info, 1, false)
  const grammar = schemaGrammar(schema, true)
  const compiled = compiler.CompileGrammar(grammar)
  const matcher = new binding.GrammarMatcher(compiled, undefined, true, -1)
  try {
    return matcher.AcceptString(text, false) && matcher.IsTerminated()
  } finally {
    for (const d of [matcher, compiled, grammar, compiler, info, strings]) d.delete()
  }
}

/** Results of checkJsonSchema by schema text, the latest few. */
const checked = new Map<string, string | undefined>()

/**
 * Checks a JSON schema the way the worker will compile it; returns why it cannot be used, or undefined. Needs no
 * vocabulary, so the HTTP layer runs it before admission.
 */
export const checkJsonSchema = (schema: string): string | undefined => {
  if (checked.has(schema)) return checked.get(schema)
  let reason: string | undefined
  try {
    JSON.parse(schema)
    schemaGrammar(schema, true).delete()
  } catch (e) {
    reason = e instanceof Error ? e.message : String(e)
  }
  if (checked.size >= 256) checked.delete(checked.keys().next().value!)
  checked.set(schema, reason)
  return reason
}

/** byte -> the character GPT-2's byte-level BPE writes for it. */
const BYTE_CHARS: ReadonlyArray<string> = (() => {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)
  const out = new Array<string>(256)
  let next = 256
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(printable(b) ? b : next++)
  return out
})()

/** The vocabulary of a codec that knows each token's bytes (undefined bytes: a special token). */
export const grammarVocab = (
  vocabSize: number,
  tokenBytes: (id: number) => Uint8Array | undefined,
  stopTokenIds: ReadonlyArray<number>
): GrammarVocab => {
  const tokens = new Array<string>(vocabSize)
  for (let id = 0; id < vocabSize; id++) {
    const bytes = tokenBytes(id)
    let s = ""
    if (bytes !== undefined) for (const b of bytes) s += BYTE_CHARS[b]
    tokens[id] = s
  }
  return { tokens, stopTokenIds }
}

/**
 * One matcher per sequence: the mask of the next token, then the token taken. Once the grammar is complete the
 * mask allows only the stop tokens.
 */
export class GrammarMatcher {
  readonly #native: NativeMatcher
  readonly #vocabSize: number
  readonly stopTokenIds: ReadonlyArray<number>

  constructor(native: NativeMatcher, vocabSize: number, stopTokenIds: ReadonlyArray<number>) {
    this.#native = native
    this.#vocabSize = vocabSize
    this.stopTokenIds = stopTokenIds
  }

  /**
   * Bit i of word i>>5 set: id i allowed (ceil(vocabSize / 32) words). Written into `into` when it is large enough
   * (the sampler reuses one buffer: a step asks for up to one mask per sequence), its words past the mask zeroed,
   * else into a new array.
   */
  nextTokenBitmask(into?: Int32Array): Int32Array {
    const vec = this.#native.GetNextTokenBitmask(this.#vocabSize)
    try {
      const view = binding.vecIntToView(vec)
      if (into === undefined || into.length < view.length) return view.slice()
      into.set(view)
      // ids the matcher does not know (a padded vocabulary, a larger buffer) are disallowed
      if (view.length < into.length) into.fill(0, view.length)
      return into
    } finally {
      vec.delete()
    }
  }

  /**
   * Advances over a generated token; false when the grammar rejects it. A rejected token leaves the matcher as it
   * was (xgrammar undoes the characters it tried; `GrammarSampleFirst.test.ts` checks it on special, padded and random ids), so
   * the sampler may offer a token before it knows the mask.
   */
  accept(token: number): boolean {
    return this.#native.AcceptToken(token, false)
  }

  /** Whether `token` is one of the model's stop tokens (the grammar allows them only once it is complete). */
  isStopToken(token: number): boolean {
    return this.stopTokenIds.includes(token)
  }

  /** The grammar is complete and a stop token was accepted. */
  get terminated(): boolean {
    return this.#native.IsTerminated()
  }

  dispose(): void {
    this.#native.delete()
  }
}

/** Compiled grammars of one vocabulary, cached by their spec (schemas by their text). */
export class GrammarCompiler {
  readonly vocabSize: number
  readonly tokenizerVocabSize: number
  readonly stopTokenIds: ReadonlyArray<number>
  readonly #compiler: NativeCompiler
  readonly #compiled = new Map<string, NativeCompiled>()
  /** Compiled grammars kept; the least recently used beyond this are freed (their matchers keep their own reference). */
  static readonly CACHE_SIZE = 64

  /** `vocabSize`: the model's logits width, which may exceed the tokenizer's (those ids are never allowed). */
  constructor(vocab: GrammarVocab, vocabSize: number) {
    this.vocabSize = vocabSize
    this.tokenizerVocabSize = Math.min(vocab.tokens.length, vocabSize)
    this.stopTokenIds = vocab.stopTokenIds.filter((id) => id < this.tokenizerVocabSize)
    const tokens = vocab.tokens.length > vocabSize ? vocab.tokens.slice(0, vocabSize) : vocab.tokens
    const strings = binding.vecStringFromJSArray(tokens)
    const stop = binding.vecIntFromJSArray(this.stopTokenIds)
    const info = guarded("xgrammar tokenizer info", () => new binding.TokenizerInfo(strings, "BYTE_LEVEL", vocabSize, stop, false))
    strings.delete()
    stop.delete()
    this.#compiler = new binding.GrammarCompiler(info, 1, true)
    info.delete()
  }

  #compile(spec: GrammarSpec): NativeCompiled {
    const key = spec.kind === "json" ? "" : spec.schema
    const hit = this.#compiled.get(key)
    if (hit !== undefined) {
      this.#compiled.delete(key)
      this.#compiled.set(key, hit)
      return hit
    }
    // json_object is a JSON object (OpenAI's rule, where xgrammar's built-in JSON grammar also allows any value),
    // with any members: the schema {"type": "object"} outside strict mode, written compactly like schemas.
    const grammar = spec.kind === "json" ? schemaGrammar(JSON_OBJECT, false) : schemaGrammar(spec.schema, true)
    let compiled: NativeCompiled
    try {
      compiled = guarded("grammar compilation", () => this.#compiler.CompileGrammar(grammar))
    } finally {
      grammar.delete()
    }
    this.#compiled.set(key, compiled)
    if (this.#compiled.size > GrammarCompiler.CACHE_SIZE) {
      const [oldest, value] = this.#compiled.entries().next().value!
      this.#compiled.delete(oldest)
      value.delete()
    }
    return compiled
  }

  matcher(spec: GrammarSpec): GrammarMatcher {
    const compiled = this.#compile(spec)
    const native = guarded("grammar matcher", () => new binding.GrammarMatcher(compiled, undefined, false, -1))
    return new GrammarMatcher(native, this.vocabSize, this.stopTokenIds)
  }
}
