/**
 * An incremental Server-Sent-Events scanner over raw response bytes. It hands each `data:` payload to its sink as
 * a byte range of the chunk it arrived in, without decoding to strings: at hundreds of streams and tens of
 * thousands of events a second the load generator must not be the bottleneck it measures. Only a line split
 * across two TCP reads is copied.
 */

export interface SseSink {
  /** One `data:` payload: bytes [start, end) of `buf` (valid only during the call). */
  data(buf: Buffer, start: number, end: number): void
}

const LF = 10
const CR = 13
const SPACE = 32
const DATA = Buffer.from("data:")

export class SseScanner {
  private rest: Buffer | undefined = undefined
  private readonly sink: SseSink

  constructor(sink: SseSink) {
    this.sink = sink
  }

  feed(chunk: Buffer): void {
    let buf = chunk
    if (this.rest !== undefined) {
      buf = Buffer.concat([this.rest, chunk])
      this.rest = undefined
    }
    let start = 0
    for (;;) {
      const nl = buf.indexOf(LF, start)
      if (nl === -1) break
      let end = nl
      if (end > start && buf[end - 1] === CR) end--
      if (end - start >= 5 && buf[start] === DATA[0] && buf[start + 1] === DATA[1] && buf[start + 2] === DATA[2] && buf[start + 3] === DATA[3] && buf[start + 4] === DATA[4]) {
        let p = start + 5
        if (p < end && buf[p] === SPACE) p++
        this.sink.data(buf, p, end)
      }
      start = nl + 1
    }
    if (start < buf.length) this.rest = Buffer.from(buf.subarray(start))
  }
}

/**
 * Where the value of `"key":` starts inside [start, end), skipping whitespace; -1 if the key is absent. `key` is
 * the bytes `"name"`. A key inside a string value is escaped (`\"name\"`) and so never matches.
 */
export const valueAfterKey = (buf: Buffer, start: number, end: number, key: Buffer): number => {
  const first = key[0]!
  const n = key.length
  for (let i = start; i + n < end; i++) {
    if (buf[i] !== first) continue
    let j = 1
    while (j < n && buf[i + j] === key[j]) j++
    if (j < n) continue
    let p = i + n
    while (p < end && (buf[p] === SPACE || buf[p] === 9)) p++
    if (buf[p] !== 58 /* : */) continue
    p++
    while (p < end && (buf[p] === SPACE || buf[p] === 9)) p++
    return p
  }
  return -1
}
