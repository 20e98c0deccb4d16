// `chorus chat` as a user drives it: lines on stdin, streamed answers, /reset, Ctrl-C (SIGINT) stopping an answer
// without ending the program, /exit.
import { spawn } from "node:child_process"
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
})
