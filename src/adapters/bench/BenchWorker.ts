/**
 * The bench adapter's shard worker: the `load` / `step` / `release` contract of `StepProtocol.ts` with no model
 * math, so a benchmark measures only what surrounds the model (HTTP, engine loop, scheduler, shard actors, thread
 * hops, detokenizer, streaming). It runs on its own piscina thread like the real worker, and can spend a fixed
 * simulated model time per step blocked in that thread (`Atomics.wait`), which holds the engine loop the same way a
 * real `run` does without burning a core, so 64 simulated streams do not compete with the server for CPU.
 *
 * Tokens are deterministic per sequence: the sequence starts at a word chosen by a hash of its prompt and walks a
 * fixed list of ordinary English words, one token per position. None of them is a stop token, so benchmarks set
 * their length with max tokens.
 */
import { inTurn } from "../../core/shard/InTurn.ts"
import { planTokens, type ShardLoad, type ShardLoadResult, type StepPlan, type StepResult } from "../../core/shard/StepProtocol.ts"

/** What the bench adapter's shard specs carry beyond `ShardLoad`: this shard's share of the simulated step time. */
export interface BenchShardLoad extends ShardLoad {
  readonly stepDelayMs?: number
  /** This shard's simulated time per token of a step, on top of `stepDelayMs`. */
  readonly tokenDelayMs?: number
}

/**
 * Single-token Llama 3 ids of common words with a leading space (checked against the tokenizer in
 * `test/adapters/bench/BenchAdapter.test.ts`): consecutive ids read " the quick brown fox jumps over a lazy dog ...".
 */
export const BENCH_WORD_IDS: ReadonlyArray<number> = [
  279, // " the"
  4062, // " quick"
  14198, // " brown"
  39935, // " fox"
  35308, // " jumps"
  927, // " over"
  264, // " a"
  16053, // " lazy"
  5679, // " dog"
  323, // " and"
  1243, // " then"
  8640, // " runs"
  1139, // " into"
  6307, // " green"
  13952, // " forest"
  1405, // " where"
  1690, // " many"
  2678, // " small"
  20229, // " birds"
  7936, // " sing"
  922, // " about"
  2362, // " old"
  7493, // " stories"
  315, // " of"
  1274, // " people"
  889, // " who"
  3974, // " live"
  304, // " in"
  2697, // " little"
  15316, // " houses"
  3221, // " near"
  3090, // " water"
  555, // " by"
  1938, // " day"
  477, // " or"
  3814, // " night"
  449, // " with"
  4885, // " friends"
  505, // " from"
  1475, // " every"
  6424, // " town"
  1234, // " under"
  10107, // " bright"
  7160, // " sun"
  30488, // " beside"
  15140, // " river"
  1855, // " each"
  6693 // " morning"
]

/** The token a sequence whose prompt hashes to `seed` produces at position `position` (0-based, prompt included). */
export const benchToken = (seed: number, position: number): number =>
  BENCH_WORD_IDS[(seed + position) % BENCH_WORD_IDS.length]!

