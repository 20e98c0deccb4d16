// `chorus serve` flags for sessions, slow readers and the bench step delay: bad values are one line and exit code 2,
// before anything starts.
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const serve = (...args: Array<string>) => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "serve", "--port", "0", ...args], {
    env: { ...process.env, CHORUS_DEBUG: "" },
    encoding: "utf8",
    timeout: 60_000
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

describe("chorus serve: lifecycle flags", () => {
  it.each([
    [["--session-ttl", "0"], "chorus: --session-ttl must be a positive number of seconds, got 0"],
    [["--max-sessions-per-key", "0"], "chorus: --max-sessions-per-key must be at least 1, got 0"],
    [["--slow-reader-timeout", "-1"], "chorus: --slow-reader-timeout must be a positive number of seconds, got -1"],
    [["--bench-step-delay", "5"], "chorus: --bench-step-delay needs --adapter bench"],
    [["--adapter", "bench", "--bench-step-delay", "-3"], "chorus: --bench-step-delay must be zero or more milliseconds, got -3"]
  ])("%j: one line, exit code 2", (args, message) => {
    const r = serve(...args)
    expect(r.code).toBe(2)
    expect(r.stderr).toBe(`${message}\n`)
    expect(r.stdout).toBe("")
  })
})
