/**
 * Streaming detokenization. Decoding each token alone splits multi-byte characters (🚀 is three byte-level tokens,
 * each decoding to U+FFFD) and loses context-dependent spacing, so this decodes a small sliding window instead:
 * the text of `window[0, read)` is already emitted, the text of the whole window minus that is the new text.
 * This is the prefix-offset scheme of vLLM's `detokenize_incrementally` and TGI's `decode_token`; each step decodes
 * a handful of tokens, so a step costs O(1) however long the stream gets. Model-independent: it needs only `decode`.
 */

export interface Detokenizer {
  readonly decode: (ids: ReadonlyArray<number>, options?: { readonly skipSpecialTokens?: boolean }) => string
}

export interface IncrementalDecoderOptions {
  /**
   * Tokens that precede the stream (the prompt) and are not emitted. The last few give the first generated
   * tokens their context (needed by SentencePiece-style decoders that drop a leading space at text start).
   */
  readonly context?: ReadonlyArray<number>
}

/** How many context tokens to keep before the first generated one (vLLM uses 5). */
const CONTEXT_TOKENS = 5

const REPLACEMENT = "\uFFFD"

export class IncrementalDecoder {
  private readonly tokenizer: Detokenizer
  /** Tokens from `prefixOffset` on; earlier ones are dropped once their text is final. */
  private window: number[]
  /** Index in `window` where not-yet-emitted tokens start. */
  private readOffset: number

  constructor(tokenizer: Detokenizer, options?: IncrementalDecoderOptions) {
    this.tokenizer = tokenizer
    const context = options?.context ?? []
    this.window = context.slice(Math.max(0, context.length - CONTEXT_TOKENS))
    this.readOffset = this.window.length
  }

  /** Feeds one token id; returns the text it completes (often "", e.g. mid-character or a skipped special token). */
  push(id: number): string {
    this.window.push(id)
    const prefixText = this.decode(this.window.slice(0, this.readOffset))
    const fullText = this.decode(this.window)
    // Emitting only text that does not end in U+FFFD keeps every emitted prefix final: a later token can complete
    // an incomplete character but never change complete ones. (A real U+FFFD at the very end waits for flush.)
    if (fullText.length <= prefixText.length || fullText.endsWith(REPLACEMENT)) return ""
    // Tokens before readOffset stop mattering: the new prefix starts where the emitted text ended.
    this.window = this.window.slice(this.readOffset)
    this.readOffset = this.window.length
    return fullText.slice(prefixText.length)
  }

  /** Feeds several ids; returns the concatenated new text. */
  pushAll(ids: Iterable<number>): string {
    let text = ""
    for (const id of ids) text += this.push(id)
    return text
  }

  /** Returns whatever is still held back (an incomplete character at the end of the stream decodes to U+FFFD). */
  flush(): string {
    const prefixText = this.decode(this.window.slice(0, this.readOffset))
    const fullText = this.decode(this.window)
    this.window = this.window.slice(this.readOffset)
    this.readOffset = this.window.length
    return fullText.length > prefixText.length ? fullText.slice(prefixText.length) : ""
  }

  private decode(ids: ReadonlyArray<number>): string {
    return ids.length === 0 ? "" : this.tokenizer.decode(ids, { skipSpecialTokens: true })
  }
}
