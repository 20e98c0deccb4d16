// `chorus --version` and help: every command and nested subcommand prints its own usage on stdout, exit code 0;
// a help request for something that does not exist is one line on stderr, exit code 2.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const chorus = (...args: Array<string>) => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), ...args], { encoding: "utf8", timeout: 60_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

const version = JSON.parse(fs.readFileSync(path.join(repoRoot, "package.json"), "utf8")).version as string

describe("chorus --version", () => {
  it.each([["--version"], ["-v"]])("%s prints the package version", (flag) => {
    expect(chorus(flag)).toEqual({ code: 0, stdout: `chorus ${version}\n`, stderr: "" })
  })
})

describe("chorus help", () => {
  it("top-level help lists the commands and exits 0", () => {
    for (const args of [["help"], ["--help"], ["-h"]]) {
      const r = chorus(...args)
      expect(r.code).toBe(0)
      expect(r.stderr).toBe("")
      for (const name of ["serve", "generate", "chat", "convert", "bench"]) expect(r.stdout).toMatch(new RegExp(`^  ${name} `, "m"))
    }
  })

  it.each(["serve", "generate", "chat", "convert", "bench"])("%s: 'help NAME', 'NAME --help' and 'NAME -h' print the same usage", (name) => {
    const viaHelp = chorus("help", name)
    expect(viaHelp.code).toBe(0)
    expect(viaHelp.stdout).toMatch(new RegExp(`^usage: chorus ${name} `))
    expect(chorus(name, "--help")).toEqual(viaHelp)
    expect(chorus(name, "-h")).toEqual(viaHelp)
  })

  it("a nested command prints its own flags, not its parent's", () => {
    const compare = chorus("bench", "compare", "--help")
    expect(compare.code).toBe(0)
    expect(compare.stdout).toMatch(/^usage: chorus bench compare A\.json B\.json/)
    expect(compare.stdout).toMatch(/--chart/)
    expect(compare.stdout).not.toMatch(/--url|--concurrency/)
    expect(chorus("help", "bench", "compare")).toEqual(compare)
    // The parent names its subcommand.
    expect(chorus("help", "bench").stdout).toMatch(/^  compare +compare result files/m)
  })

  it("help after other flags still shows the command's usage", () => {
    const r = chorus("serve", "--port", "1", "--help")
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/^usage: chorus serve /)
  })

  it("serve's help documents the environment variables and the key file", () => {
    const { stdout } = chorus("help", "serve")
    for (const text of ["CHORUS_HOST", "CHORUS_PORT", "CHORUS_API_KEYS", "--api-key-file"]) expect(stdout).toContain(text)
  })

  it.each([
    [["help", "nope"], /^chorus: unknown command 'nope' \(commands: serve, generate, chat, convert, worker, bench\)\n$/],
    [["help", "bench", "nope"], /^chorus: 'chorus bench' has no subcommand 'nope' \(subcommands: compare\)\n$/],
    [["help", "serve", "extra"], /^chorus: 'chorus serve' has no subcommand 'extra' \(it has none\)\n$/]
  ])("%j is one line on stderr and exit code 2", (args, line) => {
    const r = chorus(...args)
    expect(r.code).toBe(2)
    expect(r.stdout).toBe("")
    expect(r.stderr).toMatch(line)
  })
})
