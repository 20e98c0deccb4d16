/**
 * Continuous batching as plain synchronous TypeScript (vLLM v1's scheduler): `schedule()` returns the work of one
 * step, `update()` takes its sampled tokens back and returns what they did. Deterministic for given inputs; the
 * engine loop around it owns fibers, shards and streams and is its only caller, and never calls `schedule()` while a
 * step is on the shards.
 *
 * One rule, no phases: a sequence has tokens (prompt, then generated) and `numComputedTokens` of them have keys and
 * values in its KV blocks. Each step gives every running sequence the tokens it lacks — one for a decoding sequence,
 * a chunk for a prefilling one — within `maxNumBatchedTokens`, running sequences first, then waiting ones in queue
 * order. A sequence that completes its known tokens samples the next. When the KV pool cannot grow a running
 * sequence, the newest running sequence is preempted: its blocks are freed and it waits at the head of the queue
 * to be recomputed (its prefix cached blocks make that cheap). New sequences first take the cached blocks of their
 * longest cached prefix.
 */
import { type CachedPrefix, KvCacheManager } from "./kv/KvCacheManager.ts"
import type { ValidatedRequest } from "./Request.ts"
import { type TokenStop, tokenStop } from "./StopRule.ts"

export type SequenceStatus = "waiting" | "running" | "finished"

export interface Sequence {
  readonly id: number
  readonly request: ValidatedRequest
  readonly promptTokenIds: Int32Array
  status: SequenceStatus
  /** Row in a row-layout KV cache and in the step's row order; -1 while waiting. */
  row: number
  /** Tokens whose keys and values are in the cache. */
  numComputedTokens: number
  /** Generated token ids. */
  readonly outputTokenIds: Array<number>
  /** Set by `drop`: the sequence leaves before the next step, its blocks freed. */
  dropped: boolean
  /** The last shard holds its sampler (registered with its first scheduled chunk). */
  registered: boolean
  numPreemptions: number
  /** Lower runs first among waiting sequences (FIFO within a priority). */
  readonly priority: number
  readonly arrival: number
  /** Absolute time (ms, `performance.now()` clock) after which the sequence expires; Infinity for none. */
  readonly deadline: number
}

/** One sequence's share of a step. */
export interface ScheduledEntry {
  readonly sequence: Sequence
  /** Tokens in the cache before the step (where this chunk starts). */
  readonly start: number
  readonly numTokens: number
  /** The chunk completes the sequence's known tokens: a token is sampled from its last position. */
  readonly samples: boolean
  /** First chunk ever scheduled: the last shard creates its sampler. */
  readonly isNew: boolean
  /** Logits returned to the engine: 0 none, 1 the last position's, 2 every position's (prompt logits). */
  readonly returnLogits: 0 | 1 | 2
  /** Its KV block ids after the step's allocation. */
  readonly blockIds: ReadonlyArray<number>
}

export interface SchedulerOutput {
  readonly entries: ReadonlyArray<ScheduledEntry>
  /** Sequences admitted from the queue by this step. */
  readonly admitted: ReadonlyArray<Sequence>
  readonly preempted: ReadonlyArray<Sequence>
  readonly numTokens: number
}

/** A sampled token and what it did. */
export interface SampledToken {
  readonly sequence: Sequence
  readonly tokenId: number
  /** Set when the token ended the sequence (it has been freed). */
  readonly stop: TokenStop | undefined
}

export interface SchedulerConfig {
  /** The most sequences running at once. */
  readonly maxNumSeqs: number
  /** Tokens per step, over all sequences (decode tokens and prompt chunks). */
  readonly maxNumBatchedTokens: number
  /** Tokens per sequence (prompt and output). */
  readonly contextLength: number
  readonly blockSize: number
  /** KV blocks in the pool, the reserved block 0 included. */
  readonly numBlocks: number
  readonly enablePrefixCaching: boolean
  readonly stopTokenIds: ReadonlyArray<number>
}

export class Scheduler {
  readonly config: SchedulerConfig
  readonly kv: KvCacheManager
  private readonly waiting: Array<Sequence> = []
  /** Running sequences in admission order (the newest last: the first to be preempted). */
  private readonly running: Array<Sequence> = []
  private readonly freeRows: Array<number>
  private readonly stopTokenIds: ReadonlySet<number>
  private nextId = 0
  numPreemptions = 0

  constructor(config: SchedulerConfig) {
    this.config = config
    this.kv = new KvCacheManager({ blockSize: config.blockSize, numBlocks: config.numBlocks, enablePrefixCaching: config.enablePrefixCaching })
    if (this.kv.maxTokens < config.contextLength) {
      throw new RangeError(`the KV pool holds ${this.kv.maxTokens} tokens, less than one sequence of the context length ${config.contextLength}`)
    }
    this.freeRows = Array.from({ length: config.maxNumSeqs }, (_, i) => i)
    this.stopTokenIds = new Set(config.stopTokenIds)
  }

