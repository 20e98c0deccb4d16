/**
 * Pipeline shards: generated tokens/s of a model split over `--shards` workers at several pipeline depths (steps on
 * the shards at once), the depths' runs interleaved so that a shared machine's load falls on each alike.
 *
 *   node tools/bench-pipeline.ts --adapter bench --step-delay 20            # simulated model time, blocked in the shards
 *   node tools/bench-pipeline.ts --adapter llama3 --layers 8 --hidden 512   # a random Llama 3-shaped checkpoint on the CPU
 *   options: --shards 2 --depths 1,2 --concurrency 16 --prompt-len 64 --gen-len 64 --repeat 2 --json FILE
 *
 * Each engine gets one warm-up run at the same concurrency. A run sends `concurrency` greedy requests at once and
 * counts generated tokens over the wall time from the first request to the last token.
 */
import { Effect, Exit, Layer, ManagedRuntime, Scope, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { BenchAdapter } from "../src/adapters/bench/BenchAdapter.ts"
import { Llama3Adapter } from "../src/adapters/llama3/Llama3Adapter.ts"
import { writeSafetensors, type SafetensorsTensor } from "../src/checkpoint/Safetensors.ts"
import { Engine } from "../src/core/Engine.ts"
import { type EngineObserver, type ShardBusy, silentObserver } from "../src/core/EngineObserver.ts"
import type { LoadedModel } from "../src/core/ModelAdapter.ts"
import type { GenerateRequest } from "../src/core/Request.ts"
import { parseToolFlags, toolScript } from "./ToolFlags.ts"

const flags = parseToolFlags(toolScript("bench-pipeline.ts"), "[options]", {
  adapter: { kind: "string", description: "bench (default: simulated step time) | llama3 (a random checkpoint on the CPU)" },
  shards: { kind: "integer", description: "shard workers (default 2)" },
  depths: { kind: "list", description: "pipeline depths to compare (default 1,2)" },
  concurrency: { kind: "integer", description: "requests at once (default 16)" },
  "prompt-len": { kind: "integer", description: "prompt tokens per request (default 64)" },
  "gen-len": { kind: "integer", description: "generated tokens per request (default 64)" },
  repeat: { kind: "integer", description: "runs per depth, interleaved (default 2)" },
  "step-delay": { kind: "number", description: "bench: simulated model ms per step over all shards (default 20)" },
  "token-delay": { kind: "number", description: "bench: simulated model ms per token of a step over all shards, on top (default 0)" },
  layers: { kind: "integer", description: "llama3: decoder layers (default 8)" },
  hidden: { kind: "integer", description: "llama3: hidden size (default 512; heads of 64)" },
  threads: { kind: "integer", description: "ORT threads per shard (default: cores / shards)" },
  json: { kind: "string", description: "write the results here" }
})
const shards = flags.shards ?? 2
const depths = (flags.depths ?? ["1", "2"]).map(Number)
const concurrency = flags.concurrency ?? 16
const promptLen = flags["prompt-len"] ?? 64
const genLen = flags["gen-len"] ?? 64
const repeat = flags.repeat ?? 2
const adapter = flags.adapter ?? "bench"

process.env.CHORUS_CACHE ??= fs.mkdtempSync(path.join(os.tmpdir(), "chorus-bench-pipeline-"))

/** A Llama 3-shaped checkpoint of random weights (std 0.02), vocabulary 2048, tied embeddings. */
const randomCheckpoint = async (layers: number, hidden: number): Promise<string> => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `chorus-random-l${layers}-h${hidden}-`))
  const heads = hidden / 64
  const kvHeads = Math.max(1, heads / 2)
  const intermediate = Math.round((hidden * 8) / 3 / 64) * 64
  const vocab = 2048
  const config = {
    architectures: ["LlamaForCausalLM"], attention_bias: false, bos_token_id: 1, eos_token_id: 2, head_dim: 64, hidden_act: "silu",
    hidden_size: hidden, intermediate_size: intermediate, max_position_embeddings: 8192, mlp_bias: false, model_type: "llama",
    num_attention_heads: heads, num_hidden_layers: layers, num_key_value_heads: kvHeads, rms_norm_eps: 1e-5,
    rope_theta: 500000.0, tie_word_embeddings: true, vocab_size: vocab, dtype: "float32"
  }
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config))
  fs.writeFileSync(path.join(dir, "generation_config.json"), JSON.stringify({ bos_token_id: 1, eos_token_id: 2 }))
  let seed = 12345
  const random = (n: number) => {
    const a = new Float32Array(n)
    for (let i = 0; i < n; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0
      a[i] = ((seed / 2 ** 32) * 2 - 1) * 0.035 // uniform, std 0.02
    }
    return a
  }
  const t = (name: string, shape: ReadonlyArray<number>, data?: Float32Array): SafetensorsTensor => ({
    name, dtype: "F32", shape, data: data ?? random(shape.reduce((a, b) => a * b, 1))
  })
  const ones = (n: number) => new Float32Array(n).fill(1)
  const tensors: Array<SafetensorsTensor> = [t("model.embed_tokens.weight", [vocab, hidden]), t("model.norm.weight", [hidden], ones(hidden))]
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}.`
    tensors.push(
      t(`${p}input_layernorm.weight`, [hidden], ones(hidden)),
      t(`${p}post_attention_layernorm.weight`, [hidden], ones(hidden)),
      t(`${p}self_attn.q_proj.weight`, [hidden, hidden]),
      t(`${p}self_attn.k_proj.weight`, [kvHeads * 64, hidden]),
      t(`${p}self_attn.v_proj.weight`, [kvHeads * 64, hidden]),
      t(`${p}self_attn.o_proj.weight`, [hidden, hidden]),
      t(`${p}mlp.gate_proj.weight`, [intermediate, hidden]),
      t(`${p}mlp.up_proj.weight`, [intermediate, hidden]),
      t(`${p}mlp.down_proj.weight`, [hidden, intermediate])
    )
  }
  await Effect.runPromise(writeSafetensors(path.join(dir, "model.safetensors"), tensors))
  return dir
}

const prompt = (i: number, vocab: number) => Array.from({ length: promptLen }, (_, j) => 3 + ((i * 7919 + j * 104729) % (vocab - 3)))

const main = async () => {
  const scope = Effect.runSync(Scope.make())
  let model: LoadedModel
  let describe: string
  if (adapter === "bench") {
    const delay = flags["step-delay"] ?? 20
    const perToken = flags["token-delay"] ?? 0
    model = await Effect.runPromise(BenchAdapter.load({ shards, stepDelayMs: delay, tokenDelayMs: perToken }).pipe(Scope.provide(scope)))
    describe = `bench adapter, ${delay} ms + ${perToken} ms per token simulated per step (split over the shards by layers, blocked in Atomics.wait)`
  } else {
    const layers = flags.layers ?? 8
    const hidden = flags.hidden ?? 512
    const dir = await randomCheckpoint(layers, hidden)
    model = await Effect.runPromise(Llama3Adapter.load({ modelDir: dir, shards }).pipe(Scope.provide(scope)))
    describe = `random Llama 3-shaped checkpoint, ${layers} layers, hidden ${hidden}, vocabulary 2048, float32, ORT CPU EP`
  }
  const vocab = Math.min(model.vocabSize, 2048)
  const requests = (n: number): Array<GenerateRequest> =>
    Array.from({ length: n }, (_, i) => ({ input: { type: "tokens", tokenIds: prompt(i, vocab) }, maxTokens: genLen, sampling: { temperature: 0 }, ignoreEos: true }))

  const engines = depths.map((depth) => {
    const spans: Array<ShardBusy> = []
    const observer: EngineObserver = { ...silentObserver, shardBusy: (b) => spans.push(b) }
    const runtime = ManagedRuntime.make(Layer.fresh(Engine.layerFor(model, {
      maxNumSeqs: concurrency,
      pipelineDepth: depth,
      observer,
      ...(flags.threads === undefined ? {} : { threadsPerShard: flags.threads })
    })))
    const run = async () => {
      spans.length = 0
      const started = performance.now()
      const outs = await Promise.all(requests(concurrency).map((r) =>
        runtime.runPromise(Engine.use((e) => Stream.runCollect(e.generate(r)))).then((ev) => ev.filter((x) => x._tag === "Token").length)
      ))
      const seconds = (performance.now() - started) / 1000
      const tokens = outs.reduce((a, b) => a + b, 0)
      // Busy time of each shard over the run, and how much of the wall time two or more shards were busy at once.
      const busy = Array.from({ length: shards }, (_, k) => spans.filter((s) => s.shard === k).reduce((a, s) => a + s.endedAt - s.startedAt, 0) / 1000)
      const steps = new Set(spans.map((s) => s.step)).size
      return { tokens, seconds, tokensPerSecond: tokens / seconds, busy, steps, shardStepMs: busy.map((b) => (b * 1000) / steps) }
    }
    return { depth, runtime, run }
  })

  const rows: Array<Record<string, unknown>> = []
  for (const e of engines) await e.run() // warm-up
  for (let r = 0; r < repeat; r++) {
    for (const e of engines) {
      const loadBefore = os.loadavg()[0]!
      const res = await e.run()
      const row = { depth: e.depth, run: r + 1, ...res, load1Before: loadBefore, load1After: os.loadavg()[0]! }
      rows.push(row)
      console.log(
        `depth ${e.depth} run ${r + 1}: ${res.tokens} tokens in ${res.seconds.toFixed(2)} s = ${res.tokensPerSecond.toFixed(1)} tok/s, ` +
          `${res.steps} steps, shard busy ${res.busy.map((b) => `${((b / res.seconds) * 100).toFixed(0)}%`).join(" / ")} ` +
          `(${res.shardStepMs.map((m) => m.toFixed(1)).join(" / ")} ms a step), ` +
          `load ${loadBefore.toFixed(2)} -> ${os.loadavg()[0]!.toFixed(2)}`
      )
    }
  }
  const summary = depths.map((d) => {
    const xs = rows.filter((r) => r.depth === d).map((r) => r.tokensPerSecond as number)
    return { depth: d, tokensPerSecond: xs, mean: xs.reduce((a, b) => a + b, 0) / xs.length }
  })
  for (const s of summary) console.log(`depth ${s.depth}: mean ${s.mean.toFixed(1)} tok/s (${s.tokensPerSecond.map((x) => x.toFixed(1)).join(", ")})`)
  if (summary.length > 1) console.log(`depth ${summary[1]!.depth} / depth ${summary[0]!.depth}: ${(summary[1]!.mean / summary[0]!.mean).toFixed(2)}x`)
  const result = {
    date: new Date().toISOString(), machine: `${os.cpus()[0]?.model ?? "?"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
    node: process.version, model: describe, shards, concurrency, promptLen, genLen, rows, summary
  }
  if (flags.json !== undefined) fs.writeFileSync(flags.json, JSON.stringify(result, null, 2))
  for (const e of engines) await e.runtime.dispose()
  await Effect.runPromise(Scope.close(scope, Exit.void))
  process.exit(0)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
