/**
 * Sampler: picks the next token of one sequence from one row of logits, inside a shard worker thread.
 *
 * Order matches vLLM / Hugging Face: repetition penalty (prompt + output), presence / frequency penalties
 * (output only), temperature (0 = greedy argmax, lowest id on ties), then top-k, top-p, min-p, one draw.
 *
 * Rows are 128256 wide and come every decode step, so:
 * - the caller's row is only read. Penalties change a sparse set of ids; their values are computed apart and
 *   every full-row loop walks the gaps between those ids (kept sorted) instead of copying the row;
 * - probabilities are kept as float32 whose bit patterns order like their values, so top-p and large top-k
 *   are a radix selection by mass / count (3 levels of histograms), and only a boundary bucket of at most
 *   SORT_CUTOFF entries is ever sorted; small top-k keeps a heap over logits and skips the full exp pass.
 * Scratch buffers are shared by every sampler of the thread: sample() is synchronous, so no two use them at once.
 *
 * Under a grammar (structured output) the token is drawn from the row masked to the ids the grammar allows, then
 * penalties, temperature and filters as above over those ids alone. Two ways reach exactly that distribution, and
 * the cheaper one is tried first where it is exact (see #sampleConstrained):
 * - sample first: draw from the unmasked row and offer the token to the grammar (a rejected offer leaves the
 *   matcher unchanged); only when it is rejected compute the mask and draw again from the masked row. For greedy
 *   the accepted token is the masked argmax; for plain temperature sampling this is rejection sampling with one
 *   fallback: P(t) = p(t) + (1 - P(allowed)) p(t) / P(allowed) = p(t) / P(allowed) for every allowed t;
 * - mask first: the grammar's bitmask, then a draw over the allowed ids only when they are few (a list of ids,
 *   no pass over the row), or over the row with the others at -Infinity when they are many.
 */
import type { GrammarMatcher } from "./Grammar.ts"
import { Rng } from "./Rng.ts"
import type { SamplingParams } from "./SamplingParams.ts"

/** top-k up to this size selects with a heap over logits; larger k goes through the full probability pass. */
const HEAP_TOP_K = 256
/** Boundary buckets at most this large are sorted rather than split by the next radix level. */
const SORT_CUTOFF = 256
/** First-level radix key (bits >>> 16) of 1.0f, the largest probability: exp(max - max). */
const TOP_KEY = 0x3f80

// ---- thread-wide scratch, grown to the widest vocabulary seen ----
let capacity = 0
let probs = new Float32Array(0)
let bits = new Uint32Array(0)
let kept = new Int32Array(0)
let cand = new Int32Array(0)
let bound: [Int32Array, Int32Array] = [new Int32Array(0), new Int32Array(0)]
const hist = new Float64Array(TOP_KEY + 1)
let heapV = new Float64Array(0)
let heapI = new Int32Array(0)
/** A constrained row: the logits where the grammar allows the id, -Infinity elsewhere. */
let masked = new Float32Array(0)
/** The grammar's bitmask of the current constrained row, and the ids it allows (ascending) with their logits. */
let bitmask = new Int32Array(0)
let allowedIds = new Int32Array(0)
let allowedLogits = new Float64Array(0)

/**
 * Masks allowing at most vocab / SPARSE_MASK_RATIO ids are sampled as a list of ids; larger ones (inside a JSON
 * string nearly every id is allowed) as a masked row, where one pass over contiguous memory is cheaper.
 */
const SPARSE_MASK_RATIO = 8
/**
 * Sample first is tried while the sequence's recent offers were accepted at least this often (an average over
 * about the last 8), and otherwise once every FAST_PATH_PROBE constrained tokens to notice when they are again:
 * a rejected offer costs one pass over the unmasked row for nothing (a model with random weights is rejected
 * nearly always; a trained one is accepted nearly always).
 */
const FAST_PATH_MIN_ACCEPTANCE = 0.5
const FAST_PATH_PROBE = 16
const FAST_PATH_DECAY = 1 / 8

/** How a sequence's constrained tokens were found: counters for benchmarks and tests. */
export interface GrammarSamplingStats {
  /** Drawn from the unmasked row and accepted by the grammar: no mask computed. */
  readonly fastAccepted: number
  /** Drawn from the unmasked row, rejected, then drawn again from the masked row. */
  readonly fastRejected: number
  /** Drawn from the masked row directly (sample first not exact for the parameters, not tried, or logprobs). */
  readonly maskFirst: number
  /** Stop tokens forced once the grammar was complete. */
  readonly forcedStop: number
}

