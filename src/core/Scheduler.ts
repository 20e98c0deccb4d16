/**
 * Continuous batching as plain synchronous TypeScript: who runs in the next step. Deterministic for given inputs;
 * the `Engine` service around it owns fibers, shards and streams, and is the only caller.
 *
 * One rule, no phases (vLLM v1): each sequence has `numComputedTokens` (in its KV slot) and a target; every loop
 * iteration closes the gap of prefilling sequences within a token budget (long prompts in chunks), then runs one
 * decode step over every decoding sequence. A request that arrives while others decode joins at the next iteration.
 */
import type { ValidatedRequest } from "./Request.ts"

export type SequenceStatus = "waiting" | "prefilling" | "decoding" | "finished"

export interface Sequence {
  readonly id: number
  readonly request: ValidatedRequest
  status: SequenceStatus
  /** KV slot (row) in every shard; -1 while waiting. */
  row: number
  /** Tokens whose keys and values are in the slot. */
  numComputedTokens: number
  /** Generated token ids. */
  readonly outputTokenIds: Array<number>
  /** Set by `abort`; the sequence is dropped before the next step. */
  aborted: boolean
  /** Lower runs first among waiting sequences (FIFO within a priority). */
  readonly priority: number
  readonly arrival: number
  /** Absolute time (ms, `performance.now()` clock) after which the sequence expires; Infinity for none. */
  readonly deadline: number
}

export interface PrefillWork {
  readonly sequence: Sequence
  readonly start: number
  readonly numScheduledTokens: number
  /** The chunk that completes the prompt: a token is sampled from it. */
  readonly isLastChunk: boolean
  /** First chunk of the prompt: the sampler must be registered. */
  readonly isFirstChunk: boolean
}

export interface DecodeWork {
  /** Rows [0, numRows) run; holes and mid-prefill rows ride along with a dummy token. */
  readonly numRows: number
  readonly tokenIds: Int32Array
  readonly pastLens: Int32Array
  /** Rows that sample a token, and their sequences in the same order. */
  readonly sampleRows: Int32Array
  readonly sequences: ReadonlyArray<Sequence>
}

export interface SchedulerConfig {
  /** KV slots: the most sequences running at once. */
  readonly maxNumSeqs: number
  /** Prompt tokens processed per iteration, over all prefilling sequences. */
  readonly maxNumBatchedTokens: number
}

export class Scheduler {
  private readonly waiting: Array<Sequence> = []
  private readonly slots: Array<Sequence | undefined>
  private nextId = 0

  readonly config: SchedulerConfig

  constructor(config: SchedulerConfig) {
    this.config = config
    this.slots = new Array(config.maxNumSeqs).fill(undefined)
  }

  add(request: ValidatedRequest, deadline = Number.POSITIVE_INFINITY): Sequence {
    const priority = request.priority
    const sequence: Sequence = {
      id: this.nextId++,
      request,
      status: "waiting",
      row: -1,
      numComputedTokens: 0,
      outputTokenIds: [],
      aborted: false,
      priority,
      arrival: this.nextId,
      deadline
    }
    // Stable insertion by priority keeps FIFO among equals.
    let at = this.waiting.length
    while (at > 0 && this.waiting[at - 1]!.priority > priority) at--
    this.waiting.splice(at, 0, sequence)
    return sequence
  }

  /** Marks a sequence for removal; its slot is freed before the next step. */
  abort(sequence: Sequence): void {
    sequence.aborted = true
  }

  get numWaiting(): number {
    return this.waiting.length
  }

