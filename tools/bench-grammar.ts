/**
 * Cost of constrained decoding in the sampler, per token, at batch 64 over the real Llama 3 vocabulary (128,256 ids):
 * the grammar's next-token bitmask (xgrammar, WebAssembly), and a whole constrained sample (mask the row, sample,
 * advance the matcher) against the same sample unconstrained. Also the one-off costs: the tokenizer info / compiler
 * (once per shard) and compiling a schema (once per distinct schema; cached).
 *
 * Run: node tools/bench-grammar.ts [steps]
 * Logits are synthetic (normal, sd 2.5); each sequence restarts its matcher when its JSON is complete.
 */
import { Effect } from "effect"
import { loadTokenizer } from "../src/adapters/llama3/Tokenizer.ts"
import { GrammarCompiler, type GrammarMatcher, type GrammarSpec, grammarVocab } from "../src/core/sampling/Grammar.ts"
import { Rng } from "../src/core/sampling/Rng.ts"
import { Sampler } from "../src/core/sampling/Sampler.ts"
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

const run = (label: string, spec: GrammarSpec | undefined, params: Partial<SamplingParams>) => {
  const p: SamplingParams = { ...greedy, ...params }
  const matchers: Array<GrammarMatcher | undefined> = []
  const samplers: Array<Sampler> = []
  const fresh = (i: number) => {
    matchers[i]?.dispose()
    matchers[i] = spec === undefined ? undefined : compiler.matcher(spec)
    samplers[i] = new Sampler({ ...p, seed: i }, [], matchers[i])
  }
  for (let i = 0; i < BATCH; i++) fresh(i)
  let maskMs = 0
  const t0 = performance.now()
  for (let s = 0; s < steps; s++) {
    for (let i = 0; i < BATCH; i++) {
      const m = matchers[i]
      if (m !== undefined) {
        const tm = performance.now()
        m.nextTokenBitmask()
        maskMs += performance.now() - tm
      }
      const token = samplers[i]!.sample(logits, i * V, V)
      if (m !== undefined && (m.terminated || vocab.stopTokenIds.includes(token))) fresh(i)
    }
  }
  const perToken = (performance.now() - t0 - maskMs) / (steps * BATCH)
  const perMask = maskMs / (steps * BATCH)
  console.log(`${label.padEnd(44)} sample ${perToken.toFixed(3)} ms/token${spec === undefined ? "" : `, bitmask alone ${perMask.toFixed(3)} ms/token`}, batch step ${(perToken * BATCH).toFixed(1)} ms`)
}

console.log(`vocabulary strings ${vocabMs.toFixed(0)} ms, tokenizer info + compiler ${compilerMs.toFixed(0)} ms, schema compile ${compileMs.toFixed(0)} ms`)
for (const [name, params] of [["greedy", { temperature: 0 }], ["temperature 1, top-p 0.95", { temperature: 1, topP: 0.95 }]] as const) {
  run(`${name}, unconstrained`, undefined, params)
  run(`${name}, json_schema`, schema, params)
  run(`${name}, json_object`, { kind: "json" }, params)
}