/** Ids below `vocab` that `mask` allows. */
const allowedCount = (mask: Int32Array, vocab: number): number => {
  const usable = Math.min(Math.ceil(vocab / 32), mask.length)
  // ids at or past `vocab` are never allowed: clear them from the last word
  const tail = vocab - (usable - 1) * 32
  const lastWord = tail >= 32 ? mask[usable - 1]! : mask[usable - 1]! & ((1 << tail) - 1)
  let count = 0
  for (let w = 0; w < usable - 1; w++) if (mask[w] !== 0) count += popcount(mask[w]!)
  return count + popcount(lastWord)
}

/**
 * The stop token a constrained step must take whatever the logits, or undefined when the mask leaves a choice: once
 * the grammar is complete it allows stop tokens alone, and then the first allowed stop id is taken (never a draw
 * between them); a mask that allows nothing (xgrammar never says so before the grammar is complete; a vocabulary
 * without stop ids can) gives the first stop id.
 */
const forcedByMask = (mask: Int32Array, vocab: number, stopTokenIds: ReadonlyArray<number>, count = allowedCount(mask, vocab)): number | undefined => {
  let firstStop: number | undefined
  let stops = 0
  for (const id of stopTokenIds) {
    if (id < vocab && (id >> 5) < mask.length && ((mask[id >> 5]! >>> (id & 31)) & 1) === 1) {
      stops++
      firstStop ??= id
    }
  }
  if (count === stops && firstStop !== undefined) return firstStop
  if (count === 0) return stopTokenIds[0] ?? 0
  return undefined
}

/**
 * `forcedByMask` without counting the whole mask: the scan stops at the first allowed id that is not a stop token
 * (then there is a choice), which for most constrained steps comes early. Same result as `forcedByMask`.
 */
const forcedStopOf = (mask: Int32Array, vocab: number, stopTokenIds: ReadonlyArray<number>): number | undefined => {
  const usable = Math.min(Math.ceil(vocab / 32), mask.length)
  const tail = vocab - (usable - 1) * 32
  for (let w = 0; w < usable; w++) {
    let bits = w === usable - 1 && tail < 32 ? mask[w]! & ((1 << tail) - 1) : mask[w]!
    if (bits === 0) continue
    for (const id of stopTokenIds) if ((id >> 5) === w) bits &= ~(1 << (id & 31))
    if (bits !== 0) return undefined
  }
  // stop tokens alone, or nothing, allowed
  for (const id of stopTokenIds) {
    if (id < vocab && (id >> 5) < mask.length && ((mask[id >> 5]! >>> (id & 31)) & 1) === 1) return id
  }
  return stopTokenIds[0] ?? 0
}

const ensureScratch = (vocab: number): void => {
  if (vocab <= capacity) return
  capacity = vocab
  probs = new Float32Array(vocab)
  bits = new Uint32Array(probs.buffer)
  kept = new Int32Array(vocab)
  cand = new Int32Array(vocab)
  bound = [new Int32Array(vocab), new Int32Array(vocab)]
}

const ensureMaskScratch = (vocab: number, words: number): void => {
  if (bitmask.length < words) bitmask = new Int32Array(words)
  if (allowedIds.length < vocab) {
    allowedIds = new Int32Array(vocab)
    allowedLogits = new Float64Array(vocab)
  }
}

