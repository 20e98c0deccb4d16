/**
 * Prints the pipeline roofline of a checkpoint split over shards (PipelineRoofline.ts) and, given server-sweep.json
 * files, each measured output rate as a share of it. For issue 11's 2-GPU runs (scripts/gpu/multi-gpu.sh):
 *
 *   node tools/bench-gpu/pipeline-roofline.ts --checkpoint DIR --shards 2 --bandwidth-gbs 4000 \
 *     [--dtype float16] [--input-len 512] [--output-len 256] [--concurrency 1,64] [--sweep DIR/server-sweep.json ...]
 *
 * `--bandwidth-gbs`: one GPU's streaming rate in GB/s (measured: a device-to-device copy's bytes read + written).
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import { loadLlamaConfig } from "../../src/adapters/llama3/LlamaConfig.ts"
import { parseToolFlags, toolFail } from "../ToolFlags.ts"
import { pipelineRoofline } from "./PipelineRoofline.ts"

const flagSpecs = {
  checkpoint: { kind: "string", description: "Hugging Face checkpoint folder (its config.json is read)" },
  shards: { kind: "integer", description: "shards, one GPU each (default 2)" },
  dtype: { kind: "string", description: "float16 (default) | bfloat16 | float32" },
  "bandwidth-gbs": { kind: "number", description: "one GPU's measured streaming rate, GB/s (required)" },
  "input-len": { kind: "integer", description: "prompt tokens per request (default 512)" },
  "output-len": { kind: "integer", description: "output tokens per request (default 256)" },
  concurrency: { kind: "list", description: "streams to compute the floor for (default: the sweeps' levels, else 1,64)" },
  sweep: { kind: "string", repeatable: true, description: "a server-sweep.json whose output rates to compare" },
} as const

const tool = { name: "pipeline-roofline", run: "node tools/bench-gpu/pipeline-roofline.ts" }
// Annotated so that a call narrows like a `never` function declaration.
const fail: (message: string) => never = toolFail(tool)
const flags = parseToolFlags(tool, "--checkpoint DIR --bandwidth-gbs X [options]", flagSpecs)
const checkpoint = flags.checkpoint ?? fail("--checkpoint DIR is required")
const bandwidthGbs = flags["bandwidth-gbs"] ?? fail("--bandwidth-gbs X is required")
if (!(bandwidthGbs > 0)) fail(`--bandwidth-gbs must be positive, got ${bandwidthGbs}`)
const shards = flags.shards ?? 2
const dtype = flags.dtype ?? "float16"
if (dtype !== "float16" && dtype !== "bfloat16" && dtype !== "float32") fail(`--dtype must be float16, bfloat16 or float32, got '${dtype}'`)
const inputLen = flags["input-len"] ?? 512
const outputLen = flags["output-len"] ?? 256

interface SweepLevel {
  readonly concurrency: number | null
  readonly completed: number
  readonly output_throughput: number
}
const sweeps = (flags.sweep ?? []).map((file) => {
  try {
    return { file, levels: (JSON.parse(fs.readFileSync(file, "utf8")) as { levels: ReadonlyArray<SweepLevel> }).levels }
  } catch (e) {
    return fail(`cannot read ${file}: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`)
  }
})
const fromSweeps = [...new Set(sweeps.flatMap((s) => s.levels.flatMap((l) => (l.concurrency === null ? [] : [l.concurrency]))))]
const levels = flags.concurrency?.map(Number) ?? (fromSweeps.length > 0 ? fromSweeps.sort((a, b) => a - b) : [1, 64])
if (levels.some((n) => !Number.isInteger(n) || n < 1)) fail(`--concurrency must list positive integers, got ${flags.concurrency?.join(",")}`)

const config = await Effect.runPromise(loadLlamaConfig(checkpoint)).catch((e: unknown) => fail(e instanceof Error ? e.message : String(e)))
const bandwidth = bandwidthGbs * 1e9
const lines = [
  `pipeline roofline: ${checkpoint} (${config.numLayers} layers, hidden ${config.hiddenSize}), ${shards} shards at ${dtype}, ${bandwidthGbs} GB/s per GPU, ${inputLen} in / ${outputLen} out`,
  "",
  "| streams | GB per step by shard | in sequence: ms/step | tok/s floor | pipelined: ms/step | tok/s floor | measured tok/s | of in-sequence | of pipelined | sweep |",
  "|--:|--|--:|--:|--:|--:|--:|--:|--:|--|"
]
for (const batch of levels) {
  const r = pipelineRoofline(config, shards, dtype, { batch, meanContext: inputLen + outputLen / 2 }, bandwidth)
  // One stream cannot overlap stages (each token needs the last), so its pipelined floor is no bound.
  const pipelined = batch === 1 ? "n/a | n/a" : `${r.pipelinedMs.toFixed(2)} | ${r.pipelinedTokensPerSecond.toFixed(0)}`
  const head = `| ${batch} | ${r.shardBytes.map((x) => (x / 1e9).toFixed(2)).join(" + ")} | ${r.sequentialMs.toFixed(2)} | ${r.sequentialTokensPerSecond.toFixed(0)} | ${pipelined}`
  const measured = sweeps.flatMap((s) => s.levels.filter((l) => l.concurrency === batch && l.completed > 0).map((l) => ({ file: s.file, rate: l.output_throughput })))
  if (measured.length === 0) lines.push(`${head} | not measured | | | |`)
  for (const m of measured) {
    lines.push(`${head} | ${m.rate.toFixed(1)} | ${(100 * m.rate / r.sequentialTokensPerSecond).toFixed(0)}% | ${batch === 1 ? "n/a" : `${(100 * m.rate / r.pipelinedTokensPerSecond).toFixed(0)}%`} | ${m.file} |`)
  }
}
process.stdout.write(`${lines.join("\n")}\n`)
