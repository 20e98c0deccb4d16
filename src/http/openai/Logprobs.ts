/**
 * OpenAI's logprobs shapes from the engine's per-token logprobs (computed in the shard from the raw model logits):
 * chat's `logprobs.content[]` entries and the completions API's `{ tokens, token_logprobs, top_logprobs,
 * text_offset }`, plus the prompt's logprobs for `echo` (from the prompt logits the engine returns).
 */
import type { TextCodec } from "../../core/ModelAdapter.ts"
import type { TokenLogprobs } from "../../core/Request.ts"
import { tokenLogprobs } from "../../core/shard/SamplerTable.ts"

interface TokenText {
  readonly token: string
  readonly bytes: ReadonlyArray<number>
}

const utf8 = new TextDecoder("utf-8")
const cache = new WeakMap<TextCodec, Map<number, TokenText>>()

/** A token as OpenAI shows it: its text (a partial character shows as U+FFFD) and its UTF-8 bytes. */
export const tokenText = (codec: TextCodec, id: number): TokenText => {
  let byId = cache.get(codec)
  if (byId === undefined) cache.set(codec, byId = new Map())
  const hit = byId.get(id)
  if (hit !== undefined) return hit
  const raw = codec.tokenBytes?.(id)
  const info = raw !== undefined
    ? { token: utf8.decode(raw), bytes: Array.from(raw) }
    : (() => {
      const token = codec.decode([id])
      return { token, bytes: Array.from(Buffer.from(token, "utf8")) }
    })()
  byId.set(id, info)
  return info
}

/** One entry of chat's `choices[].logprobs.content`. */
export const chatLogprob = (codec: TextCodec, tokenId: number, lp: TokenLogprobs) => {
  const own = tokenText(codec, tokenId)
  return {
    token: own.token,
    logprob: lp.logprob,
    bytes: own.bytes,
    top_logprobs: lp.top.map((t) => {
      const alt = tokenText(codec, t.tokenId)
      return { token: alt.token, logprob: t.logprob, bytes: alt.bytes }
    })
  }
}

export interface CompletionLogprobs {
  readonly tokens: Array<string>
  readonly token_logprobs: Array<number | null>
  readonly top_logprobs: Array<Record<string, number> | null>
  readonly text_offset: Array<number>
}

/**
 * Builds the completions API's logprobs, token after token; `offset` runs over the whole text of the choice (echoed
 * prompt included), so streamed chunks carry absolute offsets.
 */
export class CompletionLogprobsBuilder {
  private offset = 0
  private readonly codec: TextCodec

  constructor(codec: TextCodec) {
    this.codec = codec
  }

  static empty = (): CompletionLogprobs => ({ tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] })

  /** Appends a token; `lp` undefined: a token without a logprob (the first prompt token). */
  add(into: CompletionLogprobs, tokenId: number, lp: TokenLogprobs | undefined): void {
    const { token } = tokenText(this.codec, tokenId)
    into.tokens.push(token)
    into.text_offset.push(this.offset)
    this.offset += token.length
    if (lp === undefined) {
      into.token_logprobs.push(null)
      into.top_logprobs.push(null)
      return
    }
    into.token_logprobs.push(lp.logprob)
    // OpenAI: the top `logprobs` alternatives, and always the sampled token too.
    const top: Record<string, number> = {}
    for (const t of lp.top) top[tokenText(this.codec, t.tokenId).token] ??= t.logprob
    top[token] ??= lp.logprob
    into.top_logprobs.push(top)
  }
}

/**
 * The prompt's logprobs from its logits `[positions, vocab]`: position i's row scores token i + 1; the first token
 * has none. Rows beyond the ids (or ids beyond the rows) are ignored.
 */
export const promptLogprobs = (
  ids: ArrayLike<number>,
  logits: Float32Array,
  vocab: number,
  top: number
): Array<TokenLogprobs | undefined> => {
  const out: Array<TokenLogprobs | undefined> = [undefined]
  const rows = Math.floor(logits.length / vocab)
  for (let i = 1; i < ids.length; i++) {
    if (i - 1 >= rows) {
      out.push(undefined)
      continue
    }
    const lp = tokenLogprobs(logits, (i - 1) * vocab, vocab, ids[i]!, top)
    const alternatives: Array<{ tokenId: number; logprob: number }> = []
    for (let j = 1; j < lp.ids.length; j++) alternatives.push({ tokenId: lp.ids[j]!, logprob: lp.values[j]! })
    out.push({ logprob: lp.values[0]!, top: alternatives })
  }
  return out
}