/** Set bits of a 32-bit word. */
const popcount = (w: number): number => {
  let m = w - ((w >>> 1) & 0x55555555)
  m = (m & 0x33333333) + ((m >>> 2) & 0x33333333)
  return (((m + (m >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24
}

const byProbDesc = (a: number, b: number): number => probs[b] - probs[a] || a - b

/**
 * Appends to `kept` (from index nk) the entries of list[0..n) with the largest probabilities, as few as make
 * their weight (probability, or 1 each when byCount) reach `need`; returns the new length of `kept`.
 * Level 1 keys on bits >>> 16 (sign, exponent, 7 mantissa bits), levels 2 and 3 on the next bytes; past
 * level 3 the remaining entries have equal probability and are taken in list order.
 */
const selectTop = (list: Int32Array, n: number, need: number, byCount: boolean, level: number, nk: number): number => {
  if (n <= SORT_CUTOFF || level > 3) {
    if (level <= 3) list.subarray(0, n).sort(byProbDesc)
    let acc = 0
    for (let j = 0; j < n; j++) {
      const id = list[j]
      kept[nk++] = id
      acc += byCount ? 1 : probs[id]
      if (acc >= need) break
    }
    return nk
  }
  const shift = level === 1 ? 16 : level === 2 ? 8 : 0
  const mask = level === 1 ? 0xffff : 0xff
  const top = level === 1 ? TOP_KEY : 0xff
  hist.fill(0, 0, top + 1)
  for (let j = 0; j < n; j++) {
    const id = list[j]
    hist[(bits[id] >>> shift) & mask] += byCount ? 1 : probs[id]
  }
  let acc = 0
  let b = top
  for (; b > 0; b--) {
    if (acc + hist[b] >= need) break
    acc += hist[b]
  }
  const next = bound[level & 1]
  let m = 0
  for (let j = 0; j < n; j++) {
    const id = list[j]
    const key = (bits[id] >>> shift) & mask
    if (key > b) kept[nk++] = id
    else if (key === b) next[m++] = id
  }
  return selectTop(next, m, need - acc, byCount, level + 1, nk)
}

/** Same as selectTop at level 1 over the whole row 0..vocab, without materialising the id list. */
const selectTopRow = (vocab: number, fraction: number, count: number, byCount: boolean): number => {
  // a pass of its own: fusing the histogram into the exp pass measured slower
  hist.fill(0)
  let need = count
  if (byCount) for (let i = 0; i < vocab; i++) hist[bits[i] >>> 16] += 1
  else {
    for (let i = 0; i < vocab; i++) hist[bits[i] >>> 16] += probs[i]
    let total = 0
    for (let b = 0; b <= TOP_KEY; b++) total += hist[b]
    need = fraction * total
  }
  let acc = 0
  let b = TOP_KEY
  for (; b > 0; b--) {
    if (acc + hist[b] >= need) break
    acc += hist[b]
  }
  const next = bound[1]
  let nk = 0
  let m = 0
  for (let i = 0; i < vocab; i++) {
    const key = bits[i] >>> 16
    // one rarely-taken branch measured faster than branch-free appends to both lists
    if (key >= b) {
      if (key > b) kept[nk++] = i
      else next[m++] = i
    }
  }
  return selectTop(next, m, need - acc, byCount, 2, nk)
}

/** Inserts (value, id) into the min-heap of the k largest values; returns the new heap size. */
const heapOffer = (v: number, id: number, size: number, k: number): number => {
  let i: number
  if (size < k) {
    i = size++
    while (i > 0) {
      const p = (i - 1) >> 1
      if (heapV[p] <= v) break
      heapV[i] = heapV[p]
      heapI[i] = heapI[p]
      i = p
    }
  } else {
    i = 0
    for (;;) {
      let c = 2 * i + 1
      if (c >= size) break
      if (c + 1 < size && heapV[c + 1] < heapV[c]) c++
      if (heapV[c] >= v) break
      heapV[i] = heapV[c]
      heapI[i] = heapI[c]
      i = c
    }
  }
  heapV[i] = v
  heapI[i] = id
  return size
}

// exp(x) for x <= 0 to ~1e-13 relative error, about 4x faster than Math.exp: x = (k + j/64) ln2 + r with
// |r| <= ln2/128, so exp(x) = 2^k * 2^(j/64) * (degree-4 Taylor of e^r). Below -104 the float32 result is 0
// anyway, and clamping there also maps NaN to 0 and keeps the 2^k table index in range.
const EXP_TAB = Float64Array.from({ length: 64 }, (_, j) => Math.pow(2, j / 64))
const EXP_POW2 = Float64Array.from({ length: 160 }, (_, e) => Math.pow(2, e - 159))
const EXP_K = 64 / Math.LN2
const EXP_L = Math.LN2 / 64
const ROUND_MAGIC = 6755399441055744.0 // 1.5 * 2^52: adding and subtracting it rounds a double to an integer

const expNeg = (x: number): number => {
  const y = x > -104 ? x : -104
  const kf = y * EXP_K + ROUND_MAGIC - ROUND_MAGIC
  const k = kf | 0
  const r = y - kf * EXP_L
  return EXP_TAB[k & 63] * EXP_POW2[(k >> 6) + 159] * (1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24)))))
}

