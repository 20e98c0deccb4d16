// The API tier on Redis, with real processes started here: a redis-server (test/support/redisServer.ts; missing
// redis-server fails the suite), two `chorus serve --no-local-model --queue redis://...` replicas (A, B) and three
// `chorus worker --adapter bench` processes (w1 and w2 poll B, w3 polls A).
// (a) submit at one replica, poll, cancel and stream at the other; (b) SIGKILL of one replica and one worker in the
// middle of 200 requests; (c) bad input on the worker routes; the --queue flag.
import { type ChildProcess, spawn } from "node:child_process"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../../support/fixtures.ts"
import { type RedisServer, startRedis } from "../../support/redisServer.ts"
import { type ServeProcess, startServeProcess } from "../../support/serveProcess.ts"

type Json = Record<string, any>
const KEY = "wk-redis-test"
const EP = "llama3_chat"
const P = `chorus:${EP}:`
const main = path.join(repoRoot, "src/cli/main.ts")
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const messages = [{ role: "user", content: "Name three colours." }]

const call = async (url: string, body?: unknown, raw?: string): Promise<{ status: number; body: any }> => {
  const r = await fetch(url, {
    method: body === undefined && raw === undefined ? "GET" : "POST",
    headers: { "content-type": "application/json" },
    ...(raw !== undefined ? { body: raw } : body === undefined ? {} : { body: JSON.stringify(body) })
  })
  const text = await r.text()
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    parsed = text
  }
  return { status: r.status, body: parsed }
}

const progressOf = (base: string, jobId: string) => call(`${base}/${EP}/progress?job_id=${encodeURIComponent(jobId)}`)

/**
 * Polls until done; returns the result and how many polls carried one: exactly one, then a poll at the replica
 * that carried it has none. A poll cut by its replica's death moves to the next replica, as behind a load
 * balancer; that replica hands the result out again if the dead one had handed it out just before dying.
 */
const pollResult = async (bases: ReadonlyArray<string>, jobId: string, intervalMs = 50, ms = 40_000) => {
  const started = Date.now()
  let results: Array<Json> = []
  let i = 0
  let from = 0
  for (;;) {
    let p: { status: number; body: any }
    try {
      p = await progressOf(bases[i]!, jobId)
    } catch {
      if (i === bases.length - 1) throw new Error(`no replica left to poll ${jobId}`)
      i++
      continue
    }
    if (p.body.job_result !== undefined) {
      results = [...results, p.body.job_result]
      from = i
    }
    if (p.body.job_state === "done") break
    if (p.status !== 200) throw new Error(`poll: ${p.status} ${JSON.stringify(p.body)}`)
    if (Date.now() - started > ms) throw new Error(`job ${jobId} did not finish: ${JSON.stringify(p.body)}`)
    await sleep(intervalMs)
  }
  let after: string | undefined
  try {
    const again = await progressOf(bases[from]!, jobId)
    if (again.body.job_result !== undefined) results = [...results, again.body.job_result]
    after = again.body.job_state
  } catch {
    // That replica died since.
  }
  return { result: results[0] as Json | undefined, handedOut: results.length, after }
}

/** An OpenAI streamed chat: its text, finish reason, usage and whether [DONE] came (a cut connection throws). */
const stream = async (base: string, maxTokens: number) => {
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages, max_tokens: maxTokens, stream: true, stream_options: { include_usage: true } })
  })
  const body = await r.text()
  let text = ""
  const finishes: Array<string> = []
  let usage: Json | undefined
  let done = 0
  let errors = 0
  for (const line of body.split("\n")) {
    if (!line.startsWith("data: ")) continue
    const data = line.slice(6)
    if (data === "[DONE]") {
      done++
      continue
    }
    const chunk = JSON.parse(data) as Json
    if (chunk.error !== undefined) errors++
    const choice = chunk.choices?.[0]
    if (choice?.delta?.content !== undefined) text += choice.delta.content
    if (typeof choice?.finish_reason === "string") finishes.push(choice.finish_reason)
    if (chunk.usage != null) usage = chunk.usage
  }
  return { status: r.status, text, finishes, usage, done, errors }
}

