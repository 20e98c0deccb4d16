// AIME session keys and job ids against a real in-process server (bench adapter): a session expires after its TTL
// unless used (sliding), the cap is per API key (one tenant's logins never evict another's), and job ids are opaque.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../../src/adapters/bench/BenchAdapter.ts"
import { makeSessionTable } from "../../../src/http/aime/Sessions.ts"
import { startServer, type TestServer } from "../../support/server.ts"

const EP = "llama3_chat"
const NO_CREDENTIALS = "API Key missing and client session authentication key not registered in API Server"
const TTL_MS = 400

type Json = Record<string, any>

const call = async (url: string, body?: unknown): Promise<{ status: number; body: Json }> => {
  const r = await fetch(url, {
    method: "POST",
    ...(body === undefined ? {} : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
  })
  return { status: r.status, body: (await r.json()) as Json }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe("AIME sessions and job ids (server with API keys)", () => {
  let server: TestServer
  let base: string
  beforeAll(async () => {
    server = await startServer({ adapter: BenchAdapter, adapterOptions: {}, apiKeys: ["k1", "k2"], sessionTtlMs: TTL_MS, maxSessionsPerKey: 3 })
    base = server.url
  })
  afterAll(async () => {
    await server?.close()
  })

  const login = async (key: string): Promise<string> => {
    const r = await call(`${base}/${EP}/login?key=${key}`)
    expect(r.body.success).toBe(true)
    return r.body.client_session_auth_key
  }
  /** A progress poll for a job that does not exist: 402 when the session is valid, 401 when it is not. */
  const probe = (session: string) => call(`${base}/${EP}/progress`, { client_session_auth_key: session, job_id: "JIDnone" })

  it("a session key stops working after the TTL without use", async () => {
    const session = await login("k1")
    expect((await probe(session)).status).toBe(402)
    await sleep(TTL_MS + 150)
    const expired = await probe(session)
    expect(expired.status).toBe(401)
    expect(expired.body).toEqual({ success: false, error: [NO_CREDENTIALS], ep_version: 3 })
  })

  it("every use renews the TTL (sliding)", async () => {
    const session = await login("k1")
    // Used every TTL/2 for 2.5 TTLs: each use lands inside the renewed window.
    for (let i = 0; i < 5; i++) {
      await sleep(TTL_MS / 2)
      expect((await probe(session)).status).toBe(402)
    }
  })

  it("the cap is per API key: k1's logins evict only k1's oldest sessions", async () => {
    const k2 = await login("k2")
    const k1 = [await login("k1"), await login("k1"), await login("k1"), await login("k1"), await login("k1")]
    expect(new Set(k1).size).toBe(5)
    const statuses = await Promise.all(k1.map(async (s) => (await probe(s)).status))
    expect(statuses).toEqual([401, 401, 402, 402, 402])
    expect((await probe(k2)).status).toBe(402)
  })

  it("job ids are JID + 128 random bits in base64url, unique, and carry no counter", async () => {
    const ids: Array<string> = []
    for (let i = 0; i < 40; i++) {
      const r = await call(`${base}/${EP}`, { key: "k1", prompt_input: "Hi", max_gen_tokens: 1, wait_for_result: false })
      expect(r.status).toBe(200)
      ids.push(r.body.job_id)
    }
    for (const id of ids) expect(id).toMatch(/^JID[A-Za-z0-9_-]{22}$/)
    expect(new Set(ids).size).toBe(ids.length)
    // Two consecutive ids share no more than chance would give: no counter or timestamp inside. Compared over the 21
    // characters that carry 6 random bits each (not the "JID" prefix, nor the last one, which holds 2 bits): chance
    // gives 21/64 = 0.33 matching characters on average; a counter or a timestamp would share several.
    const common = (a: string, b: string) => [...a.slice(3, 24)].filter((c, i) => b.slice(3, 24)[i] === c).length
    const meanCommon = ids.slice(1).reduce((n, id, i) => n + common(id, ids[i]!), 0) / (ids.length - 1)
    expect(meanCommon).toBeLessThan(1.5)
    // The id works for progress polls.
    const p = await call(`${base}/${EP}/progress`, { key: "k1", job_id: ids[0] })
    expect(p.status).toBe(200)
    expect(p.body.job_id).toBe(ids[0])
  })
})

describe("SessionTable", () => {
  it("expires, renews, caps per key and sweeps", () => {
    const t = makeSessionTable({ ttlMs: 100, maxPerKey: 2 })
    const a = t.issue("a", 0)
    const b1 = t.issue("b", 0)
    const open = t.issue(undefined, 0)
    expect(t.resolve(a, 50)).toEqual({ found: true, apiKey: "a" })
    expect(t.resolve(open, 50)).toEqual({ found: true, apiKey: undefined })
    // b1 was last used at 0: gone at 100; a was renewed at 50: alive until 150.
    expect(t.resolve(b1, 100)).toEqual({ found: false })
    expect(t.resolve(a, 140)).toEqual({ found: true, apiKey: "a" })
    // Renewal also moves a to the back of its key's eviction order.
    const a2 = t.issue("a", 141)
    t.resolve(a, 142)
    t.issue("a", 143)
    expect(t.resolve(a2, 144)).toEqual({ found: false })
    expect(t.resolve(a, 144)).toEqual({ found: true, apiKey: "a" })
    expect(t.sizeOf("a")).toBe(2)
    t.sweep(1000)
    expect(t.size()).toBe(0)
    expect(t.sizeOf("a")).toBe(0)
  })
})
