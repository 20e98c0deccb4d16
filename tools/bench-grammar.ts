/**
 * Cost of constrained decoding in the sampler, per token, at batch 64 over the real Llama 3 vocabulary (128,256 ids):
 * the grammar's next-token bitmask (xgrammar, WebAssembly), and a whole constrained sample (mask the row, sample,
 * advance the matcher) against the same sample unconstrained. Also the one-off costs: the tokenizer info / compiler
 * (once per shard) and compiling a schema (once per distinct schema; cached).
 *
 * Run: node tools/bench-grammar.ts [steps]
 * Logits are synthetic (normal, sd 2.5); each sequence restarts its matcher when its JSON is complete. Two kinds of
 * rows: "random" (what a model with random weights gives: its favourite token is almost never one the grammar allows,
 * so the sampler's sample-first offer is rejected) and "aligned" (a trained model that writes the format: one allowed
 * id, picked at random, is raised 8 above the row's maximum, so the offer is accepted nearly always). Aligned rows
 * need the mask to be built; that call is outside the timing (and gives "bitmask alone": xgrammar's mask by itself).
 * "offers accepted" is the sample-first path's acceptance.
 */
import { Effect } from "effect"
import { loadTokenizer } from "../src/adapters/llama3/Tokenizer.ts"
import { GrammarCompiler, type GrammarMatcher, type GrammarSpec, grammarVocab } from "../src/core/sampling/Grammar.ts"
import { Rng } from "../src/core/sampling/Rng.ts"
import { type GrammarSamplingStats, Sampler } from "../src/core/sampling/Sampler.ts"
import { greedy, type SamplingParams } from "../src/core/sampling/SamplingParams.ts"

const V = 128256
const BATCH = 64
const steps = Number(process.argv[2] ?? 50)

const tokenizer = await Effect.runPromise(loadTokenizer(undefined))
if (tokenizer.tokenBytes === undefined) throw new Error("the tokenizer gives no token bytes")
let t = performance.now()
const vocab = grammarVocab(V, tokenizer.tokenBytes, tokenizer.eotTokenIds)
const vocabMs = performance.now() - t
t = performance.now()
const compiler = new GrammarCompiler(vocab, V)
const compilerMs = performance.now() - t

const schema: GrammarSpec = {
  kind: "json_schema",
  schema: JSON.stringify({
    type: "object",
    properties: {
      name: { type: "string", maxLength: 16 },
      age: { type: "integer", minimum: 0, maximum: 100 },
      tags: { type: "array", items: { enum: ["a", "b", "c"] }, maxItems: 4 },
      address: { type: "object", properties: { city: { type: "string", maxLength: 12 }, zip: { type: "string", maxLength: 5 } }, required: ["city"] }
    },
    required: ["name", "age", "tags", "address"]
  })
}
t = performance.now()
compiler.matcher(schema).dispose()
const compileMs = performance.now() - t

const rng = new Rng(7)
const normal = (): number => Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next())
const logits = Float32Array.from({ length: BATCH * V }, () => 2.5 * normal())

const row = new Float32Array(V)

const run = (label: string, spec: GrammarSpec | undefined, params: Partial<SamplingParams>, aligned: boolean) => {
  const p: SamplingParams = { ...greedy, ...params }
  const matchers: Array<GrammarMatcher | undefined> = []
  const samplers: Array<Sampler> = []
  const stats = { fastAccepted: 0, fastRejected: 0, maskFirst: 0, forcedStop: 0 }
  const collect = (s: GrammarSamplingStats) => {
    for (const k of Object.keys(stats) as Array<keyof GrammarSamplingStats>) stats[k] += s[k]
  }
  const fresh = (i: number) => {
    matchers[i]?.dispose()
    if (samplers[i] !== undefined) collect(samplers[i]!.grammarStats)
    matchers[i] = spec === undefined ? undefined : compiler.matcher(spec)
    samplers[i] = new Sampler({ ...p, seed: i }, [], matchers[i])
  }
  for (let i = 0; i < BATCH; i++) fresh(i)
  let maskMs = 0
  let sampleMs = 0
  for (let s = 0; s < steps; s++) {
    for (let i = 0; i < BATCH; i++) {
      const m = matchers[i]
      let source = logits
      let offset = i * V
      // Only aligned rows call the mask here (outside the timed sample): a call just before the sampler's own would
      // leave xgrammar's tables in the CPU caches and flatter the random rows.
      if (m !== undefined && aligned) {
        const tm = performance.now()
        const mask = m.nextTokenBitmask()
        maskMs += performance.now() - tm
        row.set(logits.subarray(i * V, (i + 1) * V))
        const allowed: Array<number> = []
        for (let id = 0; id < V; id++) if ((mask[id >> 5]! >>> (id & 31)) & 1) allowed.push(id)
        let max = -Infinity
        for (let id = 0; id < V; id++) max = Math.max(max, row[id]!)
        row[allowed[Math.floor(rng.next() * allowed.length)]!] = max + 8
        source = row
        offset = 0
      }
      const ts = performance.now()
      const token = samplers[i]!.sample(source, offset, V)
      sampleMs += performance.now() - ts
      if (m !== undefined && (m.terminated || vocab.stopTokenIds.includes(token))) fresh(i)
    }
  }
  for (const sampler of samplers) collect(sampler.grammarStats)
  const perToken = sampleMs / (steps * BATCH)
  const perMask = maskMs / (steps * BATCH)
  const offers = stats.fastAccepted + stats.fastRejected
  const acceptance = offers === 0 ? "" : `, offers accepted ${((100 * stats.fastAccepted) / offers).toFixed(0)}% (${offers} offers, ${stats.maskFirst} mask first)`
  console.log(`${label.padEnd(52)} sample ${perToken.toFixed(3)} ms/token${aligned ? `, bitmask alone ${perMask.toFixed(3)} ms/token` : ""}, batch step ${(perToken * BATCH).toFixed(1)} ms${acceptance}`)
}

console.log(`vocabulary strings ${vocabMs.toFixed(0)} ms, tokenizer info + compiler ${compilerMs.toFixed(0)} ms, schema compile ${compileMs.toFixed(0)} ms`)
for (const [name, params] of [["greedy", { temperature: 0 }], ["temperature 1", { temperature: 1 }], ["temperature 1, top-p 0.95", { temperature: 1, topP: 0.95 }]] as const) {
  run(`${name}, unconstrained`, undefined, params, false)
  for (const aligned of [false, true]) {
    const rows = aligned ? "aligned" : "random"
    run(`${name}, json_schema, ${rows} rows`, schema, params, aligned)
    run(`${name}, json_object, ${rows} rows`, { kind: "json" }, params, aligned)
  }
}
