/**
 * Micro-benchmark of the Sampler on Llama 3 sized rows (V = 128256): milliseconds per row for each mode.
 *
 * Run: node tools/bench-sampler.ts [rows per round]
 * Logits are synthetic but shaped like a language model's: a normal bulk (sd 2.5) with a few dozen tokens
 * 8 to 16 above it, so top-p keeps a realistic handful to a few thousand tokens rather than the whole row.
 */
import { Rng } from "../src/core/sampling/Rng.ts"
import { Sampler } from "../src/core/sampling/Sampler.ts"
import { greedy, type SamplingParams } from "../src/core/sampling/SamplingParams.ts"

const V = 128256
const ROWS = 8
const iterations = Number(process.argv[2] ?? 100)

const rng = new Rng(1234)
const normal = (): number => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next())

/** ROWS rows of logits in one batch buffer, as a shard's output would be. */
const makeBatch = (peakTokens: number, peakHeight: number): Float32Array => {
  const batch = new Float32Array(ROWS * V)
  for (let r = 0; r < ROWS; r++) {
    for (let i = 0; i < V; i++) batch[r * V + i] = 2.5 * normal()
    for (let j = 0; j < peakTokens; j++) batch[r * V + ((rng.nextUint32() >>> 0) % V)] += peakHeight * rng.next()
  }
  return batch
}

const prompt = Int32Array.from({ length: 2000 }, () => rng.nextUint32() % V)

const modes: ReadonlyArray<[string, Partial<SamplingParams>]> = [
  ["greedy", {}],
  ["temperature 0.8 (no filter)", { temperature: 0.8 }],
  ["temperature 0.8, top-k 40", { temperature: 0.8, topK: 40 }],
  ["temperature 0.8, top-k 1000", { temperature: 0.8, topK: 1000 }],
  ["temperature 0.8, top-p 0.95", { temperature: 0.8, topP: 0.95 }],
  ["temperature 0.8, top-p 0.95, min-p 0.05", { temperature: 0.8, topP: 0.95, minP: 0.05 }],
  ["temperature 0.8, top-p 0.95, rep 1.1 + presence/frequency (2000-token prompt)",
    { temperature: 0.8, topP: 0.95, repetitionPenalty: 1.1, presencePenalty: 0.5, frequencyPenalty: 0.5 }],
  ["greedy, rep 1.1 (2000-token prompt)", { repetitionPenalty: 1.1 }]
]

const batches: ReadonlyArray<[string, Float32Array]> = [
  ["peaked (40 tokens up to +16)", makeBatch(40, 16)],
  ["flat (plain normal, sd 2.5)", makeBatch(0, 0)]
]

console.log(`Sampler benchmark, V = ${V}, median of 5 rounds of ${iterations} rows, node ${process.version}`)
for (const [batchName, batch] of batches) {
  console.log(`\n${batchName}`)
  for (const [name, overrides] of modes) {
    const params: SamplingParams = { ...greedy, ...overrides, seed: 7 }
    const sampler = new Sampler(params, prompt)
    for (let i = 0; i < 50; i++) sampler.sample(batch, (i % ROWS) * V, V) // warm up the JIT
    // median of 5 rounds: the machine is shared, single rounds are noisy
    const rounds: Array<number> = []
    for (let round = 0; round < 5; round++) {
      const t0 = performance.now()
      for (let i = 0; i < iterations; i++) sampler.sample(batch, (i % ROWS) * V, V)
      rounds.push((performance.now() - t0) / iterations)
    }
    rounds.sort((a, b) => a - b)
    const size = params.temperature > 0 ? sampler.keptSet(batch, 0, V).length : 1
    const line = `${rounds[2].toFixed(3)} ms/row (min ${rounds[0].toFixed(3)})`
    console.log(`  ${name.padEnd(78)} ${line}  kept ${size}`)
  }
}
