/**
 * Continuous batching as plain synchronous TypeScript (vLLM v1's scheduler): `schedule()` returns the work of one
 * step, `update()` takes its sampled tokens back and returns what they did. Deterministic for given inputs; the
 * engine loop around it owns fibers, shards and streams and is its only caller.
 *
 * Micro-batches (pipeline shards, vLLM's virtual engines): with `pipelineDepth` D > 1 up to D steps may be on the
 * shards at once. A sequence is in at most one of them: `schedule()` never gives a step to a sequence whose previous
 * step has not come back through `update()` (it is "in flight"), and never preempts or frees one; a dropped sequence
 * in flight is freed by the first `collectDropped()` after its step returned. Each step takes at most
 * ceil(min(running + waiting, maxNumSeqs) / D) sequences, so D steps share the sequences out between them; a step's
 * sequences come back together, and their next step is scheduled while the others are still on the shards. The one
 * exception is decode ahead (`scheduleAhead`, one shard): the step after a decode step, over the same sequences, with
 * the tokens that step samples filled in by the shard.
 *
 * One rule, no phases: a sequence has tokens (prompt, then generated) and `numComputedTokens` of them have keys and
 * values in its KV blocks. Each step gives every running sequence the tokens it lacks — one for a decoding sequence,
 * a chunk for a prefilling one — within `maxNumBatchedTokens`, running sequences first, then waiting ones in queue
 * order. A sequence that completes its known tokens samples the next. When the KV pool cannot grow a running
 * sequence, the newest running sequence is preempted: its blocks are freed and it waits at the head of the queue
 * to be recomputed (its prefix cached blocks make that cheap). New sequences first take the cached blocks of their
 * longest cached prefix; in a row layout (one KV row per sequence, no shared blocks) they take instead the free row
 * whose last sequence shares their longest prefix, whose keys and values are still in place (llama.cpp's slot reuse).
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
  /**
   * Steps that `schedule()` or `scheduleAhead()` handed out with this sequence and `update()` has not taken back:
   * 1 for a micro-batch on the shards, 2 while a decode-ahead step follows it.
   */
  stepsInFlight: number
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
  /**
   * Decode ahead (`scheduleAhead`): the token at `start` is the one the sequence's previous step samples, not yet
   * known here; the plan carries `FEEDBACK_TOKEN` and the last shard puts the token in.
   */
  readonly feedback?: boolean
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
  /**
   * A row layout's prefix caching: a free row keeps the tokens of its last sequence, and a new sequence that shares
   * at least `MIN_ROW_REUSE` of them takes that row and computes only the rest. Needs a runtime that leaves a freed
   * row's keys and values in place (the device row worker does).
   */
  readonly rowPrefixReuse?: boolean
  readonly stopTokenIds: ReadonlyArray<number>
  /**
   * Steps on the shards at once (micro-batches over disjoint sequences); default 1: each `schedule()` is followed by
   * its `update()` before the next.
   */
  readonly pipelineDepth?: number
}

/**
 * The shortest shared prefix worth moving a sequence off the lowest free row for: every Llama 3 chat prompt shares
 * its first few tokens (begin of text, the system header), and a higher row widens every decode step's row range.
 */
export const MIN_ROW_REUSE = 32

export class Scheduler {
  readonly config: SchedulerConfig
  readonly kv: KvCacheManager
  private readonly waiting: Array<Sequence> = []
  /** Running sequences in admission order (the newest last: the first to be preempted). */
  private readonly running: Array<Sequence> = []
  private readonly freeRows: Array<number>
  /** Row layout with reuse: the tokens whose keys and values a free row still holds (its last sequence's). */
  private readonly rowContents: Array<Int32Array | undefined>
  /** When each row's contents were released (a step counter), for evicting the oldest. */
  private readonly rowReleasedAt: Int32Array
  private releaseClock = 0
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
    this.rowContents = new Array(config.maxNumSeqs).fill(undefined)
    this.rowReleasedAt = new Int32Array(config.maxNumSeqs)
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
      stepsInFlight: 0,
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

  /** Sequences in a step not yet taken back by `update()`. */
  get numInFlight(): number {
    let n = 0
    for (const s of this.running) if (s.stepsInFlight > 0) n++
    return n
  }