const details = async (base: string) => (await call(`${base}/api/endpoints/${EP}`)).body as Json

interface Worker {
  readonly name: string
  readonly child: ChildProcess
  readonly log: () => string
}

const startWorker = (api: string, name: string, extra: ReadonlyArray<string> = ["--max-batch", "8"]): Worker => {
  const child = spawn(process.execPath, [main, "worker", "--api-server", api, "--worker-key", KEY, "--adapter", "bench", "--bench-step-delay", "10", "--name", name, ...extra], {
    stdio: ["ignore", "pipe", "pipe"]
  })
  let out = ""
  child.stdout!.on("data", (d) => (out += d))
  child.stderr!.on("data", (d) => (out += d))
  return { name, child, log: () => out }
}

/** `chorus serve ARGS` expected to fail before it starts: its exit code and stderr. */
const failing = (args: ReadonlyArray<string>) =>
  new Promise<{ status: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [main, "serve", "--port", "0", ...args], { stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    child.stderr!.on("data", (d) => (stderr += d))
    child.on("exit", (status) => resolve({ status, stderr }))
  })

const replicaArgs = (url: string, extra: ReadonlyArray<string> = []) => ["--no-local-model", "--worker-key", KEY, "--queue", url, "--worker-timeout", "2", ...extra]

