// The incremental SSE scanner must give the same payloads however TCP splits the stream.
import { describe, expect, it } from "vitest"
import { SseScanner, valueAfterKey } from "../../src/bench/SseScanner.ts"

const collect = (chunks: ReadonlyArray<Buffer>): Array<string> => {
  const out: Array<string> = []
  const scanner = new SseScanner({ data: (buf, s, e) => out.push(buf.toString("utf8", s, e)) })
  for (const c of chunks) scanner.feed(c)
  return out
}

describe("SseScanner", () => {
  const stream = Buffer.from(': comment\n\ndata: {"a":"é"}\n\nevent: x\ndata:{"b":2}\r\n\r\ndata: [DONE]\n\n')
  const expected = ['{"a":"é"}', '{"b":2}', "[DONE]"]

  it("reads data lines, with or without a space, LF or CRLF, and skips comments and other fields", () => {
    expect(collect([stream])).toEqual(expected)
  })

  it("gives the same payloads for every split point and for one byte at a time", () => {
    for (let cut = 1; cut < stream.length; cut++) {
      expect(collect([stream.subarray(0, cut), stream.subarray(cut)])).toEqual(expected)
    }
    expect(collect([...stream].map((b) => Buffer.from([b])))).toEqual(expected)
  })

  it("finds a key's value across whitespace, and not a key quoted inside a string", () => {
    const key = Buffer.from('"content"')
    const buf = Buffer.from('{"delta": {"content" :  "hi"}}')
    expect(buf[valueAfterKey(buf, 0, buf.length, key)]).toBe(34)
    expect(buf.toString("utf8", valueAfterKey(buf, 0, buf.length, key))).toBe('"hi"}}')
    const escaped = Buffer.from('{"delta":{"text":"say \\"content\\": no"}}')
    expect(valueAfterKey(escaped, 0, escaped.length, key)).toBe(-1)
    // The range bounds the search.
    expect(valueAfterKey(buf, 0, 5, key)).toBe(-1)
  })
})