  /**
   * Removes dropped sequences, frees their blocks and rows, and returns them. A dropped sequence still in flight
   * stays (its step may still read its blocks) until a call after its step came back.
   */
  collectDropped(): Array<Sequence> {
    const out: Array<Sequence> = []
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      const s = this.waiting[i]!
      if (s.dropped) this.waiting.splice(i, 1), this.release(s), out.push(s)
    }
    for (let i = this.running.length - 1; i >= 0; i--) {
      const s = this.running[i]!
      if (s.dropped && s.stepsInFlight === 0) this.running.splice(i, 1), this.release(s), out.push(s)
    }
    return out
  }

  /**
   * The steps in flight will not come back (a shard failed; the engine waited for every one of them to end): their
   * sequences are no longer in flight, so that they can be dropped and freed.
   */
  abandonInFlight(): void {
    for (const s of this.running) s.stepsInFlight = 0
  }

  /** The work of the next step (empty when nothing can run). */
  schedule(): SchedulerOutput {
    const entries: Array<ScheduledEntry> = []
    const admitted: Array<Sequence> = []
    const preempted: Array<Sequence> = []
    let budget = this.config.maxNumBatchedTokens
    let numTokens = 0
    const depth = this.config.pipelineDepth ?? 1
    // Micro-batches: this step's share of the sequences (every sequence when steps run one at a time).
    const maxEntries = depth <= 1 ? Number.POSITIVE_INFINITY
      : Math.ceil(Math.min(this.running.length + this.waiting.length, this.config.maxNumSeqs) / depth)

    for (let i = 0; i < this.running.length && budget > 0 && entries.length < maxEntries; i++) {
      const s = this.running[i]!
      // In another step on the shards: its tokens are not known yet.
      if (s.stepsInFlight > 0) continue
      const n = Math.min(totalTokens(s) - s.numComputedTokens, budget)
      let preemptedSelf = false
      while (!this.kv.allocate(s, s.numComputedTokens, n)) {
        // The newest running sequence not in flight (s itself at the latest): a step on the shards keeps its blocks.
        let j = this.running.length - 1
        while (this.running[j]!.stepsInFlight > 0) j--
        const victim = this.running.splice(j, 1)[0]!
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
    while (
      preempted.length === 0 && budget > 0 && entries.length < maxEntries && this.waiting.length > 0 &&
      this.running.length < this.config.maxNumSeqs
    ) {
      const s = this.waiting[0]!
      // A request that wants its prompt's logits computes every position.
      const reusing = s.request.promptLogits === "none"
      const rowPrefix = reusing && this.config.rowPrefixReuse === true ? this.longestRowPrefix(s) : undefined
      const prefix: CachedPrefix = reusing && rowPrefix === undefined ? this.kv.cachedPrefix(s) : { blocks: [], numTokens: 0 }
      const start = rowPrefix?.numTokens ?? prefix.numTokens
      const n = Math.min(totalTokens(s) - start, budget)
      if (!this.kv.allocate(s, start, n, prefix)) break
      this.waiting.shift()
      s.status = "running"
      s.numComputedTokens = start
      s.row = this.takeRow(rowPrefix?.row ?? this.rowForNewContent())
      this.rowContents[s.row] = undefined
      if (this.config.rowPrefixReuse === true) this.kv.countPrefixQuery(totalTokens(s), start)
      this.running.push(s)
      admitted.push(s)
      entries.push(this.entry(s, n))
      budget -= n
      numTokens += n
    }
    for (const e of entries) e.sequence.stepsInFlight++
    return { entries, admitted, preempted, numTokens }
  }

  /**
   * Decode ahead (vLLM's async scheduling): the step after `prev`, handed out while `prev` is still on the shards.
   * Each sequence of `prev` decodes one more position, whose token is the one `prev` samples for it: the last shard
   * puts it in (`ScheduledEntry.feedback`), so the shard goes from `prev` to this step without a round trip through
   * the engine. All or nothing, so that no sequence waits behind a chain of steps ahead: only when nothing waits for
   * a free seat, every running sequence is in `prev` and every entry of `prev` samples, none is under a grammar and
   * the pool has room for each (nothing is preempted). A sequence whose pending token is its last (max tokens, the context) or
   * that is leaving sits it out; a pending token may still be a stop token, and `update()` then drops the extra one.
   */
  scheduleAhead(prev: SchedulerOutput): SchedulerOutput | undefined {
    // A waiting sequence with a free seat goes into the next regular step; with every seat taken it waits either way.
    const admissible = this.waiting.length > 0 && this.running.length < this.config.maxNumSeqs
    if (admissible || prev.entries.length === 0 || !prev.entries.every((e) => e.samples)) return undefined
    const inPrev = new Set(prev.entries.map((e) => e.sequence))
    if (this.running.some((s) => !s.dropped && !inPrev.has(s))) return undefined
    const entries: Array<ScheduledEntry> = []
    for (const e of prev.entries) {
      const s = e.sequence
      if (s.status !== "running" || s.dropped) continue
      if (s.stepsInFlight !== 1 || s.request.sampling.grammar !== undefined) return undefined
      // After `prev`, the cache holds `start` tokens and the pending token is output number outputTokenIds.length + 1.
      const start = e.start + e.numTokens
      if (s.outputTokenIds.length + 2 > s.request.maxTokens || start + 2 > this.config.contextLength) continue
      if (!this.kv.allocate(s, start, 1)) return undefined
      entries.push({ sequence: s, start, numTokens: 1, samples: true, isNew: false, returnLogits: 0, blockIds: this.kv.blockIds(s), feedback: true })
    }
    if (entries.length === 0) return undefined
    for (const e of entries) e.sequence.stepsInFlight++
    return { entries, admitted: [], preempted: [], numTokens: entries.length }
  }

  /**
   * Takes a step's sampled tokens back (one per sampling entry, in entry order); its sequences are no longer in
   * flight. Every entry's chunk is now in the cache; each token is recorded and checked against the stop rule (a
   * stopped sequence is freed at once). Tokens of sequences dropped meanwhile are discarded.
   */
  update(output: SchedulerOutput, tokens: Int32Array): Array<SampledToken> {
    const sampled: Array<SampledToken> = []
    let k = 0
    for (const e of output.entries) {
      const s = e.sequence
      const tokenId = e.samples ? tokens[k++]! : -1
      s.stepsInFlight--
      if (s.status !== "running" || s.dropped) continue
      s.numComputedTokens += e.numTokens
      s.registered = true
      this.kv.cacheComputed(s, s.numComputedTokens)
      if (!e.samples) continue
      s.outputTokenIds.push(tokenId)
      const stop = tokenStop(s.request, this.stopTokenIds, this.config.contextLength, tokenId, s.outputTokenIds.length, totalTokens(s))
      if (stop !== undefined) {
        // A decode-ahead step still on the shards writes into its blocks: freed once it is back (collectDropped).
        if (s.stepsInFlight > 0) s.dropped = true
        else this.running.splice(this.running.indexOf(s), 1), this.release(s)
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

  /** Forgets every row's contents and cached block (after a shard restart the workers hold nothing). */
  clearCache(): void {
    this.kv.clearCache()
    this.rowContents.fill(undefined)
  }

  /**
   * The free row whose contents share the longest prefix with a new sequence (at least `MIN_ROW_REUSE` tokens,
   * the lowest such row among equals), and how many tokens of it to reuse: never the sequence's last known token,
   * whose logits give its next token.
   */
  private longestRowPrefix(s: Sequence): { readonly row: number; readonly numTokens: number } | undefined {
    const limit = totalTokens(s) - 1
    let best: { row: number; numTokens: number } | undefined
    for (const row of this.freeRows) {
      const held = this.rowContents[row]
      if (held === undefined || held.length < MIN_ROW_REUSE) continue
      const end = Math.min(held.length, limit)
      let n = 0
      while (n < end && held[n] === tokenAt(s, n)) n++
      if (n >= MIN_ROW_REUSE && (best === undefined || n > best.numTokens || (n === best.numTokens && row < best.row))) best = { row, numTokens: n }
    }
    return best
  }

  private takeRow(row: number): number {
    this.freeRows.splice(this.freeRows.indexOf(row), 1)
    return row
  }

  /**
   * The row for a sequence that reuses nothing: the lowest free row that holds nothing worth keeping, so that a few
   * sequences sit in the first rows (a row runtime runs rows [0, highest]); when every free row holds an earlier
   * sequence's tokens, the one released longest ago.
   */
  private rowForNewContent(): number {
    let lowestEmpty = -1
    let oldest = -1
    for (const row of this.freeRows) {
      if (this.rowContents[row] === undefined) {
        if (lowestEmpty < 0 || row < lowestEmpty) lowestEmpty = row
      } else if (oldest < 0 || this.rowReleasedAt[row]! < this.rowReleasedAt[oldest]!) oldest = row
    }
    return lowestEmpty >= 0 ? lowestEmpty : oldest
  }

  private preempt(s: Sequence): void {
    this.kv.free(s)
    // Not offered for reuse: the sequence itself comes back first and recomputes from scratch.
    if (s.row >= 0) this.freeRows.push(s.row), this.rowContents[s.row] = undefined
    s.row = -1
    s.numComputedTokens = 0
    s.status = "waiting"
    s.numPreemptions++
    this.numPreemptions++
    this.waiting.unshift(s)
  }

  private release(s: Sequence): void {
    this.kv.free(s)
    if (s.row >= 0) {
      this.freeRows.push(s.row)
      // The row keeps what was computed; the last position of a full-context row is where a free row's dummy
      // decode token lands, so it is never offered.
      if (this.config.rowPrefixReuse === true && s.numComputedTokens >= MIN_ROW_REUSE) {
        const n = Math.min(s.numComputedTokens, this.config.contextLength - 1)
        const held = new Int32Array(n)
        for (let i = 0; i < n; i++) held[i] = tokenAt(s, i)
        this.rowContents[s.row] = held
        this.rowReleasedAt[s.row] = ++this.releaseClock
      }
    }
    s.row = -1
    s.status = "finished"
  }
}

/** Prompt plus generated tokens. */
export const totalTokens = (s: Sequence): number => s.promptTokenIds.length + s.outputTokenIds.length

/** Token `i` of a sequence (prompt, then output). */
export const tokenAt = (s: Sequence, i: number): number =>
  i < s.promptTokenIds.length ? s.promptTokenIds[i]! : s.outputTokenIds[i - s.promptTokenIds.length]!
