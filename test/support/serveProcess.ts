// `chorus serve` as a child process, the way operators run it: its stdout (where every log line goes) collected,
// and its base URL read from the start-up line.
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as path from "node:path"
import { repoRoot } from "./fixtures.ts"

export interface ServeProcess {
  readonly child: ChildProcess
  readonly url: string
  /** Everything written to stdout so far. */
  readonly stdout: () => string
  readonly stderr: () => string
  /** SIGTERM, then resolves with the exit code. */
  readonly stop: () => Promise<number | null>
}

export const waitFor = async <A>(probe: () => A | undefined, what: string, ms = 30_000): Promise<A> => {
  const started = Date.now()
  for (;;) {
    const value = probe()
    if (value !== undefined) return value
    if (Date.now() - started > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** Starts `chorus serve ARGS` (add `--adapter bench` for no model time) and waits for its serving line. */
export const startServeProcess = async (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}): Promise<ServeProcess> => {
  const child = spawn(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "serve", "--port", "0", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...env }
  })
  let out = ""
  let err = ""
  child.stdout!.on("data", (d) => (out += d))
  child.stderr!.on("data", (d) => (err += d))
  const exited = new Promise<number | null>((resolve) => child.on("exit", resolve))
  try {
    const url = await waitFor(() => {
      if (child.exitCode !== null) throw new Error(`chorus serve exited with ${child.exitCode}: ${err}`)
      return /serving \S+ at (https?:\/\/127\.0\.0\.1:\d+)\//.exec(out)?.[1]
    }, "the serving line")
    return {
      child,
      url,
      stdout: () => out,
      stderr: () => err,
      stop: () => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
        return exited
      }
    }
  } catch (e) {
    child.kill("SIGKILL")
    throw e
  }
}

/** `chorus serve ARGS` expected to fail before it starts: its exit code and output. */
export const serveFailing = (args: ReadonlyArray<string>) => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "serve", "--port", "0", ...args], { encoding: "utf8", timeout: 30_000 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}