const rangeError = (message: string): RangeError => new RangeError(`Sampler: ${message}`)

/** kept count meaning "no filter: draw from the whole row". */
const WHOLE_ROW = -1
/** kept count meaning "degenerate row (all -Infinity, or a +Infinity): take the argmax". */
const ARGMAX = -2

export class Sampler {
  readonly params: SamplingParams
  readonly #rng: Rng
  /** 0: no penalty, 1: prompt and output ids are penalised (repetition), 2: output ids only. */
  readonly #mode: 0 | 1 | 2
  /** Penalised ids, sorted ascending, and their effective logits for the current row. */
  #ids = new Int32Array(64)
  #count = 0
  #vals = new Float64Array(64)
  /** How often each id was generated (only tracked while a penalty is on). */
  readonly #generated = new Map<number, number>()
  #max = 0
  #argmax = 0
  #total = 0
  /** Constrained decoding: the sequence's grammar matcher (see `Grammar.ts`). */
  readonly #grammar: GrammarMatcher | undefined
  /**
   * Whether drawing from the unmasked row first gives exactly the masked distribution for these parameters: greedy
   * (temperature 0 or top-k 1), or temperature alone (no top-k, top-p, min-p: truncating the unmasked row keeps a
   * different set than truncating the masked one). Off when the caller wants the mask computed every step.
   */
  readonly #sampleFirst: boolean
  /** Recent acceptance of sample-first offers (1: all accepted), and constrained tokens since the last offer. */
  #offerAcceptance = 1
  #sinceOffer = 0
  #stats = { fastAccepted: 0, fastRejected: 0, maskFirst: 0, forcedStop: 0 }
  #graphMasked = 0

  /**
   * `grammar`: constrain the tokens to it. `options.maskFirst`: compute the grammar's mask before every draw and never
   * offer (the shard asks it for sequences that report logprobs, so their tokens come the way they always did).
   */
  constructor(params: SamplingParams, promptTokenIds: ArrayLike<number>, grammar?: GrammarMatcher, options?: { readonly maskFirst?: boolean }) {
    const { temperature, topK, topP, minP, repetitionPenalty } = params
    if (!(temperature >= 0)) throw rangeError(`temperature must be >= 0, found ${temperature}`)
    if (!(topK >= 0) || !Number.isInteger(topK)) throw rangeError(`topK must be an integer >= 0, found ${topK}`)
    if (!(topP > 0 && topP <= 1)) throw rangeError(`topP must be in (0, 1], found ${topP}`)
    if (!(minP >= 0 && minP <= 1)) throw rangeError(`minP must be in [0, 1], found ${minP}`)
    if (!(repetitionPenalty > 0)) throw rangeError(`repetitionPenalty must be > 0, found ${repetitionPenalty}`)
    this.params = params
    this.#grammar = grammar
    const greedyDraw = temperature === 0 || topK === 1
    const temperatureOnly = topK === 0 && topP === 1 && minP === 0
    this.#sampleFirst = grammar !== undefined && options?.maskFirst !== true && (greedyDraw || temperatureOnly)
    this.#rng = new Rng(params.seed)
    this.#mode = repetitionPenalty !== 1 ? 1 : params.presencePenalty !== 0 || params.frequencyPenalty !== 0 ? 2 : 0
    if (this.#mode === 1) {
      const sorted = Int32Array.from(promptTokenIds).sort()
      let n = 0
      for (let i = 0; i < sorted.length; i++) {
        if (sorted[i] >= 0 && (n === 0 || sorted[i] !== sorted[n - 1])) sorted[n++] = sorted[i] // unique, non-negative
      }
      this.#ids = new Int32Array(Math.max(n, 64))
      this.#ids.set(sorted.subarray(0, n))
      this.#vals = new Float64Array(this.#ids.length)
      this.#count = n
    }
  }

  /** Picks the next token from logits[offset .. offset+vocab) and records it for the penalties. */
  sample(logits: Float32Array, offset = 0, vocab = logits.length - offset): number {
    if (this.#grammar !== undefined) return this.#sampleConstrained(this.#grammar, logits, offset, vocab)
    return this.#sampleRow(logits, offset, vocab)
  }

  #sampleRow(logits: Float32Array, offset: number, vocab: number): number {
    const np = this.#prepare(logits, offset, vocab)
    const n = this.#filter(logits, offset, vocab, np)
    const token = n === ARGMAX ? this.#argmax : n === WHOLE_ROW ? this.#drawRow(vocab) : this.#drawKept(n)
    this.accept(token)
    return token
  }

