/**
 * `npm run bench:quant`: the error of 4-bit weights (MatMulNBits) against the float model, as a markdown table: max
 * and mean relative logit error and greedy agreement over 16 tokens (tools/quant/QuantError.ts says how each is
 * measured), for each quantization variant, over the fixtures and any checkpoint given.
 *
 *   node tools/bench-quant.ts [--model DIR]... [--device cpu|cuda:N] [--dtype float32|float16|bfloat16]
 *     [--variants b32-zp,b32-sym,b128-zp,b128-sym,b32-zp-headfloat,float16] [--tokens 16] [--prompts 4] [--no-fixtures]
 *
 * A variant is `b32|b128` `-zp|-sym`, then any of `-headfloat`, `-acc4` and `-actclip` (`--quant-search
 * activation-clip` over the built-in calibration text), or `float16`.
 *
 * Without --model it measures test/fixtures/tiny-llama3-{a,b} (their reference prompts). A checkpoint without a
 * reference.json gets `--prompts` deterministic pseudo-random prompts of 32 tokens. On CUDA the float side runs in
 * --dtype (float16 by default there), so the figures are int4 against float16, as issue 12 asks. The variant `float16`
 * is no quantization at all, float16 against float32: it calibrates how sensitive a model's
 * greedy choices are (the tiny random fixtures' logits are nearly flat, so small changes flip them).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { describeQuant, type Int4Settings, parseQuantVariant } from "../src/adapters/llama3/Quantization.ts"
import { parseDevice } from "../src/core/shard/StepProtocol.ts"
import { fixtureDir } from "../test/support/fixtures.ts"
import { measureQuantError, summarize } from "./quant/QuantError.ts"

const { values } = parseArgs({
  options: {
    model: { type: "string", multiple: true },
    device: { type: "string", default: "cpu" },
    dtype: { type: "string" },
    variants: { type: "string", default: "b32-zp,b32-sym,b128-zp,b128-sym,b32-zp-headfloat,float16" },
    tokens: { type: "string", default: "16" },
    prompts: { type: "string", default: "4" },
    "no-fixtures": { type: "boolean", default: false }
  }
})

const fail = (message: string): never => {
  process.stderr.write(`bench-quant: ${message}\n`)
  process.exit(2)
}

const device = parseDevice(values.device) ?? fail(`--device must be cpu, cuda or cuda:N, got '${values.device}'`)
const dtypeFlag = values.dtype ?? (device.kind === "cuda" ? "float16" : "float32")
const dtype = dtypeFlag === "float32" || dtypeFlag === "float16" || dtypeFlag === "bfloat16"
  ? dtypeFlag
  : fail(`--dtype must be float32, float16 or bfloat16, got '${dtypeFlag}'`)
const tokens = Number(values.tokens)
const promptCount = Number(values.prompts)
if (!Number.isInteger(tokens) || tokens < 1) fail(`--tokens must be a positive integer, got '${values.tokens}'`)

const parseVariant = (v: string): Int4Settings | "float16" =>
  v === "float16" ? v : parseQuantVariant(v) ?? fail(`variant '${v}' is not float16 or b32|b128 - zp|sym [-headfloat] [-acc4] [-actclip]`)
const variants = values.variants.split(",").map((v) => v.trim()).filter((v) => v !== "").map(parseVariant)

const referencePrompts = (dir: string): ReadonlyArray<ReadonlyArray<number>> | undefined => {
  const file = path.join(dir, "reference.json")
  if (!fs.existsSync(file)) return undefined
  return (JSON.parse(fs.readFileSync(file, "utf8")) as { prompts: ReadonlyArray<{ input_ids: ReadonlyArray<number> }> }).prompts.map((p) => p.input_ids)
}

/** Deterministic pseudo-random prompts (a linear congruential sequence) over the vocabulary. */
const syntheticPrompts = (dir: string): ReadonlyArray<ReadonlyArray<number>> => {
  const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as { vocab_size: number }
  let x = 12345
  const next = () => (x = (x * 1103515245 + 12345) % 2147483648)
  return Array.from({ length: promptCount }, () => Array.from({ length: 32 }, () => 100 + (next() % (config.vocab_size - 356))))
}

const models = [
  ...(values["no-fixtures"] ? [] : [fixtureDir("tiny-llama3-a"), fixtureDir("tiny-llama3-b")]),
  ...(values.model ?? []).map((m) => path.resolve(m))
]
if (models.length === 0) fail("nothing to measure: give --model DIR or drop --no-fixtures")

const e = (x: number) => x.toExponential(2)
const pct = (x: number) => `${(100 * x).toFixed(1)}%`
const lines = [
  `device ${values.device}, float ${dtype}, ${tokens} greedy tokens per prompt, ${new Date().toISOString().slice(0, 10)}`,
  "",
  "| model | quantization | prompts | max rel. error | mean rel. error | teacher-forced agreement | free-running agreement |",
  "|---|---|--:|--:|--:|--:|--:|"
]
for (const dir of models) {
  const prompts = referencePrompts(dir) ?? syntheticPrompts(dir)
  for (const variant of variants) {
    const started = performance.now()
    const { prompts: rows } = await measureQuantError({
      // the calibration row compares float16 with float32 whatever --dtype says
      adapter: { modelDir: dir, dtype: variant === "float16" ? "float32" : dtype, ...(device.kind === "cuda" ? { attention: "fused" as const } : {}) },
      ...(variant === "float16" ? { dtype: "float16" as const } : { quantize: variant }),
      engine: { device, maxNumSeqs: 4 },
      prompts,
      tokens
    })
    const s = summarize(rows, tokens)
    const line = `| ${path.basename(dir)} | ${variant === "float16" ? "float16 vs float32" : describeQuant(variant)} | ${rows.length} | ${e(s.maxRel)} | ${e(s.meanRel)} | ${pct(s.teacherAgree)} | ${pct(s.freeAgree)} |`
    lines.push(line)
    process.stderr.write(`${line}  (${((performance.now() - started) / 1000).toFixed(1)} s)\n`)
  }
}
process.stdout.write(`${lines.join("\n")}\n`)
process.exit(0)
