// Paths and readers for the reference checkpoints in ../shared/fixtures (made by transformers; see its README).
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")
/** The reference checkpoints: `../shared/fixtures`, or `$CHORUS_FIXTURES` where they were carried elsewhere (GPU hosts). */
export const fixtureDir = (name: "tiny-llama3-a" | "tiny-llama3-b") =>
  path.resolve(process.env.CHORUS_FIXTURES ?? path.resolve(repoRoot, "../shared/fixtures"), name)

export interface ReferencePrompt {
  readonly input_ids: ReadonlyArray<number>
  readonly prefill_logits_last: ReadonlyArray<number>
  readonly prefill_logits_all: ReadonlyArray<ReadonlyArray<number>> | null
  readonly greedy_continuation: ReadonlyArray<number>
}

export const readReference = (name: "tiny-llama3-a" | "tiny-llama3-b"): { readonly prompts: ReadonlyArray<ReferencePrompt> } =>
  JSON.parse(fs.readFileSync(path.join(fixtureDir(name), "reference.json"), "utf8"))

/** max |a - b| / max |b|: the relative error the fixtures' README asks to keep under 1e-4. */
export const relativeError = (got: ArrayLike<number>, want: ArrayLike<number>): number => {
  if (got.length !== want.length) return Number.POSITIVE_INFINITY
  let diff = 0
  let scale = 0
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs(got[i]! - want[i]!))
    scale = Math.max(scale, Math.abs(want[i]!))
  }
  return diff / scale
}
