// `chorus chat` as a user drives it: lines on stdin, streamed answers, /reset, Ctrl-C (SIGINT) stopping an answer
// without ending the program, /exit; and a pipe of lines answered in order until its end.
import { spawn, spawnSync } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const waitFor = (read: () => string, pattern: RegExp, ms = 60_000) =>
  new Promise<void>((resolve, reject) => {
    const started = Date.now()
    const tick = setInterval(() => {
      if (pattern.test(read())) {
        clearInterval(tick)
        resolve()
      } else if (Date.now() - started > ms) {
        clearInterval(tick)
        reject(new Error(`timed out waiting for ${pattern}; output so far:\n${read()}`))
      }
    }, 20)
  })

describe("chorus chat", () => {
  it("streams answers, keeps going after Ctrl-C, resets and exits", async () => {
    const child = spawn(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "chat", "--system", "Be brief.", "--max-tokens", "4000", "--seed", "1"], {
      stdio: ["pipe", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d) => (stdout += d))
    child.stderr.on("data", (d) => (stderr += d))
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))

    await waitFor(() => stdout, /chorus chat: chorus-default-llama3/)
    child.stdin.write("Tell me a long story.\n")
    // Wait until the answer is streaming (some text after the prompt line), then interrupt it.
    const mark = stdout.length
    await waitFor(() => stdout.slice(mark), /\S{20,}|\S+\s+\S+\s+\S+\s+\S+/)
    child.kill("SIGINT")
    await waitFor(() => stdout, /\[stopped\]/)
    child.stdin.write("/reset\n")
    await waitFor(() => stdout, /\(chat cleared\)/)
    child.stdin.write("/exit\n")
    expect(await exited).toBe(0)
    expect(stderr).toBe("")
  })

  it("answers every line of piped input in order and exits 0 at its end", () => {
    // The same first question after /reset, with the same seed, must get the same answer: that shows the lines were
    // taken in order and the reset came between them.
    const r = spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "chat", "--max-tokens", "4", "--seed", "7"], {
      input: "Hello there\n/reset\nHello there\nAnd a second question\n",
      encoding: "utf8",
      timeout: 120_000
    })
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
    const [head, tail] = r.stdout.split("\n(chat cleared)\n") as [string, string]
    expect(tail).toBeDefined()
    const first = head.replace(/^chorus chat: chorus-default-llama3[^\n]*\n/, "")
    expect(first).not.toBe(head)
    expect(first.trim()).not.toBe("")
    expect(tail.startsWith(`${first}\n`)).toBe(true)
    // Then the answer to the last line, and nothing else: no prompts, no error.
    const last = tail.slice(first.length + 1)
    expect(last.endsWith("\n")).toBe(true)
    expect(last.trim()).not.toBe("")
    expect(r.stdout).not.toContain("> ")
  })
})
