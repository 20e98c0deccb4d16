/**
 * The pool of conversion workers (`ConvertWorker.ts`): produces and writes a checkpoint's initializers in parallel,
 * one tensor per task. A scoped resource: closing the scope closes the pool (`close()`, which lets running tasks
 * finish; tasks are uninterruptible, so an interrupt never leaves a write in flight).
 */
import { Effect, type Scope } from "effect"
import * as os from "node:os"
import { Piscina } from "piscina"
import { CheckpointError, ConversionError } from "../../core/Errors.ts"
import { moduleUrl } from "../../core/ModuleUrl.ts"
import type { ConvertResult, ConvertTask } from "./ConvertWorker.ts"

export interface ConvertPool {
  readonly threads: number
  /** Produces and writes one initializer; succeeds with its byte length. Uninterruptible: it always runs to its end. */
  readonly run: (task: ConvertTask) => Effect.Effect<number, CheckpointError | ConversionError>
}

/**
 * `CHORUS_CONVERT_THREADS` where set, else one thread per core, at most 16: on the 16-core H200 host 16 threads
 * converted the 8B checkpoint in 7.6 s against 10.9 s with 8 (docs/benchmarks.md, first start).
 */
export const defaultConvertThreads = (): number => {
  const env = process.env["CHORUS_CONVERT_THREADS"]
  return env !== undefined && env.trim() !== "" ? Number(env) : Math.min(16, Math.max(1, os.availableParallelism()))
}

const workerUrl = moduleUrl("./ConvertWorker.ts", import.meta.url)

export const makeConvertPool = (threads: number = defaultConvertThreads()): Effect.Effect<ConvertPool, never, Scope.Scope> =>
  Effect.gen(function*() {
    const n = Math.max(1, Math.floor(threads))
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() => new Piscina({ filename: workerUrl.href, minThreads: 0, maxThreads: n, idleTimeout: 1000 })),
      (p) => Effect.promise(() => p.close())
    )
    const run = (task: ConvertTask): Effect.Effect<number, CheckpointError | ConversionError> =>
      Effect.uninterruptible(
        Effect.tryPromise({
          try: () => pool.run(task) as Promise<ConvertResult>,
          catch: (e) => new ConversionError({ message: `conversion worker failed on ${task.dataPath}: ${e instanceof Error ? e.message : String(e)}` })
        }).pipe(
          Effect.flatMap((r): Effect.Effect<number, CheckpointError | ConversionError> =>
            r.ok
              ? Effect.succeed(r.bytes)
              : r.kind === "checkpoint"
              ? Effect.fail(new CheckpointError({ path: r.path, message: r.message }))
              : Effect.fail(new ConversionError({ message: r.message }))
          )
        )
      )
    return { threads: n, run }
  })
