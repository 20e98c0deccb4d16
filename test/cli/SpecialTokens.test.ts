// `chorus generate` treats special-token strings in --prompt as text, and parses them with --allow-special-tokens:
// the logits at the last prompt position (128256 floats) show which token the model saw there.
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const logitsLast = (...args: Array<string>): Array<number> => {
  const r = spawnSync(
    process.execPath,
    [path.join(repoRoot, "src/cli/main.ts"), "generate", ...args, "--max-tokens", "1", "--temperature", "0", "--json", "--logits"],
    { encoding: "utf8", timeout: 120_000, maxBuffer: 64 * 1024 * 1024 }
  )
  expect(r.stderr).toBe("")
  expect(r.status).toBe(0)
  return JSON.parse(r.stdout).logits_last
}

describe("chorus generate --allow-special-tokens", () => {
  it("parses <|eot_id|> in the prompt only when asked", () => {
    const parsed = logitsLast("--token-ids", "128000,128009")
    const allowed = logitsLast("--prompt", "<|eot_id|>", "--allow-special-tokens")
    const asText = logitsLast("--prompt", "<|eot_id|>")
    expect(allowed).toEqual(parsed)
    // As text the prompt ends in "|>", another token, so the model's next-token logits differ.
    expect(asText).toHaveLength(parsed.length)
    expect(asText).not.toEqual(parsed)
  }, 300_000)
})