describe("chorus serve --queue redis://: two replicas, three workers", () => {
  let redis: RedisServer
  let A: ServeProcess
  let B: ServeProcess
  const workers: Array<Worker> = []

  beforeAll(async () => {
    redis = await startRedis()
    ;[A, B] = await Promise.all([startServeProcess(replicaArgs(redis.url)), startServeProcess(replicaArgs(redis.url))])
    workers.push(startWorker(B.url, "w1"), startWorker(B.url, "w2"), startWorker(A.url, "w3"))
    const started = Date.now()
    for (;;) {
      // Both replicas see the same registry.
      const [a, b] = await Promise.all([details(A.url), details(B.url)])
      if (a.num_active_workers === 3 && b.num_active_workers === 3) break
      if (Date.now() - started > 40_000) throw new Error(`the workers did not connect: ${workers.map((w) => w.log()).join("\n")}`)
      await sleep(100)
    }
  }, 60_000)

  afterAll(async () => {
    for (const w of workers) w.child.kill("SIGKILL")
    await Promise.all([A?.stop(), B?.stop()])
    redis?.stop()
  })

  it("(a) submitted at A: polled, handed out once, canceled and streamed across replicas", async () => {
    // AIME: submitted at A, polled at B; the result is handed out once, whichever replica the polls reach.
    const sub = await call(`${A.url}/${EP}`, { chat_context: JSON.stringify(messages), max_gen_tokens: 24, wait_for_result: false })
    expect(sub.status).toBe(200)
    const polled = await pollResult([B.url], sub.body.job_id)
    expect(polled.handedOut).toBe(1)
    expect(polled.after).toBe("done")
    expect(polled.result!.num_generated_tokens).toBe(24)
    expect(["w1", "w2", "w3"]).toContain(polled.result!.auth)
    // Waiting for the result at B (wait_for_result) gives the same text for the same prompt.
    const waited = await call(`${B.url}/${EP}`, { chat_context: JSON.stringify(messages), max_gen_tokens: 24 })
    expect(waited.body.text).toBe(polled.result!.text)

    // Canceled at B while it runs: the job ends canceled everywhere and leaves its worker.
    const long = await call(`${A.url}/${EP}`, { chat_context: JSON.stringify(messages), max_gen_tokens: 3000, wait_for_result: false })
    const id = long.body.job_id as string
    for (let i = 0; ; i++) {
      const p = await progressOf(B.url, id)
      if (p.body.job_state === "processing" && p.body.progress.progress > 0) break
      if (i > 200) throw new Error(`the job did not start: ${JSON.stringify(p.body)}`)
      await sleep(25)
    }
    const canceled = await call(`${B.url}/${EP}/cancel`, { job_id: id })
    expect(canceled.body.job_state).toBe("canceled")
    expect((await progressOf(A.url, id)).body.job_state).toBe("canceled")
    for (let i = 0; ; i++) {
      const d = await details(A.url)
      if (d.workers.every((w: Json) => w.running_jobs === 0)) break
      if (i > 100) throw new Error(`the canceled job stayed on its worker: ${JSON.stringify(d.workers)}`)
      await sleep(50)
    }

    // OpenAI streams at A, whichever replica their workers report to: complete, the same text, counted once.
    const streams = await Promise.all([0, 1, 2, 3, 4, 5].map(() => stream(A.url, 16)))
    for (const s of streams) {
      expect(s.status).toBe(200)
      expect(s.finishes).toEqual(["length"])
      expect(s.done).toBe(1)
      expect(s.usage?.completion_tokens).toBe(16)
      expect(s.text).toBe(streams[0]!.text)
    }
    expect(streams[0]!.text.length).toBeGreaterThan(0)

    // An OpenAI client at B that goes away: its job is canceled in Redis and its worker (polling A or B) stops it.
    const controller = new AbortController()
    const r = await fetch(`${B.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages, max_tokens: 3000, stream: true }),
      signal: controller.signal
    })
    const reader = r.body!.getReader()
    await reader.read()
    await reader.read()
    controller.abort()
    for (let i = 0; ; i++) {
      const d = await details(B.url)
      if (d.workers.every((w: Json) => w.running_jobs === 0)) break
      if (i > 100) throw new Error(`the abandoned stream's job stayed on its worker: ${JSON.stringify(d.workers)}`)
      await sleep(50)
    }
    expect(redis.cli("ZCARD", `${P}active`)).toBe("0")
  }, 30_000)

  it("(b) SIGKILL of replica A and worker w1 in the middle of 200 requests: one end each, none lost, the queue drains", async () => {
    const TOKENS = 30
    const refOpenAi = (await stream(B.url, TOKENS)).text
    const refAime = (await call(`${B.url}/${EP}`, { chat_context: JSON.stringify(messages), max_gen_tokens: TOKENS })).body.text as string
    type End = "answer" | "connection error"
    const openai = async (base: string, streamed: boolean): Promise<End> => {
      try {
        if (streamed) {
          const s = await stream(base, TOKENS)
          expect(s.errors).toBe(0)
          expect(s.finishes).toEqual(["length"])
          expect(s.done).toBe(1)
          expect(s.usage?.completion_tokens).toBe(TOKENS)
          expect(s.text).toBe(refOpenAi)
        } else {
          const r = await call(`${base}/v1/chat/completions`, { messages, max_tokens: TOKENS })
          expect(r.status).toBe(200)
          expect(r.body.choices[0].message.content).toBe(refOpenAi)
          expect(r.body.usage.completion_tokens).toBe(TOKENS)
        }
        return "answer"
      } catch (e) {
        // Only A's clients may see their connection cut.
        if (base === A.url && e instanceof TypeError) return "connection error"
        throw e
      }
    }
    const aime = async (base: string): Promise<End> => {
      let id: string
      try {
        id = (await call(`${base}/${EP}`, { chat_context: JSON.stringify(messages), max_gen_tokens: TOKENS, wait_for_result: false })).body.job_id
      } catch (e) {
        if (base === A.url && e instanceof TypeError) return "connection error"
        throw e
      }
      // A job submitted at A stays answerable at B once A is gone.
      const polled = await pollResult(base === A.url ? [A.url, B.url] : [B.url], id, 200)
      expect(polled.handedOut).toBe(1)
      expect(polled.result!.text).toBe(refAime)
      expect(polled.result!.num_generated_tokens).toBe(TOKENS)
      return "answer"
    }
    const kinds: ReadonlyArray<readonly [string, () => Promise<End>]> = [
      ["OpenAI stream at A", () => openai(A.url, true)],
      ["OpenAI stream at B", () => openai(B.url, true)],
      ["OpenAI at B", () => openai(B.url, false)],
      ["AIME at A", () => aime(A.url)],
      ["AIME at B", () => aime(B.url)]
    ]
    const started = Date.now()
    const all = Promise.allSettled(Array.from({ length: 200 }, (_, i) => {
      const [label, run] = kinds[i % kinds.length]!
      return run().catch((e: unknown) => Promise.reject(new Error(`${label} #${i}: ${String(e)}`)))
    }))
    await sleep(700)
    A.child.kill("SIGKILL")
    workers[0]!.child.kill("SIGKILL")
    const ends = await all
    const failed = ends.filter((e) => e.status === "rejected")
    expect(failed.map((e) => String((e as PromiseRejectedResult).reason)).slice(0, 3)).toEqual([])
    const counts = { answer: 0, "connection error": 0 }
    for (const e of ends) if (e.status === "fulfilled") counts[e.value]++
    expect(counts.answer + counts["connection error"]).toBe(200)
    // B's 120 requests were all answered (any failure there threw above); the kill came in the middle of A's.
    expect(counts.answer).toBeGreaterThanOrEqual(120)
    expect(counts["connection error"]).toBeGreaterThan(0)
    console.log(`(b) 200 requests in ${Date.now() - started} ms: ${counts.answer} answered, ${counts["connection error"]} connection errors (clients of the killed replica)`)
    // The queue drains: nothing waiting, nothing running, nothing left on a worker. (The jobs of A's cut streams
    // have no reader left; they run to their end, so this may take a moment after the last client.)
    for (let i = 0; ; i++) {
      const d = await details(B.url)
      if (redis.cli("LLEN", `${P}pending`) === "0" && redis.cli("ZCARD", `${P}active`) === "0" && d.workers.every((w: Json) => w.running_jobs === 0)) break
      if (i > 200) throw new Error(`the queue did not drain: ${redis.cli("LLEN", `${P}pending`)} waiting, ${redis.cli("ZCARD", `${P}active`)} unfinished, ${JSON.stringify(d.workers)}`)
      await sleep(50)
    }
    const d = await details(B.url)
    expect(d.workers.find((w: Json) => w.name === "w1").state).toBe("offline")
    // The killed worker's jobs (and those of w3, whose replica died) were handed out again, yet answered once.
    const again = Number(redis.cli("EVAL", "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do if tonumber(redis.call('HGET', k, 'att')) > 1 then n = n + 1 end end return n", "0", `${P}job:*`))
    expect(again).toBeGreaterThan(0)
    console.log(`(b) ${again} jobs ran on a second worker`)
    // B serves on.
    expect((await stream(B.url, 4)).finishes).toEqual(["length"])
  }, 60_000)
})