  /** How this sequence's constrained tokens were found so far (all zero without a grammar). */
  get grammarStats(): GrammarSamplingStats {
    return { ...this.#stats }
  }

  /**
   * The next token under the grammar: sample first where that is exact and recently paid off, else (or when the
   * offer is rejected) mask first. Once the grammar is complete and allows nothing but stop tokens, a stop token is
   * forced: the first of the model's stop ids that the grammar allows.
   *
   * Random numbers: mask first draws one per token, as unconstrained sampling does; an accepted offer draws one, a
   * rejected one two (the rejected draw, then the masked one). Which path runs depends only on the sequence's own
   * past tokens (acceptance history), never on timing, so a seed still gives the same tokens.
   */
  #sampleConstrained(grammar: GrammarMatcher, logits: Float32Array, offset: number, vocab: number): number {
    if (grammar.terminated) return this.#forcedStop(grammar, grammar.stopTokenIds[0] ?? 0)
    if (this.#sampleFirst && (this.#offerAcceptance >= FAST_PATH_MIN_ACCEPTANCE || ++this.#sinceOffer >= FAST_PATH_PROBE)) {
      this.#sinceOffer = 0
      const token = this.#drawUnrecorded(logits, offset, vocab)
      // A stop token goes through the mask, which decides between the stop ids as it always has.
      const accepted = !grammar.isStopToken(token) && grammar.accept(token)
      this.#offerAcceptance += ((accepted ? 1 : 0) - this.#offerAcceptance) * FAST_PATH_DECAY
      if (accepted) {
        this.#stats.fastAccepted++
        this.accept(token)
        return token
      }
      this.#stats.fastRejected++
    } else this.#stats.maskFirst++
    return this.#sampleMasked(grammar, logits, offset, vocab)
  }

  /**
   * Constrained greedy through the graph (the CPU shard's structured-output steps): before the forward pass, writes
   * the grammar's mask of the next token into `into` (`ceil(vocab / 32)` words, the graph's `token_bitmask` row).
   * Returns the token when the grammar leaves no choice (complete, or stop tokens alone allowed, or nothing): the
   * stop token the logits path would force, taken now. Else undefined: the graph's masked ArgMax is the token the
   * logits path would pick (the lowest id of the largest allowed logit), to be taken with `takeMaskedGreedy`.
   * Only for greedy samplers without penalties (the shard checks: the graph knows no penalties).
   */
  maskForGraph(into: Int32Array, vocab: number): number | undefined {
    const grammar = this.#grammar
    if (grammar === undefined) throw new Error("Sampler.maskForGraph: no grammar")
    if (grammar.terminated) return this.#forcedStop(grammar, grammar.stopTokenIds[0] ?? 0)
    // The matcher writes its own width and zeroes the rest: ids it does not know (a padded vocabulary) stay disallowed.
    const mask = grammar.nextTokenBitmask(into)
    if (mask !== into) into.set(mask.subarray(0, into.length))
    const forced = forcedStopOf(into, vocab, grammar.stopTokenIds)
    if (forced !== undefined) return this.#forcedStop(grammar, forced)
    this.#graphMasked++
    return undefined
  }

  /** Takes the graph's masked ArgMax after `maskForGraph`; false (nothing changed) when the grammar rejects it. */
  takeMaskedGreedy(token: number): boolean {
    if (this.#grammar === undefined || !this.#grammar.accept(token)) return false
    this.accept(token)
    return true
  }

  /** Constrained tokens whose mask the graph applied (`maskForGraph` left the choice to it). */
  get graphMaskedTokens(): number {
    return this.#graphMasked
  }

  #forcedStop(grammar: GrammarMatcher, token: number): number {
    this.#stats.forcedStop++
    grammar.accept(token)
    this.accept(token)
    return token
  }

