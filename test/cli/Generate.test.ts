// `chorus generate` end to end, as a user runs it: a child process on the reference fixture.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { fixtureDir, readReference, relativeError, repoRoot } from "../support/fixtures.ts"

const cache = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-generate-cache-"))
const chorus = (...args: Array<string>) =>
  spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), ...args], {
    env: { ...process.env, CHORUS_CACHE: cache },
    encoding: "utf8",
    timeout: 120_000
  })

describe("chorus generate", () => {
  const reference = readReference("tiny-llama3-b")

  it.each(reference.prompts.map((p, i) => [i, p] as const))("prints the reference greedy continuation of prompt %i as JSON", (_, prompt) => {
    const r = chorus(
      "generate", "--model", fixtureDir("tiny-llama3-b"), "--token-ids", prompt.input_ids.join(","),
      "--max-tokens", "24", "--temperature", "0", "--json", "--logits"
    )
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.token_ids).toEqual(prompt.greedy_continuation)
    expect(out.finish_reason).toBe("length")
    expect(typeof out.text).toBe("string")
    expect(relativeError(out.logits_last, prompt.prefill_logits_last)).toBeLessThan(1e-4)
  })

  it("streams text from the embedded default model with a seed, the same twice", () => {
    const run = () => chorus("generate", "--prompt", "Once upon a time", "--max-tokens", "12", "--seed", "7", "--json")
    const a = run()
    expect(a.status).toBe(0)
    const first = JSON.parse(a.stdout)
    expect(first.token_ids).toHaveLength(12)
    expect(JSON.parse(run().stdout)).toEqual(first)
  })
})
