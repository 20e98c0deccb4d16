// The benchmark scripts under tools/ answer a wrong flag as the chorus commands do: one line, exit 2, no stack trace;
// and --help prints their flags.
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const run = (script: string, ...args: ReadonlyArray<string>) =>
  spawnSync(process.execPath, [path.join(repoRoot, "tools", script), ...args], { encoding: "utf8", timeout: 60_000 })

describe("tools' flags", () => {
  it.each(["bench-structured.ts", "bench-model.ts", "bench-soak.ts", "bench-workers.ts", "bench-pipeline.ts"])("%s: a wrong flag is one line and exit 2; --help lists the flags", (script) => {
    const bad = run(script, "--no-such-flag")
    expect(bad.status).toBe(2)
    expect(bad.stderr).toBe(`${script}: unknown option --no-such-flag for 'node tools/${script}' (see node tools/${script} --help)\n`)
    const help = run(script, "--help")
    expect(help.status).toBe(0)
    expect(help.stdout).toMatch(new RegExp(`^usage: node tools/${script.replace(".", "\\.")} \\[options\\]\\n`))
    expect(help.stdout).toContain("--help")
  })
})
