/**
 * `chorus generate`: one prompt in, one continuation out, streamed as text or printed as one JSON object.
 */
import { Effect, Stream } from "effect"
import { Llama3Adapter } from "../adapters/llama3/Llama3Adapter.ts"
import { Engine } from "../core/Engine.ts"
import { ValidationError } from "../core/Errors.ts"
import type { GenerateRequest } from "../core/Request.ts"
import type { SamplingParams } from "../core/sampling/SamplingParams.ts"
import type { FlagSpecs, ParsedFlags } from "./Args.ts"
import { modelFlags, resolveModelFlags } from "./ModelFlags.ts"

export const samplingFlags = {
  temperature: { kind: "number", description: "sampling temperature, 0 = greedy (default 1)" },
  "top-k": { kind: "integer", description: "keep the K most likely tokens, 0 = off" },
  "top-p": { kind: "number", description: "nucleus sampling, in (0, 1]" },
  "min-p": { kind: "number", description: "drop tokens below min-p × the top probability" },
  "repetition-penalty": { kind: "number", description: "penalize tokens already seen (1 = off)" },
  "presence-penalty": { kind: "number", description: "OpenAI presence penalty in [-2, 2]" },
  "frequency-penalty": { kind: "number", description: "OpenAI frequency penalty in [-2, 2]" },
  seed: { kind: "integer", description: "random seed (same seed, same output)" }
} as const satisfies FlagSpecs

export const generateFlags = {
  ...modelFlags,
  ...samplingFlags,
  prompt: { kind: "string", description: "prompt text (BOS is added)" },
  "token-ids": { kind: "list", description: "prompt as token ids, e.g. 1,2,3" },
  "max-tokens": { kind: "integer", description: "most tokens to generate (default 128)" },
  stop: { kind: "string", repeatable: true, description: "stop string (repeatable)" },
  "ignore-eos": { kind: "boolean", description: "keep generating after end-of-text tokens" },
  json: { kind: "boolean", description: 'print {"token_ids", "text", "finish_reason"} as JSON' },
  logits: { kind: "boolean", description: "with --json: add logits_last, float32 logits at the last prompt position" }
} as const satisfies FlagSpecs

export const samplingFrom = (flags: ParsedFlags<typeof samplingFlags>): Partial<SamplingParams> => {
  const out: { -readonly [K in keyof SamplingParams]?: SamplingParams[K] } = {}
  if (flags.temperature !== undefined) out.temperature = flags.temperature
  if (flags["top-k"] !== undefined) out.topK = flags["top-k"]
  if (flags["top-p"] !== undefined) out.topP = flags["top-p"]
  if (flags["min-p"] !== undefined) out.minP = flags["min-p"]
  if (flags["repetition-penalty"] !== undefined) out.repetitionPenalty = flags["repetition-penalty"]
  if (flags["presence-penalty"] !== undefined) out.presencePenalty = flags["presence-penalty"]
  if (flags["frequency-penalty"] !== undefined) out.frequencyPenalty = flags["frequency-penalty"]
  if (flags.seed !== undefined) out.seed = flags.seed
  return out
}

export const runGenerate = (flags: ParsedFlags<typeof generateFlags>) =>
  Effect.gen(function*() {
    if ((flags.prompt === undefined) === (flags["token-ids"] === undefined)) {
      return yield* Effect.fail(new ValidationError({ field: "--prompt", message: "give exactly one of --prompt TEXT or --token-ids 1,2,3" }))
    }
    if (flags.logits === true && flags.json !== true) {
      return yield* Effect.fail(new ValidationError({ field: "--logits", message: "--logits needs --json" }))
    }
    const options = yield* resolveModelFlags(flags)
    const model = yield* Llama3Adapter.load(options.adapter)
    options.done()
    const request: GenerateRequest = {
      input: flags["token-ids"] !== undefined ? { type: "tokens", tokenIds: flags["token-ids"] } : { type: "text", text: flags.prompt! },
      maxTokens: flags["max-tokens"] ?? 128,
      sampling: samplingFrom(flags),
      stop: flags.stop ?? [],
      ignoreEos: flags["ignore-eos"] ?? false,
      promptLogits: flags.logits === true ? "last" : "none"
    }
    const json = flags.json === true
    yield* Effect.gen(function*() {
      const engine = yield* Engine
      const tokenIds: Array<number> = []
      let text = ""
      let finishReason = ""
      let logitsLast: Float32Array | undefined
      yield* engine.generate(request).pipe(
        Stream.runForEach((event) =>
          Effect.sync(() => {
            switch (event._tag) {
              case "Started":
                logitsLast = event.promptLogits
                break
              case "Token":
                tokenIds.push(event.tokenId)
                text += event.text
                if (!json) process.stdout.write(event.text)
                break
              case "Finished":
                text += event.text
                finishReason = event.finishReason
                if (!json) process.stdout.write(`${event.text}\n`)
            }
          })
        )
      )
      if (json) {
        const out: Record<string, unknown> = { token_ids: tokenIds, text, finish_reason: finishReason }
        if (logitsLast !== undefined) out.logits_last = Array.from(logitsLast)
        process.stdout.write(`${JSON.stringify(out)}\n`)
      }
    }).pipe(Effect.provide(Engine.layerFor(model, { ...options.engine, maxNumSeqs: options.engine.maxNumSeqs ?? 1 })))
  }).pipe(Effect.scoped)