  /** Draws from the (penalised, filtered) row without recording the token. */
  #drawUnrecorded(logits: Float32Array, offset: number, vocab: number): number {
    const np = this.#prepare(logits, offset, vocab)
    const n = this.#filter(logits, offset, vocab, np)
    return n === ARGMAX ? this.#argmax : n === WHOLE_ROW ? this.#drawRow(vocab) : this.#drawKept(n)
  }

  /** Computes the grammar's mask and draws from the row restricted to it; advances the matcher. */
  #sampleMasked(grammar: GrammarMatcher, logits: Float32Array, offset: number, vocab: number): number {
    const words = Math.ceil(vocab / 32)
    ensureMaskScratch(vocab, words)
    const mask = grammar.nextTokenBitmask(bitmask)
    const usable = Math.min(words, mask.length)
    // ids at or past `vocab` are never allowed: clear them from the last word
    const tail = vocab - (usable - 1) * 32
    const lastWord = tail >= 32 ? mask[usable - 1]! : mask[usable - 1]! & ((1 << tail) - 1)
    const count = allowedCount(mask, vocab)
    const forced = forcedByMask(mask, vocab, grammar.stopTokenIds, count)
    if (forced !== undefined) return this.#forcedStop(grammar, forced)
    let token: number
    if (count * SPARSE_MASK_RATIO <= vocab) {
      let n = 0
      for (let w = 0; w < usable; w++) {
        let bitsW = w === usable - 1 ? lastWord : mask[w]!
        while (bitsW !== 0) {
          const low = bitsW & -bitsW
          allowedIds[n++] = w * 32 + 31 - Math.clz32(low)
          bitsW ^= low
        }
      }
      token = this.#drawAmong(logits, offset, vocab, n)
    } else {
      if (masked.length < vocab) masked = new Float32Array(vocab)
      for (let w = 0; w < usable; w++) {
        const bitsW = w === usable - 1 ? lastWord : mask[w]!
        const base = w * 32
        const end = Math.min(base + 32, vocab)
        if (bitsW === 0) masked.fill(-Infinity, base, end)
        else if (bitsW === -1 && end === base + 32) masked.set(logits.subarray(offset + base, offset + end), base)
        else for (let i = base; i < end; i++) masked[i] = ((bitsW >>> (i - base)) & 1) === 1 ? logits[offset + i]! : -Infinity
      }
      masked.fill(-Infinity, usable * 32, vocab)
      token = this.#drawUnrecorded(masked, 0, vocab)
    }
    if (!grammar.accept(token)) throw new Error(`Sampler: the grammar rejected token ${token}, which its own mask allowed`)
    this.accept(token)
    return token
  }

  /**
   * Draws among allowedIds[0..n) (ascending, n >= 1) as the row restricted to them would: penalties, temperature,
   * top-k, top-p, min-p over those ids alone. Greedy takes the lowest id of the largest value; a list whose values
   * are all -Infinity (or NaN) gives its first id.
   */
  #drawAmong(logits: Float32Array, off: number, vocab: number, n: number): number {
    const np = this.#prepare(logits, off, vocab)
    const ids = this.#ids
    let s = 0
    let max = -Infinity
    let arg = -1
    for (let j = 0; j < n; j++) {
      const id = allowedIds[j]!
      while (s < np && ids[s]! < id) s++
      const v = s < np && ids[s] === id ? this.#vals[s]! : logits[off + id]!
      allowedLogits[j] = v
      if (v > max) {
        max = v
        arg = id
      }
    }
    const { temperature, topK, topP, minP } = this.params
    if (arg < 0) return allowedIds[0]!
    if (!(temperature > 0) || !Number.isFinite(max)) return arg
    const invT = 1 / temperature
    let mass = 0
    for (let j = 0; j < n; j++) {
      const id = allowedIds[j]!
      const p = Math.fround(expNeg((allowedLogits[j]! - max) * invT))
      probs[id] = p
      cand[j] = id
      mass += p
    }
    let m: number
    if (topK > 0 && topK < n) {
      m = selectTop(cand, n, topK, true, 1, 0)
      if (topP < 1) {
        mass = 0
        for (let j = 0; j < m; j++) mass += probs[(cand[j] = kept[j]!)]!
        m = selectTop(cand, m, topP * mass, false, 1, 0)
      }
    } else if (topP < 1) m = selectTop(cand, n, topP * mass, false, 1, 0)
    else {
      kept.set(cand.subarray(0, n))
      m = n
    }
    // min-p: the largest allowed id has weight exp(0) = 1, so the bound is minP itself
    if (minP > 0) {
      let k = 0
      for (let j = 0; j < m; j++) if (probs[kept[j]!]! >= minP) kept[k++] = kept[j]!
      m = k
    }
    return this.#drawKept(m)
  }

  /**
   * The ids sample() would draw from for this row, sorted, without drawing or recording anything: the argmax
   * alone when greedy, every id when no filter is on. For tests and diagnostics; allocates.
   */
  keptSet(logits: Float32Array, offset = 0, vocab = logits.length - offset): Int32Array {
    const np = this.#prepare(logits, offset, vocab)
    const n = this.#filter(logits, offset, vocab, np)
    if (n === ARGMAX) return Int32Array.of(this.#argmax)
    return n === WHOLE_ROW ? Int32Array.from({ length: vocab }, (_, i) => i) : kept.slice(0, n).sort()
  }

  /** The row after penalties (a full copy). For tests and diagnostics. */
  penalizedLogits(logits: Float32Array, offset = 0, vocab = logits.length - offset): Float64Array {
    const np = this.#prepare(logits, offset, vocab)
    const out = Float64Array.from(logits.subarray(offset, offset + vocab))
    for (let s = 0; s < np; s++) out[this.#ids[s]] = this.#vals[s]
    return out
  }

  /** Records a generated token for the penalties; sample() calls it, call it directly for forced tokens. */
  accept(token: number): void {
    if (this.#mode === 0) return
    const seen = this.#generated.get(token) ?? 0
    this.#generated.set(token, seen + 1)
    if (this.#mode === 1 || seen === 0) this.#insert(token)
  }

  #insert(id: number): void {
    let lo = 0
    let hi = this.#count
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (this.#ids[mid] < id) lo = mid + 1
      else hi = mid
    }
    if (lo < this.#count && this.#ids[lo] === id) return
    if (this.#count === this.#ids.length) {
      const grown = new Int32Array(this.#count * 2)
      grown.set(this.#ids)
      this.#ids = grown
      this.#vals = new Float64Array(grown.length)
    }
    this.#ids.copyWithin(lo + 1, lo, this.#count)
    this.#ids[lo] = id
    this.#count++
  }

  /** Checks the row and computes the penalised values; returns how many ids (those < vocab) are penalised. */
  #prepare(logits: Float32Array, off: number, vocab: number): number {
    if (!(vocab >= 1 && off >= 0 && off + vocab <= logits.length) || !Number.isInteger(off + vocab)) {
      throw rangeError(`row [${off}, ${off + vocab}) must be non-empty and lie within logits of length ${logits.length}`)
    }
    ensureScratch(vocab)
    const ids = this.#ids
    const vals = this.#vals
    const { repetitionPenalty: rep, presencePenalty: presence, frequencyPenalty: frequency } = this.params
    const outputPenalty = presence !== 0 || frequency !== 0
    let np = 0
    while (np < this.#count && ids[np] < vocab) np++
    for (let s = 0; s < np; s++) {
      let l = logits[off + ids[s]]
      if (rep !== 1) l = l > 0 ? l / rep : l * rep
      const c = outputPenalty ? (this.#generated.get(ids[s]) ?? 0) : 0
      if (c > 0) l -= presence + frequency * c
      vals[s] = l
    }
    return np
  }

  /** Max and first argmax of the effective row: the gaps between penalised ids, then those ids. */
  #findMax(logits: Float32Array, off: number, vocab: number, np: number): void {
    const ids = this.#ids
    let best = -Infinity
    let arg = -1
    let start = 0
    for (let s = 0; s <= np; s++) {
      const end = s < np ? ids[s] : vocab
      for (let i = start; i < end; i++) {
        const v = logits[off + i]
        if (v > best) {
          best = v
          arg = i
        }
      }
      start = end + 1
    }
    for (let s = 0; s < np; s++) {
      const v = this.#vals[s]
      if (v > best || (v === best && (ids[s] < arg || arg < 0))) {
        best = v
        arg = ids[s]
      }
    }
    this.#max = best
    this.#argmax = arg < 0 ? 0 : arg
  }

  /**
   * Applies temperature, top-k, top-p, min-p. Returns how many ids it left in `kept`, WHOLE_ROW when no filter
   * is on (probs then holds the whole row), or ARGMAX when greedy or the row is degenerate.
   */
  #filter(logits: Float32Array, off: number, vocab: number, np: number): number {
    const { temperature, topK, topP, minP } = this.params
    const k = topK > 0 && topK < vocab ? topK : 0
    const invT = 1 / temperature
    let n: number
    if (temperature > 0 && k > 0 && k <= HEAP_TOP_K) {
      const size = this.#heapTopK(logits, off, vocab, np, k)
      let max = -Infinity
      for (let j = 0; j < size; j++) max = Math.max(max, heapV[j])
      if (!Number.isFinite(max)) {
        this.#findMax(logits, off, vocab, np)
        return ARGMAX
      }
      let mass = 0
      for (let j = 0; j < size; j++) {
        const p = Math.fround(expNeg((heapV[j] - max) * invT))
        probs[heapI[j]] = p
        cand[j] = heapI[j]
        mass += p
      }
      if (topP < 1) n = selectTop(cand, size, topP * mass, false, 1, 0)
      else {
        kept.set(cand.subarray(0, size))
        n = size
      }
    } else {
      this.#findMax(logits, off, vocab, np)
      if (!(temperature > 0) || !Number.isFinite(this.#max)) return ARGMAX
      const byMass = k === 0 && topP < 1
      this.#fillProbs(logits, off, vocab, np)
      if (k > 0) {
        n = selectTopRow(vocab, 0, k, true)
        if (topP < 1) {
          let mass = 0
          for (let j = 0; j < n; j++) mass += probs[(cand[j] = kept[j])]
          n = selectTop(cand, n, topP * mass, false, 1, 0)
        }
      } else if (byMass) n = selectTopRow(vocab, topP, 0, false)
      else if (minP > 0) {
        n = 0
        for (let i = 0; i < vocab; i++) if (probs[i] >= minP) kept[n++] = i
        return n
      } else return WHOLE_ROW
    }
    // min-p: the max token has probability exp(0) = 1 before normalisation, so the bound is minP itself
    if (minP > 0) {
      let m = 0
      for (let j = 0; j < n; j++) if (probs[kept[j]] >= minP) kept[m++] = kept[j]
      n = m
    }
    return n
  }

  /** Fills probs[0..vocab) with exp((l - max) / T) (unnormalised, float32) and their sum into #total. */
  #fillProbs(logits: Float32Array, off: number, vocab: number, np: number): void {
    const ids = this.#ids
    const max = this.#max
    const invT = 1 / this.params.temperature
    let total = 0
    let start = 0
    for (let s = 0; s <= np; s++) {
      const end = s < np ? ids[s] : vocab
      for (let i = start; i < end; i++) {
        const p = Math.fround(expNeg((logits[off + i] - max) * invT))
        probs[i] = p
        total += p
      }
      if (s < np) total += probs[end] = Math.fround(expNeg((this.#vals[s] - max) * invT))
      start = end + 1
    }
    this.#total = total
  }

  /** Leaves the k largest effective logits in heapV / heapI; returns how many (fewer when some are -Infinity). */
  #heapTopK(logits: Float32Array, off: number, vocab: number, np: number, k: number): number {
    if (heapV.length < k) {
      heapV = new Float64Array(k)
      heapI = new Int32Array(k)
    }
    const ids = this.#ids
    let size = 0
    let threshold = -Infinity
    let start = 0
    for (let s = 0; s <= np; s++) {
      const end = s < np ? ids[s] : vocab
      for (let i = start; i < end; i++) {
        const v = logits[off + i]
        if (v > threshold) {
          size = heapOffer(v, i, size, k)
          if (size === k) threshold = heapV[0]
        }
      }
      if (s < np && this.#vals[s] > threshold) {
        size = heapOffer(this.#vals[s], end, size, k)
        if (size === k) threshold = heapV[0]
      }
      start = end + 1
    }
    return size
  }

  /** Draws from the whole row of probs, weighted. */
  #drawRow(vocab: number): number {
    const r = this.#rng.next() * this.#total
    let acc = 0
    let last = this.#argmax
    for (let i = 0; i < vocab; i++) {
      const p = probs[i]
      acc += p
      if (acc > r) return i
      if (p > 0) last = i
    }
    return last // rounding left r just above the running sum: the last id with weight
  }

  /** Draws from kept[0..n), weighted by probs. */
  #drawKept(n: number): number {
    let total = 0
    for (let j = 0; j < n; j++) total += probs[kept[j]]
    const r = this.#rng.next() * total
    let acc = 0
    for (let j = 0; j < n; j++) {
      acc += probs[kept[j]]
      if (acc > r) return kept[j]
    }
    return kept[n - 1]
  }
}
