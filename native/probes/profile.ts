/**
 * ORT's per-node profile of decode steps of a converted shard through the native addon, to see where a step's time
 * goes (which kernels, how much per layer). Run on a GPU host:
 *
 *   node native/probes/profile.ts --model DIR/shard-0.onnx [--batch 64] [--past 512] [--max-len 2048] [--steps 20] [--graphs]
 *
 * Prints the step time and the ops by total time (ORT's own kernel timings, host side: for the CUDA EP these are
 * launch-to-return times, so they show where the host waits as well as GPU work).
 */
import { parseFlags } from "../../src/cli/Args.ts"
import { NativeOrt } from "../../src/core/native/NativeOrt.ts"
import { opTimes } from "./ProfileTrace.ts"

const flags = parseFlags("profile", process.argv.slice(2), {
  model: { kind: "string", description: "shard .onnx (one shard holding every layer)" },
  batch: { kind: "integer", description: "rows per step" },
  past: { kind: "integer", description: "cached tokens per row" },
  "max-len": { kind: "integer", description: "KV slot length" },
  steps: { kind: "integer", description: "profiled steps" },
  "kv-heads": { kind: "integer", description: "KV heads" },
  "head-dim": { kind: "integer", description: "head dim" },
  cuda: { kind: "string", repeatable: true, description: "extra CUDA EP option key=value (repeatable)" },
  "no-profile": { kind: "boolean", description: "time steps without ORT's profiler" }
})
const extra = Object.fromEntries((flags.cuda ?? []).map((kv) => kv.split("=") as [string, string]))
const B = flags.batch ?? 64, past = flags.past ?? 512, maxLen = flags["max-len"] ?? 2048, steps = flags.steps ?? 20
const kvh = flags["kv-heads"] ?? 8, hd = flags["head-dim"] ?? 128
const addon = NativeOrt.load()
const session = addon.createSession(flags.model!, {
  provider: "cuda",
  ...(flags["no-profile"] === true ? {} : { profile: "/tmp/chorus-profile" }),
  cuda: { arena_extend_strategy: "kSameAsRequested", ...extra }
})
const layers = session.inputNames.filter((n) => n.startsWith("past_key.")).map((n) => n.slice(9))
const kv = layers.map(() => [session.allocate("float16", [B, kvh, maxLen, hd]), session.allocate("float16", [B, kvh, maxLen, hd])] as const)
const feeds = (): Record<string, never> => {
  const f: Record<string, unknown> = {
    input_ids: { data: new BigInt64Array(B).fill(1000n), dims: [B, 1] },
    seqlens_k: { data: new Int32Array(B).fill(past), dims: [B] },
    total_sequence_length: { data: Int32Array.of(past + 1), dims: [] },
    logits_index: { data: new BigInt64Array(B), dims: [B, 1] }
  }
  if (session.inputNames.includes("position_ids")) f.position_ids = { data: new BigInt64Array(B).fill(BigInt(past)), dims: [B, 1] }
  layers.forEach((l, i) => {
    f[`past_key.${l}`] = kv[i]![0]
    f[`past_value.${l}`] = kv[i]![1]
  })
  return f as Record<string, never>
}
const outputs = (): Record<string, never> => {
  const o: Record<string, unknown> = { greedy_token: "host" }
  layers.forEach((l, i) => {
    o[`present_key.${l}`] = kv[i]![0]
    o[`present_value.${l}`] = kv[i]![1]
  })
  return o as Record<string, never>
}
for (let i = 0; i < 5; i++) session.run(feeds(), outputs())
const t = performance.now()
for (let i = 0; i < steps; i++) session.run(feeds(), outputs())
const stepMs = (performance.now() - t) / steps
if (flags["no-profile"] === true) {
  console.log(`batch ${B}, past ${past}, slot ${maxLen}, cuda ${JSON.stringify(extra)}: ${stepMs.toFixed(2)} ms per step (wall, no profiler)`)
  process.exit(0)
}
const byOp = opTimes(session.endProfiling())
const total = [...byOp.values()].reduce((sum, t) => sum + t.us, 0)
const runs = steps + 5
console.log(`batch ${B}, past ${past}, slot ${maxLen}: ${stepMs.toFixed(2)} ms per step (wall); node kernel time ${(total / runs / 1000).toFixed(2)} ms per step`)
for (const [op, v] of [...byOp].sort((a, b) => b[1].us - a[1].us).slice(0, 12)) {
  console.log(`  ${op.padEnd(36)} ${(v.us / runs / 1000).toFixed(3).padStart(8)} ms/step  ${String(Math.round(v.n / runs)).padStart(4)} nodes`)
}
