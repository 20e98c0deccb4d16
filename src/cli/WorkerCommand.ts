/**
 * `chorus worker`: a local engine that takes its jobs from an AIME-compatible API server (`chorus serve
 * --no-local-model`, or AIME's own server) over the worker protocol, as AIME's `chat.py --api_server` does:
 * long-polls `/worker_job_request` for as many jobs as it has free slots (jobs arriving while others decode join at
 * the next poll), posts the text so far to `/worker_job_progress` (every 8 tokens or 100 ms, at most one post in
 * flight per job), and the result to `/worker_job_result` once per job. Token ids travel beside the text (fields
 * AIME ignores) so that a Chorus server can report OpenAI token counts. The server away: retried with exponential
 * backoff. SIGTERM: stops polling, finishes running jobs, exits.
 */
import { Context, Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { BenchAdapter } from "../adapters/bench/BenchAdapter.ts"
import { Llama3Adapter } from "../adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../core/Engine.ts"
import { ValidationError } from "../core/Errors.ts"
import { runWorker } from "../http/workers/WorkerClient.ts"
import type { FlagSpecs, ParsedFlags } from "./Args.ts"
import { modelFlags, resolveModelFlags } from "./ModelFlags.ts"

export const workerFlags = {
  ...modelFlags,
  "api-server": { kind: "string", description: "base URL of the API server (chorus serve --no-local-model, or an AIME API server)" },
  "worker-key": { kind: "string", description: "the server's worker key (its --worker-key); env CHORUS_WORKER_KEY" },
  endpoint: { kind: "string", description: "AIME endpoint the jobs come from (default llama3_chat)" },
  "job-type": { kind: "string", description: "AIME job type (default llama3)" },
  name: { kind: "string", description: "worker name (default <host>#<n>_<num_gpus>x<gpu>, as AIME's worker library)" },
  adapter: { kind: "string", description: "llama3 (default) | bench (no model time: for measuring and testing the serving path)" },
  "bench-step-delay": { kind: "number", description: "bench adapter only: simulated model time per step in ms (default 0)" }
} as const satisfies FlagSpecs

export { requestOfJob, runWorker, type WorkerOptions, workerName } from "../http/workers/WorkerClient.ts"

/** AIME's quantization labels for the dtypes. */
const quantizationOf = (dtype: string | undefined) => (dtype === "bfloat16" ? "bf16" : dtype === "float16" ? "fp16" : "fp32")

/** `8B`, `70B`, `135M`: parameters counted from a Hugging Face Llama config.json; undefined when it cannot be read. */
export const modelSizeOf = (modelDir: string | undefined): string | undefined => {
  if (modelDir === undefined) return undefined
  try {
    const c = JSON.parse(fs.readFileSync(path.join(modelDir, "config.json"), "utf8")) as Record<string, number | boolean>
    const h = Number(c["hidden_size"])
    const heads = Number(c["num_attention_heads"])
    const kv = Number(c["num_key_value_heads"] ?? heads)
    const layer = 2 * h * h + 2 * h * (h / heads) * kv + 3 * h * Number(c["intermediate_size"]) + 2 * h
    const n = Number(c["vocab_size"]) * h * (c["tie_word_embeddings"] === true ? 1 : 2) + Number(c["num_hidden_layers"]) * layer
    if (!Number.isFinite(n) || n <= 0) return undefined
    return n >= 1e9 ? `${Math.round(n / 1e9)}B` : `${Math.round(n / 1e6)}M`
  } catch {
    return undefined
  }
}

export const runWorkerCommand = (flags: ParsedFlags<typeof workerFlags>) =>
  Effect.gen(function*() {
    const apiServer = flags["api-server"]
    if (apiServer === undefined || !/^https?:\/\//.test(apiServer)) {
      return yield* Effect.fail(new ValidationError({ field: "--api-server", message: "--api-server URL (http:// or https://) is required" }))
    }
    const key = flags["worker-key"] ?? process.env.CHORUS_WORKER_KEY
    if (key === undefined || key === "") {
      return yield* Effect.fail(new ValidationError({ field: "--worker-key", message: "--worker-key KEY (or CHORUS_WORKER_KEY) is required" }))
    }
    const adapterName = flags.adapter ?? "llama3"
    if (adapterName !== "llama3" && adapterName !== "bench") {
      return yield* Effect.fail(new ValidationError({ field: "--adapter", message: `--adapter must be llama3 or bench, got '${adapterName}'` }))
    }
    const stepDelay = flags["bench-step-delay"]
    if (stepDelay !== undefined && !(stepDelay >= 0)) {
      return yield* Effect.fail(new ValidationError({ field: "--bench-step-delay", message: `--bench-step-delay must be zero or more milliseconds, got ${stepDelay}` }))
    }
    if (stepDelay !== undefined && adapterName !== "bench") {
      return yield* Effect.fail(new ValidationError({ field: "--bench-step-delay", message: "--bench-step-delay needs --adapter bench" }))
    }
    const model = yield* resolveModelFlags(flags)
    const loaded = adapterName === "bench"
      ? yield* BenchAdapter.load({
        ...(model.adapter.maxContext === undefined ? {} : { contextLength: model.adapter.maxContext }),
        ...(model.adapter.shards === undefined ? {} : { shards: model.adapter.shards }),
        ...(stepDelay === undefined ? {} : { stepDelayMs: stepDelay })
      })
      : yield* Llama3Adapter.load(model.adapter)
    model.done()
    const device = model.engine.device
    const engine = Context.get(yield* Layer.build(Engine.layerFor(loaded, model.engine)), Engine)
    const stats = yield* engine.stats
    const controller = new AbortController()
    const stop = () => controller.abort()
    process.once("SIGTERM", stop)
    process.once("SIGINT", stop)
    yield* Effect.tryPromise({
      try: () =>
        runWorker({
          apiServer,
          workerKey: key,
          engine,
          maxBatch: stats.maxNumSeqs,
          ...(flags["job-type"] === undefined ? {} : { jobType: flags["job-type"] }),
          ...(flags.endpoint === undefined ? {} : { endpoint: flags.endpoint }),
          ...(flags.name === undefined ? {} : { name: flags.name }),
          gpuName: device?.kind === "cuda" ? "CUDA" : "CPU",
          modelQuantization: quantizationOf(flags.dtype),
          ...(modelSizeOf(flags.model) === undefined ? {} : { modelSize: modelSizeOf(flags.model)! }),
          numGpus: 1,
          signal: controller.signal
        }),
      catch: (e) => new ValidationError({ field: "--api-server", message: e instanceof Error ? e.message : String(e) })
    })
  }).pipe(Effect.scoped)
