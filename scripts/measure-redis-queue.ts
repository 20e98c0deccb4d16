// Measures the Redis structures the shared queue could use (docs/workers.md, "The queue in Redis"), on a Redis
// given by URL (default redis://127.0.0.1:6379; start one with `redis-server --port 6379 --save '' --appendonly no`):
//   node scripts/measure-redis-queue.ts [redis://HOST:PORT]
// 1. Hand-out: a list per endpoint (RPUSH, then a Lua script that LPOPs and marks the job hash) against a stream
//    with a consumer group (XADD, XREADGROUP, XACK). 2. Fan-out of progress to the replica holding the client: one
//    stream per job read by one XREAD BLOCK loop over every watched stream, against pub/sub (a channel per job).
// 3. The memory a finished 30-token job holds until its TTL.
import { createClient } from "redis"

const url = process.argv[2] ?? "redis://127.0.0.1:6379"

const connect = async () => {
  const c = createClient({ url, RESP: 2 })
  c.on("error", () => {})
  await c.connect()
  return c
}
const c = await connect()
await c.sendCommand(["FLUSHDB"])
const pct = (xs: Array<number>, p: number) => xs.sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]!
const N = 5000
const CONC = 32

const take = `local id = redis.call('LPOP', KEYS[1]) if not id then return false end
redis.call('HSET', 'job:' .. id, 'st', 'running', 'w', ARGV[1]) return id`
const sha = String(await c.sendCommand(["SCRIPT", "LOAD", take]))

/** Runs `op(i)` for i < n with `conc` in flight; ops/s. */
const rate = async (n: number, conc: number, op: (i: number) => Promise<unknown>) => {
  let next = 0
  const t = performance.now()
  await Promise.all(Array.from({ length: conc }, async () => {
    while (next < n) await op(next++)
  }))
  return n / ((performance.now() - t) / 1000)
}

// 1. Hand-out.
const listSubmit = await rate(N, CONC, (i) => Promise.all([c.sendCommand(["HSET", `job:${i}`, "st", "queued", "req", "x".repeat(300)]), c.sendCommand(["RPUSH", "pending", String(i)])]))
const listTake = await rate(N, CONC, () => c.sendCommand(["EVALSHA", sha, "1", "pending", "w1"]))
await c.sendCommand(["XGROUP", "CREATE", "jobs", "workers", "$", "MKSTREAM"])
const streamSubmit = await rate(N, CONC, (i) => c.sendCommand(["XADD", "jobs", "*", "id", String(i), "req", "x".repeat(300)]))
const streamTake = await rate(N, CONC, async () => {
  const r = (await c.sendCommand(["XREADGROUP", "GROUP", "workers", "w1", "COUNT", "1", "STREAMS", "jobs", ">"])) as Array<[string, Array<[string, Array<string>]>]> | null
  const id = r?.[0]?.[1]?.[0]?.[0]
  if (id !== undefined) await c.sendCommand(["XACK", "jobs", "workers", id])
})
console.log(`hand-out (${N} jobs, ${CONC} in flight): list+Lua submit ${listSubmit.toFixed(0)}/s take ${listTake.toFixed(0)}/s; stream+group submit ${streamSubmit.toFixed(0)}/s take ${streamTake.toFixed(0)}/s`)

// 2. Fan-out: JOBS jobs, EVENTS events each, published from one connection, received on another.
const JOBS = 200
const EVENTS = 50
const fanStream = async () => {
  const reader = await connect()
  const lat: Array<number> = []
  const last = new Map<string, string>(Array.from({ length: JOBS }, (_, j) => [`ev:${j}`, "0-0"]))
  let got = 0
  const loop = (async () => {
    while (got < JOBS * EVENTS) {
      const keys = [...last.keys()]
      const r = (await reader.sendCommand(["XREAD", "COUNT", "512", "BLOCK", "1000", "STREAMS", ...keys, ...keys.map((k) => last.get(k)!)])) as Array<[string, Array<[string, Array<string>]>]> | null
      const now = performance.now()
      for (const [k, entries] of r ?? []) {
        for (const [id, f] of entries) {
          last.set(k, id)
          lat.push(now - Number(f[1]))
          got++
        }
      }
    }
  })()
  const t = performance.now()
  for (let e = 0; e < EVENTS; e++) {
    await Promise.all(Array.from({ length: JOBS }, (_, j) => c.sendCommand(["XADD", `ev:${j}`, "*", "t", String(performance.now())])))
    await new Promise((r) => setTimeout(r, 2))
  }
  await loop
  const s = (performance.now() - t) / 1000
  await reader.close()
  return `${(JOBS * EVENTS / s).toFixed(0)} events/s, latency p50 ${pct(lat, 0.5).toFixed(2)} ms p99 ${pct(lat, 0.99).toFixed(2)} ms`
}
const fanPubSub = async () => {
  const sub = await connect()
  const lat: Array<number> = []
  let done: () => void = () => {}
  const finished = new Promise<void>((r) => (done = r))
  for (let j = 0; j < JOBS; j++) {
    await sub.subscribe(`ch:${j}`, (m) => {
      lat.push(performance.now() - Number(m))
      if (lat.length === JOBS * EVENTS) done()
    })
  }
  const t = performance.now()
  for (let e = 0; e < EVENTS; e++) {
    await Promise.all(Array.from({ length: JOBS }, (_, j) => c.sendCommand(["PUBLISH", `ch:${j}`, String(performance.now())])))
    await new Promise((r) => setTimeout(r, 2))
  }
  await finished
  const s = (performance.now() - t) / 1000
  await sub.close()
  return `${(JOBS * EVENTS / s).toFixed(0)} events/s, latency p50 ${pct(lat, 0.5).toFixed(2)} ms p99 ${pct(lat, 0.99).toFixed(2)} ms`
}
console.log(`fan-out (${JOBS} jobs x ${EVENTS} events): stream per job + one XREAD BLOCK loop: ${await fanStream()}`)
console.log(`fan-out (${JOBS} jobs x ${EVENTS} events): pub/sub channel per job: ${await fanPubSub()}`)

// 3. A finished 30-token job: its hash and its event stream.
await c.sendCommand(["HSET", "done:1", "st", "done", "req", JSON.stringify({ input: { type: "chat", messages: [{ role: "user", content: "Name three colours." }] }, maxTokens: 30, sampling: { seed: 1 } }), "et", "word ".repeat(30), "fin", "{\"fr\":\"length\",\"sr\":\"max_tokens\",\"pt\":12,\"ct\":30}", "sub", "1796117557412", "adm", "1796117557414", "end", "1796117557478"])
for (let i = 0; i < 32; i++) await c.sendCommand(["XADD", "doneev:1", "*", "e", JSON.stringify({ t: "k", i: 128000 + i, x: " word" })])
console.log(`a finished 30-token job: hash ${await c.sendCommand(["MEMORY", "USAGE", "done:1"])} B + event stream ${await c.sendCommand(["MEMORY", "USAGE", "doneev:1"])} B`)
await c.sendCommand(["FLUSHDB"])
await c.close()
