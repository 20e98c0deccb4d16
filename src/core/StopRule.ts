/**
 * When a sequence stops on its tokens alone: an end-of-turn token (unless the request ignores it), its token limit,
 * or the context. The scheduler applies it to every sampled token; stop strings, which need the text, are the one
 * stop decided later, by the sequence's output (`SequenceOutput.ts`).
 */
import type { ValidatedRequest } from "./Request.ts"

export type TokenStop = "eos" | "max_tokens" | "context"

/** The stop, if any, after `tokenId` became the `generated`-th token and the sequence holds `total` tokens. */
export const tokenStop = (
  request: ValidatedRequest,
  stopTokenIds: ReadonlySet<number>,
  contextLength: number,
  tokenId: number,
  generated: number,
  total: number
): TokenStop | undefined => {
  if (!request.ignoreEos && stopTokenIds.has(tokenId)) return "eos"
  if (generated >= request.maxTokens) return "max_tokens"
  if (total >= contextLength) return "context"
  return undefined
}
