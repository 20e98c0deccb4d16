/**
 * Writing an adapter: a model family supplies a tokenizer, a prompt format, a shard plan and a runtime (the worker
 * module that executes steps). This one reuses the Llama 3 weights and runtime but gives the model a plain-text
 * "### User / ### Assistant" chat format with its own stop strings — the shape of an adapter for a base model or
 * another family. The engine, batching and streaming are untouched.
 *
 *   node examples/custom-adapter.ts
 */
import { Effect, Stream } from "effect"
import { Engine, type ModelAdapter } from "chorus"
import { Llama3Adapter, type Llama3Options } from "chorus/adapters/llama3"

const plainChat: ModelAdapter<Llama3Options> = {
  name: "plain-chat",
  load: (options) =>
    Effect.map(Llama3Adapter.load(options), (model) => ({
      ...model,
      id: `${model.id}-plain`,
      formatChat: (messages, promptOptions) =>
        model.formatCompletion(
          messages.map((m) => `### ${m.role === "assistant" ? "Assistant" : m.role === "system" ? "System" : "User"}\n${m.content}\n`).join("") +
            "### Assistant\n",
          promptOptions
        )
    }))
}

const program = Effect.gen(function*() {
  const engine = yield* Engine
  const text = yield* engine
    .generate({
      input: { type: "chat", messages: [{ role: "user", content: "Say hello." }] },
      maxTokens: 16,
      stop: ["### User"],
      sampling: { temperature: 0.7, seed: 3 }
    })
    .pipe(Stream.runFold(() => "", (acc, e) => (e._tag === "Token" || e._tag === "Finished" ? acc + e.text : acc)))
  console.log(`${engine.model.id}: ${JSON.stringify(text)}`)
})

Effect.runPromise(program.pipe(Effect.provide(Engine.layer(plainChat, {}))))