/** FNV-1a over the prompt ids: the same prompt always starts at the same word. */
export const promptSeed = (promptTokenIds: ArrayLike<number>): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < promptTokenIds.length; i++) {
    h ^= promptTokenIds[i]! & 0xffffffff
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

interface BenchState {
  readonly load: BenchShardLoad
  readonly delayMs: number
  readonly tokenDelayMs: number
  /** Last shard: row -> its sequence's prompt seed (the "sampler"). */
  readonly seeds: Map<number, number>
  /** Last shard: sequences that asked for logprobs, and how many top alternatives. */
  readonly logprobs: Map<number, number>
}

let state: BenchState | undefined

// Atomics.wait needs a shared Int32Array; nothing ever notifies it, so each wait lasts its full timeout.
const sleeper = new Int32Array(new SharedArrayBuffer(4))

/** Blocks this worker thread for `ms` of real time, as a synchronous model `run` would. */
const spend = (ms: number) => {
  if (ms <= 0) return
  const until = performance.now() + ms
  // A wait can return early on a spurious wake-up; keep waiting until the time really passed.
  for (let left = ms; left > 0; left = until - performance.now()) Atomics.wait(sleeper, 0, 0, left)
}

export async function load(task: BenchShardLoad): Promise<ShardLoadResult> {
  const started = performance.now()
  state = { load: task, delayMs: Math.max(0, task.stepDelayMs ?? 0), tokenDelayMs: Math.max(0, task.tokenDelayMs ?? 0), seeds: new Map(), logprobs: new Map() }
  return { kvBytes: 0, loadMs: performance.now() - started, layout: "blocks", numBlocks: task.numBlocks }
}

export function step(plan: StepPlan): Promise<StepResult> {
  return inTurn(() => runStep(plan))
}

const runStep = (plan: StepPlan): StepResult => {
  const s = state
  if (s === undefined) throw new Error("bench worker used before load")
  const cfg = s.load
  const total = planTokens(plan)
  if (cfg.isFirst && plan.tokenIds.length !== total) {
    throw new Error(`bench worker: tokenIds has ${plan.tokenIds.length} ids, expected the sum of numTokens = ${total}`)
  }
  if (!cfg.isFirst && plan.hidden === undefined) throw new Error("a non-first shard needs hidden states")

  const t0 = performance.now()
  spend(s.delayMs + s.tokenDelayMs * total)
  const runMs = performance.now() - t0

  if (!cfg.isLast) return { hidden: new Float32Array(total * cfg.hiddenSize), runMs, sampleMs: 0 }

  const t1 = performance.now()
  for (const seq of plan.newSequences) {
    s.seeds.set(seq.seqId, promptSeed(seq.promptTokenIds))
    if (seq.logprobs !== undefined) s.logprobs.set(seq.seqId, seq.logprobs)
  }
  const tokens = new Int32Array(plan.sampleEntries.length)
  for (let i = 0; i < plan.sampleEntries.length; i++) {
    const e = plan.sampleEntries[i]!
    const seed = s.seeds.get(plan.seqIds[e]!)
    if (seed === undefined) throw new Error(`no sampler registered for sequence ${plan.seqIds[e]}`)
    // The sampled token sits right after the entry's last position.
    tokens[i] = benchToken(seed, plan.pastLens[e]! + plan.numTokens[e]!)
  }
  const sampleMs = performance.now() - t1
  // The bench "model" is certain of its token: logprob 0, and it is the one alternative with any probability.
  const counts = new Int32Array(plan.sampleEntries.length)
  const ids: Array<number> = []
  for (let i = 0; i < plan.sampleEntries.length; i++) {
    const top = s.logprobs.get(plan.seqIds[plan.sampleEntries[i]!]!)
    if (top === undefined) continue
    counts[i] = top > 0 ? 2 : 1
    ids.push(tokens[i]!)
    if (top > 0) ids.push(tokens[i]!)
  }
  const withLogprobs = ids.length === 0 ? {} : { logprobs: { counts, ids: Int32Array.from(ids), values: new Float32Array(ids.length) } }

  // Same shapes as the real worker: per entry, its last position (1) or every new position (2).
  let positions = 0
  for (let e = 0; e < plan.returnLogits.length; e++) {
    if (plan.returnLogits[e] === 1) positions += 1
    else if (plan.returnLogits[e] === 2) positions += plan.numTokens[e]!
  }
  if (positions > 0) return { tokens, logits: new Float32Array(positions * cfg.vocabSize), ...withLogprobs, runMs, sampleMs }
  return { tokens, ...withLogprobs, runMs, sampleMs }
}

/** Forgets the seeds of sequences that finished. */
export function release(seqIds: ReadonlyArray<number>): Promise<void> {
  return inTurn(() => {
    for (const id of seqIds) state?.seeds.delete(id), state?.logprobs.delete(id)
  })
}

/** Fault injection: ends this worker thread abruptly (in a worker thread `process.exit` ends only the thread). */
export function crash(): Promise<never> {
  return inTurn(() => process.exit(1))
}
