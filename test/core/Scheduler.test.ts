// The scheduler alone, no model: each step's work from `schedule()`, sampled tokens back through `update()`.
// Admission, token-budget chunking, decode + prefill in one step, preemption when blocks run out, prefix hits,
// frees on abort, the stop rule, decode ahead.
import { describe, expect, it } from "vitest"
import type { ValidatedRequest } from "../../src/core/Request.ts"
import { greedy } from "../../src/core/sampling/SamplingParams.ts"
import { MIN_ROW_REUSE, Scheduler, type SchedulerConfig, type SchedulerOutput } from "../../src/core/Scheduler.ts"

const EOS = 999
const request = (prompt: ReadonlyArray<number>, overrides: Partial<ValidatedRequest> = {}): ValidatedRequest => ({
  promptTokenIds: Int32Array.from(prompt),
  maxTokens: 100,
  sampling: greedy,
  stop: [],
  ignoreEos: false,
  promptLogits: "none",
  truncatedMessages: 0,
  priority: 0,
  timeoutMs: Number.POSITIVE_INFINITY,
  ...overrides
})
const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i)
const make = (config: Partial<SchedulerConfig> = {}) =>
  new Scheduler({
    maxNumSeqs: 8,
    maxNumBatchedTokens: 64,
    contextLength: 128,
    blockSize: 4,
    numBlocks: 1 + 8 * 32,
    enablePrefixCaching: true,
    stopTokenIds: [EOS],
    ...config
  })
/** Runs a step as a model would: every sampling entry gets `token`. */
const step = (s: Scheduler, token = 7) => {
  const out = s.schedule()
  const sampled = s.update(out, new Int32Array(out.entries.filter((e) => e.samples).length).fill(token))
  return { out, sampled }
}
const shape = (out: SchedulerOutput) => out.entries.map((e) => [e.sequence.id, e.start, e.numTokens, e.samples])

