// Paths and readers for the reference checkpoints in test/fixtures (made by transformers: scripts/make_fixtures.py, test/fixtures/README.md).
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")
/** The repository's own reference checkpoints; `$CHORUS_FIXTURES` names a folder of extra (or replacement) fixtures. */
export const fixturesRoot = path.resolve(repoRoot, "test/fixtures")
export const fixtureDir = (name: string): string => {
  const extra = process.env.CHORUS_FIXTURES
  if (extra !== undefined && fs.existsSync(path.join(extra, name))) return path.resolve(extra, name)
  return path.resolve(fixturesRoot, name)
}

export interface ReferencePrompt {
  readonly input_ids: ReadonlyArray<number>
  readonly prefill_logits_last: ReadonlyArray<number>
  readonly prefill_logits_all: ReadonlyArray<ReadonlyArray<number>> | null
  readonly greedy_continuation: ReadonlyArray<number>
}

export const readReference = (name: string): { readonly prompts: ReadonlyArray<ReferencePrompt> } =>
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

/**
 * The gap between the two largest logits over the largest magnitude: under about 1% is a near-tie, which half
 * precision cannot be expected to order as float32 does.
 */
export const topTwoGap = (logits: ArrayLike<number>): number => {
  const sorted = Array.from(logits).sort((a, b) => b - a)
  const scale = Math.max(...Array.from(logits, Math.abs))
  return (sorted[0]! - sorted[1]!) / scale
}
