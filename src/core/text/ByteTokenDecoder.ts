/**
 * Streaming detokenization for byte-level BPE vocabularies (GPT-2 style, as Llama 3 uses): every token is a fixed
 * byte string, so the text of a stream is the UTF-8 decoding of the concatenated bytes. A streaming `TextDecoder`
 * holds back an incomplete multi-byte character until its last byte arrives, so nothing is ever split and each
 * token costs O(its bytes) — unlike a window re-decode (`IncrementalDecoder`), which calls the tokenizer twice per
 * token. Produces the same text as the tokenizer's own `decode` with special tokens skipped.
 */

/** GPT-2's byte <-> printable character table: printable Latin-1 bytes map to themselves, the rest to 256 + n. */
const unicodeToByte = (() => {
  const map = new Map<number, number>()
  let n = 0
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
    map.set(printable ? b : 256 + n++, b)
  }
  return map
})()

/** The bytes a byte-level vocabulary entry stands for, or undefined if it is not byte-level text. */
export const byteLevelTokenBytes = (token: string): Uint8Array | undefined => {
  const out = new Uint8Array(token.length)
  let i = 0
  for (const ch of token) {
    const b = unicodeToByte.get(ch.codePointAt(0)!)
    if (b === undefined) return undefined
    out[i++] = b
  }
  return out.subarray(0, i)
}

/** id -> bytes; `undefined` marks tokens that produce no text (special tokens). */
export type TokenBytes = (id: number) => Uint8Array | undefined

export class ByteTokenDecoder {
  private readonly bytes: TokenBytes
  private readonly decoder = new TextDecoder("utf-8")

  constructor(bytes: TokenBytes) {
    this.bytes = bytes
  }

  /** Feeds one token id; returns the text it completes ("" mid-character or for a special token). */
  push(id: number): string {
    const b = this.bytes(id)
    return b === undefined || b.length === 0 ? "" : this.decoder.decode(b, { stream: true })
  }

  /** Ends the stream: an incomplete character at the very end comes out as U+FFFD, as a full decode would give. */
  flush(): string {
    return this.decoder.decode()
  }
}