  get numRunning(): number {
    return this.slots.reduce((n, s) => (s === undefined ? n : n + 1), 0)
  }

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.numRunning > 0
  }

  /** Position of a waiting sequence in the queue (0 = next), or -1. */
  queuePosition(sequence: Sequence): number {
    return this.waiting.indexOf(sequence)
  }

  /** Drops aborted sequences and returns the rows that were freed. */
  dropAborted(): Array<Sequence> {
    const dropped: Array<Sequence> = []
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      if (this.waiting[i]!.aborted) dropped.push(...this.waiting.splice(i, 1))
    }
    for (const s of this.slots) if (s !== undefined && s.aborted) dropped.push(s), this.finish(s)
    return dropped
  }

  /** Sequences (waiting or running) whose deadline has passed at `now`; the caller ends them. */
  expired(now: number): Array<Sequence> {
    const out = this.waiting.filter((s) => s.deadline < now)
    for (const s of this.slots) if (s !== undefined && s.deadline < now) out.push(s)
    return out
  }

  /** Removes a waiting sequence from the queue (expiry, shutdown). */
  removeWaiting(sequence: Sequence): void {
    const i = this.waiting.indexOf(sequence)
    if (i >= 0) this.waiting.splice(i, 1)
    sequence.status = "finished"
  }

  /** Every waiting sequence. */
  waitingSequences(): ReadonlyArray<Sequence> {
    return this.waiting
  }

  /** Fraction of KV slots in use, 0..1. */
  get slotUsage(): number {
    return this.numRunning / this.slots.length
  }

  /** Moves waiting sequences into free slots. */
  admit(): Array<Sequence> {
    const admitted: Array<Sequence> = []
    for (let row = 0; row < this.slots.length && this.waiting.length > 0; row++) {
      if (this.slots[row] !== undefined) continue
      const s = this.waiting.shift()!
      s.row = row
      s.status = "prefilling"
      this.slots[row] = s
      admitted.push(s)
    }
    return admitted
  }

  /** Prompt chunks for this iteration, oldest admitted first, within the token budget. */
  schedulePrefill(): Array<PrefillWork> {
    const work: Array<PrefillWork> = []
    let budget = this.config.maxNumBatchedTokens
    const prefilling = this.slots.filter((s): s is Sequence => s !== undefined && s.status === "prefilling")
    prefilling.sort((a, b) => a.arrival - b.arrival)
    for (const s of prefilling) {
      if (budget <= 0) break
      const promptLen = s.request.promptTokenIds.length
      const n = Math.min(budget, promptLen - s.numComputedTokens)
      work.push({
        sequence: s,
        start: s.numComputedTokens,
        numScheduledTokens: n,
        isFirstChunk: s.numComputedTokens === 0,
        isLastChunk: s.numComputedTokens + n === promptLen
      })
      budget -= n
    }
    return work
  }

  /** Records a finished prompt chunk; after the last one the sequence decodes. */
  completePrefill(work: PrefillWork): void {
    work.sequence.numComputedTokens += work.numScheduledTokens
    if (work.isLastChunk) work.sequence.status = "decoding"
  }

  /** One decode step over every decoding sequence, or undefined when none decodes. */
  scheduleDecode(): DecodeWork | undefined {
    let numRows = 0
    const sequences: Array<Sequence> = []
    for (let row = 0; row < this.slots.length; row++) {
      const s = this.slots[row]
      if (s === undefined) continue
      numRows = row + 1
      if (s.status === "decoding") sequences.push(s)
    }
    if (sequences.length === 0) return undefined
    const tokenIds = new Int32Array(numRows)
    const pastLens = new Int32Array(numRows)
    for (let row = 0; row < numRows; row++) {
      const s = this.slots[row]
      if (s === undefined) continue
      pastLens[row] = s.numComputedTokens
      if (s.status === "decoding") tokenIds[row] = s.outputTokenIds[s.outputTokenIds.length - 1]!
    }
    return { numRows, tokenIds, pastLens, sampleRows: Int32Array.from(sequences, (s) => s.row), sequences }
  }

  /** Records a decode step: the last generated token is now in the cache. */
  completeDecode(work: DecodeWork): void {
    for (const s of work.sequences) s.numComputedTokens += 1
  }

  /** Frees a sequence's slot. */
  finish(sequence: Sequence): void {
    if (sequence.row >= 0 && this.slots[sequence.row] === sequence) this.slots[sequence.row] = undefined
    sequence.status = "finished"
  }

  /** Every sequence in a slot (for failing them all when a shard dies). */
  running(): Array<Sequence> {
    return this.slots.filter((s): s is Sequence => s !== undefined)
  }
}
