// `chorus serve` as operators start it: settings from CHORUS_HOST / CHORUS_PORT / CHORUS_API_KEYS and
// --api-key-file (flags win over the environment), and every start-up failure as one line with a non-zero exit.
import { spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const main = path.join(repoRoot, "src/cli/main.ts")
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-serve-startup-"))
/** No CHORUS_* variable of the caller's leaks into a test; each test sets its own. */
const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CHORUS_")))

/** A `chorus serve` that must fail before serving: its exit code and output. */
const failingServe = (args: ReadonlyArray<string>, env: Record<string, string> = {}, wrap: ReadonlyArray<string> = []) => {
  const argv = [process.execPath, main, "serve", "--adapter", "bench", ...args]
  const r = spawnSync(wrap.length === 0 ? argv[0]! : wrap[0]!, [...wrap.slice(1), ...(wrap.length === 0 ? argv.slice(1) : argv)], {
    env: { ...cleanEnv, ...env },
    encoding: "utf8",
    timeout: 60_000
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** A `chorus serve` that starts: resolves with its base URL and a function that stops it (SIGTERM) and gives its exit code. */
const startServe = async (args: ReadonlyArray<string>, env: Record<string, string>) => {
  const child = spawn(process.execPath, [main, "serve", "--adapter", "bench", ...args], { env: { ...cleanEnv, ...env }, stdio: ["ignore", "pipe", "pipe"] })
  let out = ""
  let err = ""
  child.stdout.on("data", (d) => (out += d))
  child.stderr.on("data", (d) => (err += d))
  const exited = new Promise<number | null>((resolve) => child.on("exit", resolve))
  const started = Date.now()
  while (!/at (http:\/\/[^/]+)\//.test(out) || !/API key/.test(out)) {
    if (child.exitCode !== null || Date.now() - started > 60_000) throw new Error(`chorus serve did not start: ${out}${err}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  const url = out.match(/at (http:\/\/[^/]+)\//)![1]!
  const stop = async () => {
    child.kill("SIGTERM")
    return await exited
  }
  return { url, stop, stderr: () => err }
}

const models = (url: string, key?: string) =>
  fetch(`${url}/v1/models`, key === undefined ? {} : { headers: { authorization: `Bearer ${key}` } }).then((r) => r.status)

let busy: net.Server
let busyPort = 0

beforeAll(async () => {
  busy = net.createServer()
  await new Promise<void>((resolve) => busy.listen(0, "127.0.0.1", resolve))
  busyPort = (busy.address() as net.AddressInfo).port
})
afterAll(() => {
  busy.close()
  fs.rmSync(scratch, { recursive: true, force: true })
})

describe("chorus serve start-up failures: one line naming the cause", () => {
  it("a port in use", () => {
    const r = failingServe(["--port", String(busyPort)])
    expect(r.stderr).toBe(`chorus: port ${busyPort} is in use (127.0.0.1:${busyPort})\n`)
    expect(r.code).toBe(1)
  })

  it("an address this machine does not have", () => {
    const r = failingServe(["--host", "10.1.2.3", "--port", "0"])
    expect(r.stderr).toBe("chorus: cannot bind 10.1.2.3: address not available\n")
    expect(r.code).toBe(2)
  })

  it("a host name that does not resolve", () => {
    const r = failingServe(["--host", "no-such-host.invalid", "--port", "0"])
    expect(r.stderr).toBe("chorus: cannot resolve host 'no-such-host.invalid' to listen on\n")
    expect(r.code).toBe(2)
  })

  it("permission denied on a low port", () => {
    // Below this, binding needs CAP_NET_BIND_SERVICE; as root the test drops that capability for the child.
    const start = Number(fs.readFileSync("/proc/sys/net/ipv4/ip_unprivileged_port_start", "utf8"))
    expect(start).toBeGreaterThan(1)
    const port = start - 1
    const wrap = process.getuid?.() === 0 ? ["setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service"] : []
    const r = failingServe(["--port", String(port)], {}, wrap)
    expect(r.stderr).toBe(`chorus: permission denied to listen on 127.0.0.1:${port} (ports below 1024 need root or CAP_NET_BIND_SERVICE)\n`)
    expect(r.code).toBe(1)
  })

  it("a model that cannot load", () => {
    const r = spawnSync(process.execPath, [main, "serve", "--model", path.join(scratch, "missing"), "--port", "0"], { env: cleanEnv, encoding: "utf8", timeout: 60_000 })
    expect(r.stderr).toMatch(/^chorus: model folder not found: .*missing[^\n]*\n$/)
    expect(r.status).toBe(2)
  })
})

describe("chorus serve settings from the environment", () => {
  it("CHORUS_PORT and CHORUS_HOST are used when no flag is given", () => {
    const r = failingServe([], { CHORUS_HOST: "127.0.0.1", CHORUS_PORT: String(busyPort) })
    expect(r.stderr).toBe(`chorus: port ${busyPort} is in use (127.0.0.1:${busyPort})\n`)
    expect(failingServe(["--port", "0"], { CHORUS_HOST: "10.1.2.3" }).stderr).toBe("chorus: cannot bind 10.1.2.3: address not available\n")
  })

  it.each([
    [{ CHORUS_PORT: "eighty" }, "chorus: CHORUS_PORT must be an integer from 0 to 65535, got 'eighty'\n"],
    [{ CHORUS_PORT: "70000" }, "chorus: CHORUS_PORT must be an integer from 0 to 65535, got '70000'\n"],
    [{ CHORUS_HOST: "" }, "chorus: CHORUS_HOST is set but empty (unset it for the default 127.0.0.1)\n"],
    [{ CHORUS_API_KEYS: "" }, "chorus: CHORUS_API_KEYS is set but empty (unset it to run without API keys)\n"],
    [{ CHORUS_API_KEYS: "k1,,k2" }, "chorus: CHORUS_API_KEYS: entry 2 of 3 is empty (keys are comma-separated)\n"],
    [{ CHORUS_API_KEYS: "k1,two words" }, "chorus: CHORUS_API_KEYS: the key in entry 2 contains whitespace\n"]
  ])("bad environment %j: one line, exit code 2", (env, line) => {
    expect(failingServe(["--port", "0"], env)).toMatchObject({ code: 2, stderr: line })
  })

  it("bad --api-key-file: one line, exit code 2", () => {
    const missing = path.join(scratch, "no-keys-here")
    expect(failingServe(["--port", "0", "--api-key-file", missing])).toMatchObject({ code: 2, stderr: `chorus: --api-key-file: cannot read ${missing} (ENOENT)\n` })
    const empty = path.join(scratch, "empty-keys")
    fs.writeFileSync(empty, "# nothing yet\n\n")
    expect(failingServe(["--port", "0", "--api-key-file", empty])).toMatchObject({
      code: 2,
      stderr: `chorus: --api-key-file: ${empty} has no keys (one per line; blank and # lines are ignored)\n`
    })
  })

  it("CHORUS_API_KEYS protects the API", async () => {
    const server = await startServe([], { CHORUS_PORT: "0", CHORUS_API_KEYS: "env-one, env-two" })
    try {
      expect(await models(server.url)).toBe(401)
      expect(await models(server.url, "env-two")).toBe(200)
    } finally {
      expect(await server.stop()).toBe(0)
    }
  })

  it("--api-key-file and --api-key replace CHORUS_API_KEYS; --host/--port replace CHORUS_HOST/CHORUS_PORT", async () => {
    const file = path.join(scratch, "keys")
    fs.writeFileSync(file, "# operators' keys\nfile-one\n\n  file-two  \n")
    // The environment's port is busy and its host is not this machine's: starting at all shows the flags won.
    const server = await startServe(["--host", "127.0.0.1", "--port", "0", "--api-key-file", file, "--api-key", "flag-key"], {
      CHORUS_HOST: "10.1.2.3",
      CHORUS_PORT: String(busyPort),
      CHORUS_API_KEYS: "env-key"
    })
    try {
      expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
      expect(server.url).not.toContain(`:${busyPort}`)
      expect(await models(server.url, "env-key")).toBe(401)
      expect(await models(server.url, "file-one")).toBe(200)
      expect(await models(server.url, "file-two")).toBe(200)
      expect(await models(server.url, "flag-key")).toBe(200)
      expect(await models(server.url, "# operators' keys")).toBe(401)
    } finally {
      expect(await server.stop()).toBe(0)
    }
  })
})
