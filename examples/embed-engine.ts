/**
 * Embedding the engine in an app: three users ask at once, their answers stream concurrently and share decode
 * steps. Runs on the embedded default model (random weights, real Llama 3 tokenizer); pass a checkpoint folder as
 * the first argument to use a real Llama 3 Instruct model.
 *
 *   node examples/embed-engine.ts [/path/to/Meta-Llama-3-8B-Instruct]
 */
import { Effect, Stream } from "effect"
import { Engine } from "chorus"
import { Llama3Adapter } from "chorus/adapters/llama3"

const questions = ["What is continuous batching?", "Name three rivers.", "Write a haiku about GPUs."]

const program = Effect.gen(function*() {
  const engine = yield* Engine
  const answers = yield* Effect.forEach(
    questions,
    (question) =>
      engine.generate({ input: { type: "chat", messages: [{ role: "user", content: question }] }, maxTokens: 24, sampling: { seed: 1 } }).pipe(
        Stream.runFold(() => "", (text, event) => (event._tag === "Token" || event._tag === "Finished" ? text + event.text : text))
      ),
    { concurrency: "unbounded" }
  )
  questions.forEach((q, i) => console.log(`Q: ${q}\nA: ${answers[i]}\n`))
  const stats = yield* engine.stats
  console.log(`${stats.generatedTokens} tokens in ${stats.numSteps} steps, ${stats.numBatchedSteps} of them shared by several users`)
})

Effect.runPromise(program.pipe(Effect.provide(Engine.layer(Llama3Adapter, { modelDir: process.argv[2] }, { maxNumSeqs: 8 }))))
