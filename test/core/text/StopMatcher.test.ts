import { describe, expect, it } from "vitest"
import { StopMatcher } from "../../../src/core/text/StopMatcher.ts"

const run = (stops: ReadonlyArray<string>, pieces: ReadonlyArray<string>) => {
  const matcher = new StopMatcher(stops)
  const emits: string[] = []
  let stopped = false
  for (const piece of pieces) {
    const r = matcher.push(piece)
    emits.push(r.emit)
    stopped = r.stopped
  }
  return { emits, stopped, rest: matcher.flush() }
}

describe("StopMatcher", () => {
  it("passes text through when there are no stop strings", () => {
    expect(run([], ["a", "b"])).toEqual({ emits: ["a", "b"], stopped: false, rest: "" })
    expect(run([""], ["a"])).toEqual({ emits: ["a"], stopped: false, rest: "" })
  })

  it("stops on a stop string split across pieces and does not emit it", () => {
    expect(run(["\nUser:"], ["Hello", "\nUs", "er: more"])).toEqual({
      emits: ["Hello", "", ""],
      stopped: true,
      rest: ""
    })
  })

  it("emits the text before a stop string inside one piece", () => {
    expect(run(["STOP"], ["abc STOP def"])).toEqual({ emits: ["abc "], stopped: true, rest: "" })
  })

  it("releases held text once it can no longer start a stop string", () => {
    expect(run(["STOP"], ["go ST", "AR"])).toEqual({ emits: ["go ", "STAR"], stopped: false, rest: "" })
  })

  it("holds back only the suffix that could start a stop string", () => {
    expect(run(["aab"], ["a", "a", "a", "b"])).toEqual({ emits: ["", "", "a", ""], stopped: true, rest: "" })
  })

  it("returns the held text on flush at the end of the stream", () => {
    expect(run(["</s>"], ["end </"])).toEqual({ emits: ["end "], stopped: false, rest: "</" })
  })

  it("stops at the earliest stop string when several match", () => {
    expect(run(["world", "lo w"], ["hello world"])).toEqual({ emits: ["hel"], stopped: true, rest: "" })
  })

  it("emits nothing after it stopped", () => {
    const matcher = new StopMatcher(["x"])
    expect(matcher.push("axb")).toEqual({ emit: "a", stopped: true })
    expect(matcher.stopped).toBe(true)
    expect(matcher.push("more")).toEqual({ emit: "", stopped: true })
    expect(matcher.flush()).toBe("")
  })

  it("agrees with a whole-text search for every way of splitting the text", () => {
    const stops = ["<|im_end|>", "\n\n###", "END"]
    const texts = ["plain text with no stop at all <|im", "reply\n\n## not yet\n\n### Next", "a <|im_end|> b END", "EN"]
    let seed = 7
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed / 2147483648
    }
    for (const text of texts) {
      const firsts = stops.map((s) => text.indexOf(s)).filter((i) => i !== -1)
      const expected = firsts.length === 0 ? text : text.slice(0, Math.min(...firsts))
      for (let trial = 0; trial < 50; trial++) {
        const pieces: string[] = []
        for (let i = 0; i < text.length;) {
          const n = 1 + Math.floor(random() * 4)
          pieces.push(text.slice(i, i + n))
          i += n
        }
        const r = run(stops, pieces)
        expect(r.emits.join("") + r.rest).toBe(expected)
        expect(r.stopped).toBe(firsts.length > 0)
      }
    }
  })
})