describe("chorus serve --queue redis://: bad worker input, flags", () => {
  let redis: RedisServer
  let C: ServeProcess
  let C2: ServeProcess
  let D: ServeProcess
  let M: ServeProcess
  let mx1: Worker
  const EPC = "bad_chat"
  const CK = "client-key-1"
  const CK2 = "client-key-2"
  beforeAll(async () => {
    redis = await startRedis()
    const replica = () => startServeProcess(["--no-local-model", "--worker-key", KEY, "--queue", redis.url, "--worker-timeout", "1", "--aime-endpoint", EPC, "--api-key", CK, "--api-key", CK2])
    ;[C, C2, D, M] = await Promise.all([
      replica(),
      replica(),
      // No worker ever polls it: its requests meet their deadline.
      startServeProcess(["--no-local-model", "--worker-key", KEY, "--queue", redis.url, "--timeout", "1", "--aime-endpoint", "lapse_chat"]),
      // Mixing: a model here, a remote worker too, one queue (its own endpoint, so apart from C's).
      startServeProcess(["--adapter", "bench", "--bench-step-delay", "10", "--max-batch", "4", "--worker-key", KEY, "--queue", redis.url, "--aime-endpoint", "mix_chat"])
    ])
    mx1 = startWorker(M.url, "mx1", ["--max-batch", "4"])
  }, 30_000)
  afterAll(async () => {
    mx1?.child.kill("SIGKILL")
    await Promise.all([C?.stop(), C2?.stop(), D?.stop(), M?.stop()])
    redis?.stop()
  })

  it("(c) bad worker input gets 4xx with the queue in Redis; a late result is refused; the server serves on", async () => {
    const base = C.url
    const legacy = (auth: string) => ({ auth, auth_key: KEY, job_type: "llama3", version: "manual 1", max_job_batch: 1 })
    expect((await call(`${base}/worker_job_request`, { ...legacy("m#0"), auth_key: "nope" })).status).toBe(401)
    expect((await call(`${base}/worker_job_request`, { auth: "m#0", max_job_batch: 1 })).status).toBe(401)
    expect((await call(`${base}/worker_login`, { worker_parameters: { auth: "m#0", auth_key: "nope", job_type: "llama3" } })).status).toBe(401)
    expect((await call(`${base}/worker_job_request`, { ...legacy("m#0"), job_type: "sdxl" })).status).toBe(403)
    expect((await call(`${base}/worker_job_request`, undefined, "{not json")).status).toBe(400)
    expect((await call(`${base}/worker_job_request`, [1, 2])).status).toBe(400)
    expect((await call(`${base}/worker_job_request`, { ...legacy("m#0"), max_job_batch: "x" })).status).toBe(400)
    expect((await call(`${base}/worker_job_progress`, "text")).status).toBe(400)
    expect((await call(`${base}/worker_job_progress`, [])).status).toBe(400)
    expect((await call(`${base}/worker_job_result`, [])).status).toBe(400)
    expect((await call(`${base}/worker_login`, {})).status).toBe(400)
    expect((await call(`${base}/worker_job_result`, { auth: "ghost", auth_key: KEY, job_id: "x" })).status).toBe(400)
    expect((await call(`${base}/worker_login`, { worker_parameters: { auth: "B#0", auth_key: KEY, job_type: "llama3", max_batch_size: 1 }, model_parameters: { label: "m" } })).body.success).toBe(true)
    const submitted = await call(`${base}/${EPC}`, { chat_context: JSON.stringify(messages), wait_for_result: false, key: CK })
    const a = await call(`${base}/worker_job_request`, legacy("A#0"))
    expect(a.body.cmd).toBe("job")
    const job = a.body.job_data[0]
    expect(job.chat_context).toEqual(messages)
    expect(job.job_id).toBe(submitted.body.job_id)
    expect((await call(`${base}/worker_job_progress`, { auth: "A#0", auth_key: KEY, job_id: "nope#1", progress: 1 })).status).toBe(404)
    expect((await call(`${base}/worker_job_result`, { auth: "A#0", auth_key: KEY, job_id: "nope#1", text: "x" })).status).toBe(404)
    expect((await call(`${base}/worker_job_result`, { auth: "B#0", auth_key: KEY, job_id: job.job_id, text: "not mine" })).status).toBe(409)
    const progressed = await call(`${base}/worker_job_progress`, [{ job_id: job.job_id, auth_key: KEY, progress: 1, progress_data: { auth: "A#0", text: "par" } }])
    expect(progressed.status).toBe(200)
    expect(progressed.body).toEqual([{ success: true }])
    // A goes silent past the worker timeout: offline, and its job goes back to the queue, where B takes it.
    let b = await call(`${base}/worker_job_request`, { ...legacy("B#0"), max_job_batch: 1 })
    for (let i = 0; i < 20 && b.body.cmd === "no_job"; i++) b = await call(`${base}/worker_job_request`, { ...legacy("B#0"), max_job_batch: 1 })
    expect(b.body.cmd).toBe("job")
    expect(b.body.job_data[0].job_id).toBe(job.job_id)
    const d = await call(`${base}/api/endpoints/${EPC}`)
    expect(d.body.workers.find((w: Json) => w.name === "A#0").state).toBe("offline")
    expect((await call(`${base}/worker_job_result`, { auth: "A#0", auth_key: KEY, job_id: job.job_id, text: "late" })).status).toBe(409)
    expect((await call(`${base}/worker_job_result`, { auth: "B#0", auth_key: KEY, job_id: job.job_id, text: "partial answer", num_generated_tokens: 2 })).body).toEqual({ cmd: "ok" })
    expect((await call(`${base}/worker_job_result`, { auth: "B#0", auth_key: KEY, job_id: job.job_id, text: "twice" })).status).toBe(404)
    const p = await call(`${C2.url}/${EPC}/progress?job_id=${encodeURIComponent(submitted.body.job_id)}&key=${CK}`)
    expect(p.body.job_result.text).toBe("partial answer")
    expect(p.body.job_result.auth).toBe("B#0")
    expect((await call(`${base}/worker_check_server_status`, { auth_key: KEY, job_type: "llama3" })).body.key_valid).toBe(true)
    expect((await call(`${base}/health`)).status).toBe(200)
  }, 30_000)

  it("AIME session keys and job owners are shared: a session from one replica works at the other, only for its key's jobs", async () => {
    const login = await call(`${C.url}/${EPC}/login?key=${CK}`)
    expect(login.body.success).toBe(true)
    const session = login.body.client_session_auth_key as string
    const sub = await call(`${C2.url}/${EPC}`, { chat_context: JSON.stringify(messages), wait_for_result: false, client_session_auth_key: session })
    expect(sub.body.success).toBe(true)
    const id = encodeURIComponent(sub.body.job_id)
    const mine = await call(`${C.url}/${EPC}/progress?job_id=${id}&client_session_auth_key=${session}`)
    expect(mine.body.job_state).toBe("queued")
    expect(mine.body.progress.queue_position).toBe(1)
    // Another key's client does not see it, at either replica.
    expect((await call(`${C.url}/${EPC}/progress?job_id=${id}&key=${CK2}`)).status).toBe(402)
    expect((await call(`${C2.url}/${EPC}/cancel`, { job_id: sub.body.job_id, key: CK2 })).status).toBe(402)
    expect((await call(`${C2.url}/${EPC}/cancel`, { job_id: sub.body.job_id, key: CK })).body.job_state).toBe("canceled")
    expect((await call(`${C.url}/${EPC}/progress?job_id=${id}&key=${CK}`)).body.job_state).toBe("canceled")
    // An unknown session is refused at both.
    expect((await call(`${C2.url}/${EPC}`, { chat_context: JSON.stringify(messages), client_session_auth_key: "nope" })).status).toBe(401)
  }, 30_000)

  it("deadlines with the queue in Redis: a job no worker takes lapses (AIME) or fails with its deadline (OpenAI)", async () => {
    const sub = await call(`${D.url}/lapse_chat`, { chat_context: JSON.stringify(messages), wait_for_result: false })
    const started = Date.now()
    const r = await call(`${D.url}/v1/chat/completions`, { messages, max_tokens: 4 })
    expect(r.status).toBeGreaterThanOrEqual(400)
    expect(JSON.stringify(r.body)).toMatch(/timed out waiting for a worker/)
    expect(Date.now() - started).toBeLessThan(5000)
    let p = await call(`${D.url}/lapse_chat/progress?job_id=${encodeURIComponent(sub.body.job_id)}`)
    for (let i = 0; i < 100 && p.body.job_state !== "lapsed"; i++) {
      await sleep(50)
      p = await call(`${D.url}/lapse_chat/progress?job_id=${encodeURIComponent(sub.body.job_id)}`)
    }
    expect(p.status).toBe(400)
    expect(p.body.job_state).toBe("lapsed")
    expect(redis.cli("LLEN", "chorus:lapse_chat:pending")).toBe("0")
    expect(redis.cli("ZCARD", "chorus:lapse_chat:active")).toBe("0")
  }, 30_000)

  it("mixing: a replica with a model and --worker-key runs jobs on its own engine and on remote workers, from one queue", async () => {
    const remote = mx1
    {
      for (let i = 0; ; i++) {
        const d = (await call(`${M.url}/api/endpoints/mix_chat`)).body as Json
        if (d.num_active_workers === 2) break
        if (i > 400) throw new Error(`the workers did not connect: ${JSON.stringify(d.workers)} ${remote.log()}`)
        await sleep(50)
      }
      const results = await Promise.all(Array.from({ length: 24 }, () => call(`${M.url}/mix_chat`, { chat_context: JSON.stringify(messages), max_gen_tokens: 20 })))
      for (const r of results) expect(r.body.num_generated_tokens).toBe(20)
      expect(new Set(results.map((r) => r.body.text)).size).toBe(1)
      expect([...new Set(results.map((r) => r.body.auth))].sort()).toEqual(["local", "mx1"])
    }
  }, 30_000)

  it("/ready is 503 while Redis is away, worker calls 503 (workers retry), and all is well once Redis is back", async () => {
    expect((await call(`${C.url}/ready`)).status).toBe(200)
    redis.stop()
    let ready = await call(`${C.url}/ready`)
    for (let i = 0; i < 50 && ready.status === 200; i++) {
      await sleep(50)
      ready = await call(`${C.url}/ready`)
    }
    expect(ready.status).toBe(503)
    expect(ready.body.status).toBe("queue_unavailable")
    const poll = await call(`${C.url}/worker_job_request`, { auth: "R#0", auth_key: KEY, job_type: "llama3", version: "manual 1", max_job_batch: 1 })
    expect(poll.status).toBe(503)
    expect((await call(`${C.url}/${EPC}`, { chat_context: JSON.stringify(messages), wait_for_result: false, key: CK })).status).toBe(503)
    // The same address again (an empty Redis: what a restart without persistence gives).
    redis = await startRedis(redis.port)
    for (let i = 0; ; i++) {
      ready = await call(`${C.url}/ready`)
      if (ready.status === 200) break
      if (i > 100) throw new Error(`not ready again: ${JSON.stringify(ready.body)}`)
      await sleep(50)
    }
    const sub = await call(`${C.url}/${EPC}`, { chat_context: JSON.stringify(messages), wait_for_result: false, key: CK })
    expect(sub.body.success).toBe(true)
    expect((await call(`${C2.url}/${EPC}/progress?job_id=${encodeURIComponent(sub.body.job_id)}&key=${CK}`)).body.job_state).toBe("queued")
  }, 30_000)

  it("--queue: a URL that is not redis:// or no --worker-key is exit 2; an unreachable Redis is a one-line error", async () => {
    // Nothing listens on the port of a stopped server.
    const gone = await startRedis()
    gone.stop()
    const [bad, keyless, down] = await Promise.all([
      failing(["--no-local-model", "--worker-key", "k", "--queue", "http://127.0.0.1:6379"]),
      failing(["--queue", redis.url]),
      failing(["--no-local-model", "--worker-key", "k", "--queue", gone.url])
    ])
    expect(bad.status).toBe(2)
    expect(bad.stderr).toMatch(/^chorus: --queue must be a Redis URL/m)
    expect(keyless.status).toBe(2)
    expect(keyless.stderr).toContain("--worker-key")
    expect(down.status).toBe(1)
    expect(down.stderr.trim().split("\n")).toHaveLength(1)
    expect(down.stderr).toContain("cannot connect to the queue")
  }, 30_000)
})
