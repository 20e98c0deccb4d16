// HTTPS without a proxy: `chorus serve --tls-cert --tls-key` with a self-signed certificate made here by openssl.
// The official `openai` client, in a child process that trusts that certificate (NODE_EXTRA_CA_CERTS), completes a
// chat over https; plain http to the same port and https without trusting the certificate both fail.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"
import { type ServeProcess, serveFailing, startServeProcess } from "../support/serveProcess.ts"

let dir: string
let cert: string
let key: string

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-tls-"))
  cert = path.join(dir, "cert.pem")
  key = path.join(dir, "key.pem")
  const made = spawnSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key, "-out", cert
  ], { encoding: "utf8" })
  expect(made.status, made.stderr).toBe(0)
})
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** Runs the openai client against `baseURL` in a child node that trusts `ca`; prints the chat result as JSON. */
const openAiChat = (baseURL: string, ca: string) => {
  const script = `
    import OpenAI from "openai"
    const client = new OpenAI({ baseURL: ${JSON.stringify(baseURL)}, apiKey: "sk-tls", maxRetries: 0 })
    const stream = await client.chat.completions.create({ messages: [{ role: "user", content: "Hello over TLS" }], max_tokens: 6, stream: true, stream_options: { include_usage: true } })
    let text = "", usage
    for await (const chunk of stream) { text += chunk.choices[0]?.delta?.content ?? ""; if (chunk.usage) usage = chunk.usage }
    const models = await client.models.list()
    console.log(JSON.stringify({ text, usage, model: models.data[0].id }))
  `
  return spawnSync(process.execPath, ["--input-type=module", "-e", script], {
    cwd: repoRoot,
    encoding: "utf8",
    timeout: 60_000,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: ca }
  })
}

describe("HTTPS", () => {
  it("serves the OpenAI API over https with the given certificate; plain http to the port fails", async () => {
    let server: ServeProcess | undefined
    try {
      server = await startServeProcess(["--adapter", "bench", "--api-key", "sk-tls", "--tls-cert", cert, "--tls-key", key])
      expect(server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/)
      const chat = openAiChat(`${server.url}/v1`, cert)
      expect(chat.status, chat.stderr).toBe(0)
      const result = JSON.parse(chat.stdout) as { text: string; usage: { completion_tokens: number }; model: string }
      expect(result.model).toBe("chorus-bench")
      expect(result.usage.completion_tokens).toBe(6)
      expect(result.text.length).toBeGreaterThan(0)

      const port = new URL(server.url).port
      await expect(fetch(`http://127.0.0.1:${port}/health`)).rejects.toThrow()
      // This process does not trust the self-signed certificate: the TLS handshake itself must fail.
      await expect(fetch(`${server.url}/health`)).rejects.toThrow()
      // The same client without the certificate trusted fails too (so the success above really went through TLS).
      const untrusted = openAiChat(`${server.url}/v1`, path.join(dir, "missing.pem"))
      expect(untrusted.status).not.toBe(0)
      expect(untrusted.stderr).toMatch(/certificate|Connection error/i)
    } finally {
      expect(await server?.stop()).toBe(0)
    }
  }, 90_000)

  it("rejects half a TLS configuration, an unreadable file and a file that is no PEM with one line and exit 2", () => {
    const onlyCert = serveFailing(["--adapter", "bench", "--tls-cert", cert])
    expect(onlyCert.status).toBe(2)
    expect(onlyCert.stderr).toBe("chorus: --tls-cert and --tls-key go together: give both files or neither\n")

    const missing = serveFailing(["--adapter", "bench", "--tls-cert", path.join(dir, "nope.pem"), "--tls-key", key])
    expect(missing.status).toBe(2)
    expect(missing.stderr).toMatch(/^chorus: cannot read --tls-cert \S+nope\.pem: ENOENT\n$/)

    const notPem = path.join(dir, "not.pem")
    fs.writeFileSync(notPem, "hello\n")
    const garbage = serveFailing(["--adapter", "bench", "--tls-cert", notPem, "--tls-key", key])
    expect(garbage.status).toBe(2)
    expect(garbage.stderr).toMatch(/^chorus: --tls-cert \S+ and --tls-key \S+ are not a usable PEM certificate and key: .+\n$/)
    expect(garbage.stdout).toBe("")
  }, 60_000)
})