  add(request: ValidatedRequest, deadline = Number.POSITIVE_INFINITY): Sequence {
    const priority = request.priority
    const sequence: Sequence = {
      id: this.nextId++,
      request,
      promptTokenIds: request.promptTokenIds,
      status: "waiting",
      row: -1,
      numComputedTokens: 0,
      outputTokenIds: [],
      dropped: false,
      registered: false,
      numPreemptions: 0,
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

  /** Marks a sequence to leave (abort, stop string, deadline, failure); it is removed and freed before the next step. */
  drop(sequence: Sequence): void {
    sequence.dropped = true
  }

  get numWaiting(): number {
    return this.waiting.length
  }

  get numRunning(): number {
    return this.running.length
  }

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0
  }

  /** Every waiting sequence, in queue order. */
  waitingSequences(): ReadonlyArray<Sequence> {
    return this.waiting
  }

  /** Every running sequence (for failing them all when a shard dies). */
  runningSequences(): ReadonlyArray<Sequence> {
    return this.running
  }

  /** Sequences (waiting or running) whose deadline has passed at `now`; the caller ends and drops them. */
  expired(now: number): Array<Sequence> {
    const out: Array<Sequence> = []
    for (const s of this.waiting) if (s.deadline < now && !s.dropped) out.push(s)
    for (const s of this.running) if (s.deadline < now && !s.dropped) out.push(s)
    return out
  }

  /** Removes dropped sequences, frees their blocks and rows, and returns them. */
  collectDropped(): Array<Sequence> {
    const out: Array<Sequence> = []
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      const s = this.waiting[i]!
      if (s.dropped) this.waiting.splice(i, 1), this.release(s), out.push(s)
    }
    for (let i = this.running.length - 1; i >= 0; i--) {
      const s = this.running[i]!
      if (s.dropped) this.running.splice(i, 1), this.release(s), out.push(s)
    }
    return out
  }

  /** The work of the next step (empty when nothing can run). */
  schedule(): SchedulerOutput {
    const entries: Array<ScheduledEntry> = []
    const admitted: Array<Sequence> = []
    const preempted: Array<Sequence> = []
    let budget = this.config.maxNumBatchedTokens
    let numTokens = 0

    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const s = this.running[i]!
      const n = Math.min(totalTokens(s) - s.numComputedTokens, budget)
      let preemptedSelf = false
      while (!this.kv.allocate(s, s.numComputedTokens, n)) {
        const victim = this.running.pop()!
        this.preempt(victim)
        preempted.push(victim)
        if (victim === s) {
          preemptedSelf = true
          break
        }
      }
      if (preemptedSelf) break
      entries.push(this.entry(s, n))
      budget -= n
      numTokens += n
    }

    // New sequences only when nothing had to be preempted (they would take the blocks back at once).
    while (preempted.length === 0 && budget > 0 && this.waiting.length > 0 && this.running.length < this.config.maxNumSeqs) {
      const s = this.waiting[0]!
      // A request that wants its prompt's logits computes every position.
      const prefix: CachedPrefix = s.request.promptLogits === "none" ? this.kv.cachedPrefix(s) : { blocks: [], numTokens: 0 }
      const n = Math.min(totalTokens(s) - prefix.numTokens, budget)
      if (!this.kv.allocate(s, prefix.numTokens, n, prefix)) break
      this.waiting.shift()
      s.status = "running"
      s.numComputedTokens = prefix.numTokens
      s.row = this.takeLowestRow()
      this.running.push(s)
      admitted.push(s)
      entries.push(this.entry(s, n))
      budget -= n
      numTokens += n
    }
    return { entries, admitted, preempted, numTokens }
  }

  /**
   * Takes a step's sampled tokens back (one per sampling entry, in entry order). Every entry's chunk is now in the
   * cache; each token is recorded and checked against the stop rule (a stopped sequence is freed at once). Tokens of
   * sequences dropped meanwhile are discarded.
   */
  update(output: SchedulerOutput, tokens: Int32Array): Array<SampledToken> {
    const sampled: Array<SampledToken> = []
    let k = 0
    for (const e of output.entries) {
      const s = e.sequence
      const tokenId = e.samples ? tokens[k++]! : -1
      if (s.status !== "running" || s.dropped) continue
      s.numComputedTokens += e.numTokens
      s.registered = true
      this.kv.cacheComputed(s, s.numComputedTokens)
      if (!e.samples) continue
      s.outputTokenIds.push(tokenId)
      const stop = tokenStop(s.request, this.stopTokenIds, this.config.contextLength, tokenId, s.outputTokenIds.length, totalTokens(s))
      if (stop !== undefined) {
        this.running.splice(this.running.indexOf(s), 1)
        this.release(s)
      }
      sampled.push({ sequence: s, tokenId, stop })
    }
    return sampled
  }

  private entry(s: Sequence, n: number): ScheduledEntry {
    const samples = s.numComputedTokens + n === totalTokens(s)
    const prompt = s.request.promptLogits
    const firstPass = s.numPreemptions === 0 && s.outputTokenIds.length === 0
    return {
      sequence: s,
      start: s.numComputedTokens,
      numTokens: n,
      samples,
      isNew: !s.registered,
      returnLogits: firstPass && prompt === "all" ? 2 : firstPass && prompt === "last" && samples ? 1 : 0,
      blockIds: this.kv.blockIds(s)
    }
  }

  /** The lowest free row, so that a few sequences sit in the first rows (a row runtime runs rows [0, highest]). */
  private takeLowestRow(): number {
    let at = 0
    for (let i = 1; i < this.freeRows.length; i++) if (this.freeRows[i]! < this.freeRows[at]!) at = i
    return this.freeRows.splice(at, 1)[0]!
  }

  private preempt(s: Sequence): void {
    this.kv.free(s)
    if (s.row >= 0) this.freeRows.push(s.row)
    s.row = -1
    s.numComputedTokens = 0
    s.status = "waiting"
    s.numPreemptions++
    this.numPreemptions++
    this.waiting.unshift(s)
  }

  private release(s: Sequence): void {
    this.kv.free(s)
    if (s.row >= 0) this.freeRows.push(s.row)
    s.row = -1
    s.status = "finished"
  }
}

/** Prompt plus generated tokens. */
export const totalTokens = (s: Sequence): number => s.promptTokenIds.length + s.outputTokenIds.length

/** Token `i` of a sequence (prompt, then output). */
export const tokenAt = (s: Sequence, i: number): number =>
  i < s.promptTokenIds.length ? s.promptTokenIds[i]! : s.outputTokenIds[i - s.promptTokenIds.length]!