describe("Scheduler", () => {
  it("prefills a prompt in one step, then decodes one token per step", () => {
    const s = make()
    const a = s.add(request(range(0, 10)))
    const first = step(s)
    expect(shape(first.out)).toEqual([[a.id, 0, 10, true]])
    expect(first.out.entries[0]!.isNew).toBe(true)
    expect(first.sampled.map((t) => t.tokenId)).toEqual([7])
    const second = step(s)
    expect(shape(second.out)).toEqual([[a.id, 10, 1, true]])
    expect(second.out.entries[0]!.isNew).toBe(false)
    expect(a.outputTokenIds).toEqual([7, 7])
  })

  it("one rule per step: decodes and a new prompt's chunk share a step, within the token budget", () => {
    const s = make({ maxNumBatchedTokens: 16 })
    const a = s.add(request(range(0, 5)))
    step(s)
    const b = s.add(request(range(100, 40)))
    const { out } = step(s)
    // a decodes (1 token), b's first chunk takes the remaining 15.
    expect(shape(out)).toEqual([[a.id, 5, 1, true], [b.id, 0, 15, false]])
    expect(out.numTokens).toBe(16)
    expect(shape(step(s).out)).toEqual([[a.id, 6, 1, true], [b.id, 15, 15, false]])
    expect(shape(step(s).out)).toEqual([[a.id, 7, 1, true], [b.id, 30, 10, true]])
    expect(b.outputTokenIds).toEqual([7])
  })

  it("admits no more than maxNumSeqs at once; the rest wait in order", () => {
    const s = make({ maxNumSeqs: 2 })
    const seqs = [0, 1, 2].map((i) => s.add(request([i, i, i])))
    const { out } = step(s)
    expect(out.admitted).toEqual(seqs.slice(0, 2))
    expect(s.numWaiting).toBe(1)
    expect(s.waitingSequences()[0]).toBe(seqs[2])
  })

  it("stops on end of turn, max tokens and the context, and frees the blocks at once", () => {
    const s = make({ contextLength: 12 })
    const a = s.add(request([1, 2, 3], { maxTokens: 2, ignoreEos: true }))
    const b = s.add(request([1, 2, 3], { maxTokens: 50 }))
    const c = s.add(request(range(0, 10), { maxTokens: 50, ignoreEos: true }))
    step(s)
    const { sampled } = step(s, EOS)
    expect(sampled.find((t) => t.sequence === a)!.stop).toBe("max_tokens")
    expect(sampled.find((t) => t.sequence === b)!.stop).toBe("eos")
    // c: 10 prompt + 2 tokens = 12 = the context.
    expect(sampled.find((t) => t.sequence === c)!.stop).toBe("context")
    expect(s.numRunning).toBe(0)
    expect(s.kv.pool.numFree).toBe(s.kv.pool.capacity)
  })

  it("ignore_eos keeps going past the end-of-turn token", () => {
    const s = make()
    const a = s.add(request([1], { ignoreEos: true, maxTokens: 3 }))
    step(s, EOS)
    expect(step(s, EOS).sampled[0]!.stop).toBeUndefined()
    expect(step(s, EOS).sampled[0]!.stop).toBe("max_tokens")
    expect(a.outputTokenIds).toEqual([EOS, EOS, EOS])
  })

  it("a dropped sequence (abort) leaves before the next step and its blocks are freed; its in-flight token is discarded", () => {
    const s = make()
    const a = s.add(request(range(0, 9)))
    const b = s.add(request(range(50, 9)))
    step(s)
    const out = s.schedule()
    s.drop(a) // the client left while the step ran
    const sampled = s.update(out, Int32Array.of(3, 4))
    expect(sampled.map((t) => t.sequence)).toEqual([b])
    expect(s.collectDropped()).toEqual([a])
    expect(s.kv.numBlocksOf(a)).toBe(0)
    expect(shape(s.schedule())).toEqual([[b.id, 10, 1, true]])
  })

  it("decode ahead: the step after one in flight decodes each sequence's pending token, then takes both tokens back in order", () => {
    const s = make()
    const a = s.add(request(range(0, 9)))
    const b = s.add(request(range(50, 5)))
    step(s)
    const first = s.schedule()
    const ahead = s.scheduleAhead(first)!
    expect(shape(ahead)).toEqual([[a.id, 10, 1, true], [b.id, 6, 1, true]])
    expect(ahead.entries.every((e) => e.feedback === true && !e.isNew && e.returnLogits === 0)).toBe(true)
    expect(ahead.entries[0]!.blockIds).toEqual(s.kv.blockIds(a)) // room for position 10 allocated
    // One step ahead at most, and none behind a step that is itself ahead of another.
    expect(s.scheduleAhead(first)).toBeUndefined()
    expect(shape(s.schedule())).toEqual([])
    // Once the first is back, the chain goes on: a step ahead of the one ahead.
    s.update(first, Int32Array.of(3, 4))
    const next = s.scheduleAhead(ahead)!
    expect(shape(next)).toEqual([[a.id, 11, 1, true], [b.id, 7, 1, true]])
    s.update(ahead, Int32Array.of(5, 6))
    s.update(next, Int32Array.of(8, 9))
    expect([a.outputTokenIds, b.outputTokenIds]).toEqual([[7, 3, 5, 8], [7, 4, 6, 9]])
    expect([a.numComputedTokens, b.numComputedTokens]).toEqual([12, 8])
    expect(shape(s.schedule())).toEqual([[a.id, 12, 1, true], [b.id, 8, 1, true]])
  })

  it("decode ahead waits for new sequences with a free seat and for prompts in progress, and stops short of max tokens, the context and grammars", () => {
    const s = make({ maxNumBatchedTokens: 8 })
    const a = s.add(request(range(0, 4)))
    const first = s.schedule()
    const b = s.add(request(range(20, 12)))
    expect(s.scheduleAhead(first)).toBeUndefined() // b waits: the next step takes it with a's decode
    s.update(first, Int32Array.of(1))
    const mixed = s.schedule() // a's decode and b's first chunk (7 of 12 tokens: it does not sample)
    expect(shape(mixed)).toEqual([[a.id, 4, 1, true], [b.id, 0, 7, false]])
    expect(s.scheduleAhead(mixed)).toBeUndefined()

    // The pending token is the last one allowed: max tokens 2, or the context of 14 after a 12-token prompt.
    const limits = make({ contextLength: 14 })
    limits.add(request(range(0, 4), { maxTokens: 2 }))
    limits.add(request(range(40, 12), { ignoreEos: true }))
    const near = limits.add(request(range(60, 11), { ignoreEos: true }))
    step(limits)
    expect(shape(limits.scheduleAhead(limits.schedule())!)).toEqual([[near.id, 12, 1, true]])

    // With every seat taken, a waiting sequence waits either way: the chain goes on.
    const full = make({ maxNumSeqs: 2 })
    full.add(request([1]))
    full.add(request([2]))
    step(full)
    full.add(request([3]))
    expect(full.scheduleAhead(full.schedule())?.entries).toHaveLength(2)

    // All or nothing: a sequence under a grammar, or one the step's token budget left out, would wait behind the chain.
    const g = make()
    g.add(request([1, 2]))
    g.add(request([1, 2], { sampling: { ...greedy, grammar: { kind: "json" } } }))
    expect(g.scheduleAhead(g.schedule())).toBeUndefined()
    const tight = make({ maxNumBatchedTokens: 1 })
    tight.add(request([1]))
    tight.add(request([2]))
    step(tight)
    step(tight)
    const one = tight.schedule()
    expect(one.entries).toHaveLength(1)
    expect(tight.scheduleAhead(one)).toBeUndefined()
  })

  it("decode ahead: a stop on the pending token keeps the sequence's blocks until the step ahead is back, then drops its token", () => {
    const s = make()
    const a = s.add(request(range(0, 9)))
    step(s)
    const first = s.schedule()
    const ahead = s.scheduleAhead(first)!
    const [stopped] = s.update(first, Int32Array.of(EOS))
    expect(stopped!.stop).toBe("eos")
    expect(s.collectDropped()).toEqual([]) // the step ahead still writes into its blocks
    expect(s.kv.numBlocksOf(a)).toBeGreaterThan(0)
    expect(s.update(ahead, Int32Array.of(5))).toEqual([])
    expect(s.collectDropped()).toEqual([a])
    expect(s.kv.numBlocksOf(a)).toBe(0)
    expect(a.outputTokenIds).toEqual([7, EOS])
    expect(s.numRunning).toBe(0)
  })

  it("when blocks run out, the newest running sequence is preempted and later recomputed with its output", () => {
    // 6 usable blocks of 4 tokens: two sequences of 9 tokens take 3 each; the first to grow past 12 needs a 4th.
    const s = make({ numBlocks: 7, contextLength: 24, enablePrefixCaching: false })
    const a = s.add(request(range(0, 9)))
    const b = s.add(request(range(50, 9)))
    step(s) // both prefilled: 9 in cache, a first token each
    for (let i = 0; i < 3; i++) step(s) // 12 in cache each: 3 blocks full
    const { out } = step(s) // a's 13th token needs a 4th block: b is preempted
    expect(out.preempted).toEqual([b])
    expect(shape(out)).toEqual([[a.id, 12, 1, true]])
    expect(b.status).toBe("waiting")
    expect(b.numComputedTokens).toBe(0)
    expect(b.outputTokenIds.length).toBe(4)
    expect(s.numPreemptions).toBe(1)
    // a finishes; b comes back and recomputes prompt + its 4 tokens in one chunk, then samples its 5th.
    s.drop(a)
    s.collectDropped()
    const again = step(s)
    expect(shape(again.out)).toEqual([[b.id, 0, 13, true]])
    expect(again.out.entries[0]!.isNew).toBe(false)
    expect(b.outputTokenIds.length).toBe(5)
  })

  it("a second turn reuses the first turn's cached blocks and computes only the rest", () => {
    const s = make()
    const history = range(0, 20)
    const t1 = s.add(request(history, { maxTokens: 4 }))
    for (let i = 0; i < 4; i++) step(s, 40 + i)
    expect(t1.status).toBe("finished")
    // Turn 2: the history, the answer and a new question.
    const t2 = s.add(request([...history, 40, 41, 42, 43, 60, 61, 62]))
    const { out } = step(s)
    // 20 + 3 answer tokens have KV (the last answer token never ran): 5 full blocks = 20 tokens cached, 7 to compute.
    expect(shape(out)).toEqual([[t2.id, 20, 7, true]])
    expect(s.kv.hits).toBe(20)
  })

  it("no prefix reuse when prefix caching is off, or when the request wants its prompt logits", () => {
    const off = make({ enablePrefixCaching: false })
    off.add(request(range(0, 12), { maxTokens: 1 }))
    step(off)
    expect(shape(off.schedule()).length).toBe(0)
    off.add(request(range(0, 13)))
    expect(off.schedule().entries[0]!.start).toBe(0)

    const on = make()
    on.add(request(range(0, 12), { maxTokens: 1 }))
    step(on)
    const wantsLogits = on.add(request(range(0, 13), { promptLogits: "all" }))
    const e = on.schedule().entries[0]!
    expect([e.sequence, e.start, e.returnLogits]).toEqual([wantsLogits, 0, 2])
  })

  it("priority orders the queue; equal priorities stay first come, first served", () => {
    const s = make({ maxNumSeqs: 1 })
    const low = s.add(request([1], { priority: 5 }))
    const high = s.add(request([2], { priority: -1 }))
    const high2 = s.add(request([3], { priority: -1 }))
    expect(s.waitingSequences()).toEqual([high, high2, low])
  })

  it("rows: sequences take the lowest free row", () => {
    const s = make()
    const [a, b, c] = [1, 2, 3].map((i) => s.add(request([i])))
    step(s)
    expect([a!.row, b!.row, c!.row]).toEqual([0, 1, 2])
    s.drop(a!)
    s.collectDropped()
    const d = s.add(request([4]))
    step(s)
    expect(d.row).toBe(0)
  })

  describe("row layout reuse (rowPrefixReuse)", () => {
    const rows = (config: Partial<SchedulerConfig> = {}) =>
      make({ enablePrefixCaching: false, rowPrefixReuse: true, maxNumBatchedTokens: 256, contextLength: 256, numBlocks: 1 + 8 * 64, ...config })
    const history = range(1000, 60)
    /** A step, with the row each scheduled sequence ran on (a finished sequence's row is -1 afterwards). */
    const stepRows = (s: Scheduler, token = 7) => {
      const out = s.schedule()
      const rowOf = new Map(out.entries.map((e) => [e.sequence, e.sequence.row]))
      s.update(out, new Int32Array(out.entries.filter((e) => e.samples).length).fill(token))
      return { out, rowOf }
    }

    it("a second turn takes the first turn's row and computes only what its row does not hold", () => {
      const s = rows()
      const other = s.add(request(range(0, 40), { maxTokens: 50 }))
      const t1 = s.add(request(history, { maxTokens: 4 }))
      for (let i = 0; i < 4; i++) step(s, 40 + i)
      expect(t1.status).toBe("finished")
      expect(t1.row).toBe(-1)
      // Row 0 is busy (other), row 1 held turn 1; a stranger takes row 2 (lowest free without a shared prefix).
      const stranger = s.add(request(range(5000, 50), { maxTokens: 1 }))
      const t2 = s.add(request([...history, 40, 41, 42, 43, 60, 61, 62]))
      const { out, rowOf } = stepRows(s)
      expect(rowOf.get(stranger)).toBe(2)
      expect(rowOf.get(t2)).toBe(1)
      // 60 + 3 answer tokens are in row 1 (the last answer token never ran).
      const e = out.entries.find((x) => x.sequence === t2)!
      expect([e.start, e.numTokens, e.isNew]).toEqual([63, 4, true])
      expect(s.kv.hits).toBe(63)
      expect(other.status).toBe("running")
    })

    it("the longest shared prefix wins; shorter than MIN_ROW_REUSE is not reuse", () => {
      const s = rows()
      const a = s.add(request(range(0, 50), { maxTokens: 1 }))
      const b = s.add(request([...range(0, 40), ...range(300, 20)], { maxTokens: 1 }))
      const first = stepRows(s)
      expect([first.rowOf.get(a), first.rowOf.get(b), a.status, b.status]).toEqual([0, 1, "finished", "finished"])
      const c = s.add(request([...range(0, 40), ...range(300, 25)]))
      const second = stepRows(s)
      expect(second.rowOf.get(c)).toBe(1)
      expect(second.out.entries[0]!.start).toBe(60)
      const short = s.add(request([...range(0, MIN_ROW_REUSE - 1), 7777, 7778]))
      const { out, rowOf } = stepRows(s)
      // Rows 0 and 1 hold earlier prompts: a sequence that reuses nothing takes the lowest empty row.
      expect(rowOf.get(short)).toBe(2)
      expect(out.entries.find((x) => x.sequence === short)!.start).toBe(0)
    })

    it("a fully held prompt still computes its last token; a preempted row is not offered", () => {
      const s = rows()
      const a = s.add(request(history, { maxTokens: 1 }))
      const first = stepRows(s)
      const again = s.add(request(history))
      const { out, rowOf } = stepRows(s)
      expect(rowOf.get(again)).toBe(first.rowOf.get(a))
      expect(shape(out)).toEqual([[again.id, 59, 1, true]])
      // Preempted: the sequence comes back first and recomputes from scratch, not from what its old row held.
      const p = rows({ numBlocks: 1 + 22, blockSize: 4, contextLength: 88 })
      const old = p.add(request(range(0, 40), { maxTokens: 30 }))
      const young = p.add(request(range(500, 36), { maxTokens: 10 }))
      const starts: Array<number> = []
      for (let i = 0; i < 60 && young.status !== "finished"; i++) {
        const { out } = step(p)
        for (const e of out.entries) if (e.sequence === young && e.isNew === false && young.numPreemptions > 0 && starts.length === 0) starts.push(e.start)
      }
      expect(young.numPreemptions).toBeGreaterThan(0)
      expect(old.status).toBe("finished")
      expect(starts[0]).toBe(0)
    })

    it("when every free row holds something, a new sequence takes the one released longest ago", () => {
      const s = rows({ maxNumSeqs: 2 })
      const a = s.add(request(range(0, 40), { maxTokens: 1 }))
      const b = s.add(request(range(100, 40), { maxTokens: 3 }))
      const first = stepRows(s)
      expect([first.rowOf.get(a), first.rowOf.get(b)]).toEqual([0, 1])
      step(s)
      step(s)
      expect(b.status).toBe("finished")
      // Row 0 (a, released first) goes; row 1 (b) still holds its prompt for a later turn.
      const c = s.add(request(range(900, 40)))
      expect(stepRows(s).rowOf.get(c)).toBe(0)
      const bAgain = s.add(request([...range(100, 40), 7, 7, 5]))
      const { out, rowOf } = stepRows(s)
      expect(rowOf.get(bAgain)).toBe(1)
      expect(out.entries.find((e) => e.sequence === bAgain)!.start).toBe(42)
    })

    it("off: every sequence starts from scratch on the lowest free row", () => {
      const s = rows({ rowPrefixReuse: false })
      s.add(request(history, { maxTokens: 1 }))
      step(s)
      const again = s.add(request(history))
      const { out } = step(s)
      expect(shape(out)).toEqual([[again.id, 0, 60, true]])
      expect(s.kv.hits).toBe(0)
    })

    it("clearCache (a shard restart) forgets what rows held", () => {
      const s = rows()
      s.add(request(history, { maxTokens: 1 }))
      step(s)
      s.clearCache()
      const again = s.add(request(history))
      expect(s.schedule().entries[0]!.start).toBe(0)
      expect(again.row).toBe(0)
    })
  })

  describe("micro-batches (pipelineDepth > 1): a sequence is in at most one step on the shards", () => {
    /** Takes a step back as a model would: every sampling entry gets `token`. */
    const answer = (s: Scheduler, out: SchedulerOutput, token = 7) =>
      s.update(out, new Int32Array(out.entries.filter((e) => e.samples).length).fill(token))
    const ids = (out: SchedulerOutput) => out.entries.map((e) => e.sequence.id)

    it("two steps share the sequences out; one in flight is not scheduled again until its step returns", () => {
      const s = make({ pipelineDepth: 2 })
      const seqs = [0, 1, 2, 3].map((i) => s.add(request(range(10 * i, 3))))
      const a = s.schedule()
      expect(ids(a)).toEqual([seqs[0]!.id, seqs[1]!.id])
      expect(s.numInFlight).toBe(2)
      const b = s.schedule()
      expect(ids(b)).toEqual([seqs[2]!.id, seqs[3]!.id])
      // Everyone is on the shards: nothing to schedule.
      expect(s.schedule().entries).toEqual([])
      answer(s, a)
      expect(s.numInFlight).toBe(2)
      // a's sequences decode while b is still out; b's are left alone.
      const a2 = s.schedule()
      expect(shape(a2)).toEqual([[seqs[0]!.id, 3, 1, true], [seqs[1]!.id, 3, 1, true]])
      expect(s.schedule().entries).toEqual([])
      answer(s, b)
      expect(shape(s.schedule())).toEqual([[seqs[2]!.id, 3, 1, true], [seqs[3]!.id, 3, 1, true]])
    })

    it("depth 1 keeps one step for everyone (today's behaviour)", () => {
      const s = make()
      for (const i of [0, 1, 2, 3]) s.add(request(range(10 * i, 3)))
      expect(s.schedule().entries.length).toBe(4)
    })

    it("a late arrival joins the next step handed out, within that step's share", () => {
      const s = make({ pipelineDepth: 2 })
      const seqs = [0, 1, 2, 3].map((i) => s.add(request(range(10 * i, 3))))
      const a = s.schedule()
      s.schedule()
      const late = s.add(request(range(100, 5)))
      answer(s, a)
      // 5 sequences over 2 steps: a step takes up to 3.
      const a2 = s.schedule()
      expect(ids(a2)).toEqual([seqs[0]!.id, seqs[1]!.id, late.id])
      expect(a2.admitted).toEqual([late])
    })

    it("a dropped sequence in flight keeps its blocks until its step returns; its token is discarded", () => {
      const s = make({ pipelineDepth: 2 })
      const x = s.add(request(range(0, 9)))
      const y = s.add(request(range(50, 9)))
      const a = s.schedule()
      const b = s.schedule()
      expect(ids(a)).toEqual([x.id])
      s.drop(x) // the client left, or a stop string matched, while its step ran
      expect(s.collectDropped()).toEqual([])
      expect(s.kv.numBlocksOf(x)).toBe(3)
      expect(answer(s, a)).toEqual([])
      expect(s.collectDropped()).toEqual([x])
      expect(s.kv.numBlocksOf(x)).toBe(0)
      expect(answer(s, b).map((t) => t.sequence)).toEqual([y])
    })

    it("preemption takes the newest sequence not in flight, never one on the shards", () => {
      // 5 usable blocks of 4 tokens: x (8 tokens) holds 2, y (11) 3; x's first decode needs a 3rd block.
      const config = { numBlocks: 6, contextLength: 20, enablePrefixCaching: false }
      const run = (depth: number) => {
        const s = make({ ...config, pipelineDepth: depth })
        const x = s.add(request(range(0, 8)))
        const y = s.add(request(range(50, 11)))
        if (depth === 1) {
          s.update(s.schedule(), Int32Array.of(7, 7))
          // y (in no step) is the newest: it is preempted, x grows.
          return { s, x, y, out: s.schedule() }
        }
        const a = s.schedule() // x
        s.schedule() // y, in flight from here on
        answer(s, a)
        return { s, x, y, out: s.schedule() }
      }
      const one = run(1)
      expect(one.out.preempted).toEqual([one.y])
      const two = run(2)
      // y is newer but on the shards: x gives up its own blocks and waits.
      expect(two.out.preempted).toEqual([two.x])
      expect(two.out.entries).toEqual([])
      expect(two.y.status).toBe("running")
      expect(two.s.kv.numBlocksOf(two.y)).toBe(3)
      expect(two.x.status).toBe("waiting")
    })

    it("abandonInFlight (a shard failed) lets the sequences of lost steps be dropped and freed", () => {
      const s = make({ pipelineDepth: 2 })
      const x = s.add(request(range(0, 5)))
      const y = s.add(request(range(50, 5)))
      s.schedule()
      s.schedule()
      s.drop(x)
      s.drop(y)
      expect(s.collectDropped()).toEqual([])
      s.abandonInFlight()
      expect(new Set(s.collectDropped())).toEqual(new Set([x, y]))
      expect(s.hasWork).toBe(false)
    })
  })
})
