// A throwaway `redis-server` for tests: a free port, a temp dir, no persistence; stopped with SIGKILL. Absent
// redis-server is an error, not a skip (.ci/run installs Debian's redis-server).
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"

export interface RedisServer {
  readonly url: string
  readonly port: number
  readonly child: ChildProcess
  /** Runs one command through redis-cli and returns its raw output (trimmed). */
  readonly cli: (...args: ReadonlyArray<string>) => string
  readonly stop: () => void
}

export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = net.createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => resolve(port))
    })
  })

const ping = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = net.connect(port, "127.0.0.1")
    socket.once("error", () => resolve(false))
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.once("data", (d) => {
      socket.destroy()
      resolve(String(d).startsWith("+PONG"))
    })
  })

/** Starts redis-server on `port` (default: a free one). */
export const startRedis = async (port?: number): Promise<RedisServer> => {
  if (spawnSync("redis-server", ["--version"]).error !== undefined) {
    throw new Error("redis-server is not installed: apt-get install -y redis-server (.ci/run does it)")
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-redis-"))
  port ??= await freePort()
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], { stdio: "ignore" })
  const started = Date.now()
  while (!(await ping(port))) {
    if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`)
    if (Date.now() - started > 10_000) throw new Error("redis-server did not answer PING within 10 s")
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    child,
    cli: (...args) => spawnSync("redis-cli", ["-p", String(port), ...args], { encoding: "utf8" }).stdout.trim(),
    stop: () => {
      child.kill("SIGKILL")
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}
