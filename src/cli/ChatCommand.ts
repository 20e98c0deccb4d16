/**
 * `chorus chat`: an interactive terminal chat. Streams answers, keeps the multi-turn history, `/reset` clears it,
 * `/exit` (or Ctrl-D, or the end of piped input) quits, and Ctrl-C stops the current answer but not the program.
 */
import { Effect, Exit, Fiber, Layer, ManagedRuntime, Stream } from "effect"
import * as readline from "node:readline"
import { Llama3Adapter } from "../adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../core/Engine.ts"
import type { ChatMessage } from "../core/text/ChatMessage.ts"
import type { FlagSpecs, ParsedFlags } from "./Args.ts"
import { samplingFlags, samplingFrom } from "./GenerateCommand.ts"
import { modelFlags, resolveModelFlags } from "./ModelFlags.ts"

export const chatFlags = {
  ...modelFlags,
  ...samplingFlags,
  system: { kind: "string", description: "system prompt" },
  "max-tokens": { kind: "integer", description: "most tokens per answer (default 512)" }
} as const satisfies FlagSpecs

export const runChat = (flags: ParsedFlags<typeof chatFlags>) =>
  Effect.gen(function*() {
    const options = yield* resolveModelFlags(flags)
    const model = yield* Llama3Adapter.load(options.adapter)
    options.done()
    const runtime = ManagedRuntime.make(Layer.fresh(Engine.layerFor(model, { ...options.engine, maxNumSeqs: 1 })))
    yield* Effect.addFinalizer(() => Effect.promise(() => runtime.dispose()))
    const engine = yield* Effect.promise(() => runtime.runPromise(Engine.use(Effect.succeed)))
    yield* Effect.promise(() => chatLoop(runtime, engine, flags))
  }).pipe(Effect.scoped)

const chatLoop = async (
  runtime: ManagedRuntime.ManagedRuntime<Engine, unknown>,
  engine: Engine["Service"],
  flags: ParsedFlags<typeof chatFlags>
): Promise<void> => {
  const system: Array<ChatMessage> = flags.system === undefined ? [] : [{ role: "system", content: flags.system }]
  let history: Array<ChatMessage> = [...system]
  const interactive = process.stdin.isTTY === true
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: interactive })
  let answering: Fiber.Fiber<string, unknown> | undefined
  const out = (s: string) => process.stdout.write(s)

  // Ctrl-C stops the answer being streamed, never the program. A terminal delivers it to readline; a pipe or a
  // `kill -INT` delivers it to the process.
  const onInterrupt = () => {
    if (answering !== undefined) void runtime.runPromise(Fiber.interrupt(answering))
    else out(`\n(type /exit or press Ctrl-D to quit)\n${interactive ? "> " : ""}`)
  }
  rl.on("SIGINT", onInterrupt)
  process.on("SIGINT", onInterrupt)
  out(`chorus chat: ${engine.model.id}, context ${engine.model.contextLength} tokens. /reset clears the chat, /exit quits.\n`)

  // The line iterator buffers what arrives while an answer streams, so piped input (`printf 'a\nb\n' | chorus chat`)
  // is answered line by line, in order, until its end; the prompt is for people only.
  const lines = rl[Symbol.asyncIterator]()
  rl.setPrompt("> ")
  const ask = async (): Promise<string | undefined> => {
    if (interactive) rl.prompt()
    const next = await lines.next()
    return next.done === true ? undefined : next.value
  }
  for (;;) {
    const line = await ask()
    if (line === undefined) break
    const text = line.trim()
    if (text === "") continue
    if (text === "/exit" || text === "/quit") break
    if (text === "/reset") {
      history = [...system]
      out("(chat cleared)\n")
      continue
    }
    history.push({ role: "user", content: text })
    let answer = ""
    const stream = engine.generate({
      input: { type: "chat", messages: history },
      maxTokens: flags["max-tokens"] ?? 512,
      sampling: samplingFrom(flags)
    }).pipe(
      Stream.runForEach((event) =>
        Effect.sync(() => {
          if (event._tag === "Token" || event._tag === "Finished") {
            answer += event.text
            out(event.text)
          }
        })
      ),
      Effect.map(() => answer)
    )
    answering = runtime.runFork(stream)
    const exit = await runtime.runPromise(Fiber.await(answering))
    answering = undefined
    if (Exit.isFailure(exit)) {
      const interrupted = exit.cause.reasons.every((r) => r._tag === "Interrupt")
      out(interrupted ? " [stopped]\n" : `\nchorus: ${String(exit.cause.reasons[0])}\n`)
    } else out("\n")
    // A stopped answer stays in the history as far as it got, so the next turn sees what the user saw.
    history.push({ role: "assistant", content: answer })
  }
  process.off("SIGINT", onInterrupt)
  rl.close()
}
