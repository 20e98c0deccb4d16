// Remote workers over AIME's worker protocol: `chorus serve --no-local-model` (in-process, startServer) with
// (a) a Chorus worker (in-process runWorker over the default model on the CPU), (b) AIME's own Python worker
// library, unchanged, (c) bad worker input, (d) a worker process killed mid-job.
import { spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { Effect, ManagedRuntime, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../../src/adapters/bench/BenchAdapter.ts"
import { Llama3Adapter } from "../../../src/adapters/llama3/Llama3Adapter.ts"
import { runWorker } from "../../../src/cli/WorkerCommand.ts"
import { Engine } from "../../../src/core/Engine.ts"
import type { GenerateRequest } from "../../../src/core/Request.ts"
import { repoRoot } from "../../support/fixtures.ts"
import { waitFor } from "../../support/serveProcess.ts"
import { startServer as startServerOn } from "../../../src/http/Server.ts"
import { readSse, startServer, type TestServer } from "../../support/server.ts"

type Json = Record<string, any>
const KEY = "wk-test-1"
const EP = "llama3_chat"
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

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

const remoteServer = (timeoutMs = 1500) =>
  startServer({ adapter: Llama3Adapter, adapterOptions: {}, remote: { workerKeys: [KEY], workerTimeoutMs: timeoutMs, pollWaitMs: 500 } })

const startServerAt = (port: number) =>
  startServerOn({ adapter: Llama3Adapter, adapterOptions: {}, host: "127.0.0.1", port, remote: { workerKeys: [KEY], workerTimeoutMs: 1500, pollWaitMs: 500 } })

/** Polls an AIME job until done; returns the result and the number of polls that carried one. */
const pollResult = async (base: string, jobId: string, ms = 60_000) => {
  const started = Date.now()
  for (;;) {
    const p = await call(`${base}/${EP}/progress?job_id=${encodeURIComponent(jobId)}`)
    if (p.body.job_state === "done") return p.body.job_result as Json
    if (p.status !== 200) throw new Error(`poll: ${p.status} ${JSON.stringify(p.body)}`)
    if (Date.now() - started > ms) throw new Error("the job did not finish")
    await sleep(50)
  }
}

const messages = [{ role: "user" as const, content: "Name three colours." }]

describe("chorus serve --no-local-model with Chorus workers", () => {
  let server: TestServer
  let local: ManagedRuntime.ManagedRuntime<Engine, any>
  let engine: Engine["Service"]
  const stopWorker = new AbortController()
  let worker: Promise<void>

  /** What the local engine itself generates for a request. */
  const localRun = async (request: GenerateRequest) => {
    let text = ""
    let tokens = 0
    await Effect.runPromise(Stream.runForEach(engine.generate(request), (e) =>
      Effect.sync(() => {
        if (e._tag === "Token") {
          text += e.text
          tokens++
        } else if (e._tag === "Finished") text += e.text
      })))
    return { text, tokens }
  }

  beforeAll(async () => {
    server = await remoteServer()
    local = ManagedRuntime.make(Engine.layer(Llama3Adapter, {}, { maxNumSeqs: 4 }))
    engine = await local.runPromise(Effect.gen(function*() {
      return yield* Engine
    }))
    worker = runWorker({ apiServer: server.url, workerKey: KEY, engine, maxBatch: 4, name: "inproc#0_1xCPU", signal: stopWorker.signal, log: () => {} })
    await waitFor(() => (server.serving.workers?.workers().some((w) => w.actor.state() === "online") ? true : undefined), "the worker to connect", 30_000)
  }, 120_000)
  afterAll(async () => {
    stopWorker.abort()
    await worker
    await server?.close()
    await local?.dispose()
  })

  it("(a) an OpenAI streamed chat through the worker is what the local engine generates", async () => {
    const expected = await localRun({ input: { type: "chat", messages }, maxTokens: 16, sampling: { temperature: 0 } })
    const r = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true } })
    })
    expect(r.status).toBe(200)
    const frames = await readSse(r)
    expect(frames.at(-1)?.data).toBe("[DONE]")
    const chunks = frames.slice(0, -1).map((f) => JSON.parse(f.data) as Json)
    const text = chunks.map((c) => c.choices?.[0]?.delta?.content ?? "").join("")
    expect(text).toBe(expected.text)
    // Streamed as the worker's progress came, not in one piece at the end.
    expect(chunks.filter((c) => (c.choices?.[0]?.delta?.content ?? "") !== "").length).toBeGreaterThan(1)
    const usage = chunks.find((c) => c.usage != null)?.usage
    expect(usage.completion_tokens).toBe(expected.tokens)
    expect(usage.prompt_tokens).toBeGreaterThan(0)
  }, 60_000)

  it("(a) an AIME polled job through the worker is what the local engine generates; the worker is listed", async () => {
    const expected = await localRun({ input: { type: "chat", messages }, maxTokens: 12, sampling: { temperature: 0, topK: 40, topP: 0.9 } })
    const submitted = await call(`${server.url}/${EP}`, { chat_context: JSON.stringify(messages), max_gen_tokens: 12, temperature: 0, wait_for_result: false })
    expect(submitted.status).toBe(200)
    const result = await pollResult(server.url, submitted.body.job_id)
    expect(result.text).toBe(expected.text)
    expect(result.num_generated_tokens).toBe(expected.tokens)
    const details = await call(`${server.url}/api/endpoints/${EP}`)
    expect(details.body.num_workers).toBe(1)
    expect(details.body.workers[0]).toMatchObject({ name: "inproc#0_1xCPU", state: "waiting", max_batch_size: 4 })
    expect(details.body.workers[0].model.label).toBe(engine.model.id)
    const metrics = await (await fetch(`${server.url}/metrics`)).text()
    expect(metrics).toMatch(/chorus:workers\{state="online"\} 1/)
    expect(metrics).toMatch(/chorus:workers\{state="offline"\} 0/)
    // The engine metrics count remote requests too (the two requests so far ended at their token limit).
    expect(metrics).toMatch(/chorus:request_success_total\{[^}]*finished_reason="length"[^}]*\} 2/)
    expect(metrics).toMatch(/chorus:time_to_first_token_seconds_count\{[^}]*\} 2/)
  }, 60_000)

  it("a client that goes away cancels its job on the worker (the progress acknowledgement says canceled)", async () => {
    const before = Effect.runSync(engine.stats).generatedTokens
    const controller = new AbortController()
    const r = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages, max_tokens: 2000, temperature: 0, stream: true, ignore_eos: true }),
      signal: controller.signal
    })
    const reader = r.body!.getReader()
    await reader.read()
    controller.abort()
    await waitFor(() => (server.serving.workers?.workers().every((w) => w.running.size === 0) ? true : undefined), "the job to leave the worker", 20_000)
    await waitFor(() => (Effect.runSync(engine.stats).numRunning === 0 ? true : undefined), "the worker's engine to stop the sequence", 20_000)
    expect(Effect.runSync(engine.stats).generatedTokens - before).toBeLessThan(2000)
  }, 60_000)

  it("a worker started before its server connects once the server is up (backoff), and SIGTERM-style stop lets its job finish", async () => {
    const probe = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, remote: { workerKeys: [KEY] } })
    const port = Number(new URL(probe.url).port)
    await probe.close()
    const stop = new AbortController()
    const w = runWorker({ apiServer: `http://127.0.0.1:${port}`, workerKey: KEY, engine, maxBatch: 2, name: "early#0_1xCPU", signal: stop.signal, log: () => {} })
    await sleep(800)
    const late = await startServerAt(port)
    try {
      await waitFor(() => (late.serving.workers?.workers().some((x) => x.name === "early#0_1xCPU") ? true : undefined), "the early worker to connect", 30_000)
      const expected = await localRun({ input: { type: "chat", messages }, maxTokens: 60, sampling: { temperature: 0, topK: 40, topP: 0.9 } })
      const submitted = await call(`${late.url}/${EP}`, { chat_context: JSON.stringify(messages), max_gen_tokens: 60, temperature: 0, wait_for_result: false })
      await waitFor(() => (late.serving.workers?.workers()[0]?.running.size === 1 ? true : undefined), "the job to reach the worker", 10_000)
      stop.abort()
      // Stopped polling: a job submitted now stays queued; the running one finishes.
      const second = await call(`${late.url}/${EP}`, { chat_context: JSON.stringify(messages), max_gen_tokens: 4, wait_for_result: false })
      await w
      expect((await pollResult(late.url, submitted.body.job_id)).text).toBe(expected.text)
      const queued = await call(`${late.url}/${EP}/progress?job_id=${encodeURIComponent(second.body.job_id)}`)
      expect(queued.body.job_state).toBe("queued")
    } finally {
      await late.close()
    }
  }, 90_000)

  it("chorus worker (the process) stops on SIGTERM with exit code 0", async () => {
    const child = spawn(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "worker", "--api-server", server.url, "--worker-key", KEY, "--max-batch", "1", "--name", "termed"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let err = ""
    child.stderr!.on("data", (d) => (err += d))
    const exited = new Promise<number | null>((r) => child.on("exit", r))
    try {
      await waitFor(() => (server.serving.workers?.workers().some((w) => w.name === "termed" && w.actor.state() === "online") ? true : undefined), `the worker process to connect (${err})`, 60_000)
      child.kill("SIGTERM")
      expect(await exited).toBe(0)
      expect(err).toContain("chorus worker: stopped")
    } finally {
      child.kill("SIGKILL")
    }
  }, 90_000)

  it("(d) a worker process killed mid-job: its job is re-queued after --worker-timeout and answered once by another", async () => {
    // This describe's in-process worker stays away from the queue while the other one takes the job.
    stopWorker.abort()
    await worker
    await waitFor(() => (server.serving.workers?.workers().find((w) => w.name === "inproc#0_1xCPU")?.actor.state() === "offline" ? true : undefined), "the in-process worker to go offline", 10_000)
    const child = spawn(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "worker", "--api-server", server.url, "--worker-key", KEY, "--max-batch", "2", "--name", "doomed"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let err = ""
    child.stderr!.on("data", (d) => (err += d))
    try {
      await waitFor(() => (server.serving.workers?.workers().some((w) => w.name === "doomed" && w.actor.state() === "online") ? true : undefined), `the worker process to connect (${err})`, 60_000)
      const request = { chat_context: JSON.stringify(messages), max_gen_tokens: 400, temperature: 0, wait_for_result: false }
      const expected = await localRun({ input: { type: "chat", messages }, maxTokens: 400, sampling: { temperature: 0, topK: 40, topP: 0.9 } })
      const submitted = await call(`${server.url}/${EP}`, request)
      const jobId: string = submitted.body.job_id
      // Killed once it has streamed tokens: the second worker must continue the text, not repeat it.
      let streamed = 0
      for (let i = 0; i < 400 && streamed === 0; i++) {
        const p = await call(`${server.url}/${EP}/progress?job_id=${encodeURIComponent(jobId)}`)
        expect(p.body.job_state).not.toBe("done")
        streamed = p.body.progress?.progress ?? 0
        if (streamed === 0) await sleep(10)
      }
      child.kill("SIGKILL")
      expect(streamed).toBeGreaterThan(0)
      expect(streamed).toBeLessThan(expected.tokens)
      await waitFor(() => (server.serving.workers?.workers().find((w) => w.name === "doomed")?.actor.state() === "offline" ? true : undefined), "the killed worker to be offline", 10_000)
      const p = await call(`${server.url}/${EP}/progress?job_id=${encodeURIComponent(jobId)}`)
      // Back in the queue (its machine went back to queued), at its head.
      expect(p.body.job_state).toBe("queued")
      expect(p.body.progress.queue_position).toBe(1)
      // A second worker takes the re-queued job.
      const second = new AbortController()
      const w2 = runWorker({ apiServer: server.url, workerKey: KEY, engine, maxBatch: 2, name: "second#0_1xCPU", signal: second.signal, log: () => {} })
      const result = await pollResult(server.url, jobId)
      expect(result.text).toBe(expected.text)
      // Exactly once: the next poll has no result.
      const again = await call(`${server.url}/${EP}/progress?job_id=${encodeURIComponent(jobId)}`)
      expect(again.body.job_state).toBe("done")
      expect(again.body.job_result).toBeUndefined()
      second.abort()
      await w2
    } finally {
      child.kill("SIGKILL")
    }
  }, 120_000)
})

// CHORUS_AIME_WORKER_LIB, else ../shared/reference/... beside the repository (or beside the worktrees' folder).
const libCandidates = ["../shared/reference/aime-api-worker-interface", "../../shared/reference/aime-api-worker-interface"].map((p) => path.resolve(repoRoot, p))
describe("chorus serve --no-local-model: deadlines", () => {
  it("a request that no worker takes within --timeout fails with its deadline, it does not hang", async () => {
    const server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, engine: { timeoutMs: 400 }, remote: { workerKeys: [KEY] } })
    try {
      const started = Date.now()
      const r = await call(`${server.url}/v1/chat/completions`, { messages, max_tokens: 4 })
      expect(r.status).toBeGreaterThanOrEqual(400)
      expect(JSON.stringify(r.body)).toMatch(/timed out waiting for a worker/)
      expect(Date.now() - started).toBeLessThan(5000)
      expect((await server.serving.workers!.engine.stats.pipe(Effect.runPromise)).numWaiting).toBe(0)
    } finally {
      await server.close()
    }
  }, 30_000)
})

describe("chorus serve / chorus worker flags", () => {
  it("--no-local-model needs a --worker-key; --worker-timeout needs --worker-key; worker needs --api-server", () => {
    const run = (args: ReadonlyArray<string>) => spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), ...args], { encoding: "utf8", timeout: 30_000 })
    const a = run(["serve", "--port", "0", "--no-local-model"])
    expect(a.status).toBe(2)
    expect(a.stderr).toContain("--worker-key")
    const b = run(["serve", "--port", "0", "--worker-timeout", "5"])
    expect(b.status).toBe(2)
    expect(b.stderr).toContain("--worker-key")
    const c = run(["worker", "--worker-key", "k"])
    expect(c.status).toBe(2)
    expect(c.stderr).toContain("--api-server")
  }, 60_000)
})

const aimeLib = process.env.CHORUS_AIME_WORKER_LIB ?? libCandidates.find((p) => fs.existsSync(p)) ?? libCandidates[0]!
const haveLib = fs.existsSync(path.join(aimeLib, "aime_api_worker_interface", "api_worker_interface.py")) &&
  spawnSync("python3", ["-c", "import requests"]).status === 0
if (!haveLib) console.warn(`SKIPPED (b): AIME's worker library not found at ${aimeLib} (set CHORUS_AIME_WORKER_LIB) or python3 with requests missing`)

describe("chorus serve --no-local-model: worker routes with AIME's workers and bad input", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await remoteServer()
  }, 60_000)
  afterAll(async () => {
    await server?.close()
  })

  it.skipIf(!haveLib)(`(b) AIME's own Python worker library (${aimeLib}) takes a job and its result reaches the client`, async () => {
    const child = spawn("python3", [path.join(repoRoot, "test/http/workers/aime_echo_worker.py"), aimeLib, server.url, KEY], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    child.stdout!.on("data", (d) => (out += d))
    child.stderr!.on("data", (d) => (out += d))
    const exited = new Promise((r) => child.on("exit", r))
    try {
      const r = await call(`${server.url}/${EP}`, { chat_context: JSON.stringify([{ role: "user", content: "hello there" }]), wait_for_result: true })
      expect(r.status, out).toBe(200)
      expect(r.body.text).toBe("echo: hello there")
      await exited
      expect(out).toContain("ECHO WORKER DONE")
      const details = await call(`${server.url}/api/endpoints/${EP}`)
      const w = details.body.workers.find((x: Json) => x.name.endsWith("_1xTest_GPU"))
      expect(w.model).toMatchObject({ label: "echo", quantization: "none", size: "0B", family: "Echo" })
    } finally {
      child.kill("SIGKILL")
    }
  }, 60_000)

  it("(c) bad worker input gets 4xx; a late result from a timed-out worker is refused; the server serves on", async () => {
    const base = server.url
    const legacy = (auth: string) => ({ auth, auth_key: KEY, job_type: "llama3", version: "manual 1", max_job_batch: 1 })
    // Wrong or missing key, wrong job type.
    expect((await call(`${base}/worker_job_request`, { ...legacy("m#0"), auth_key: "nope" })).status).toBe(401)
    expect((await call(`${base}/worker_job_request`, { auth: "m#0", max_job_batch: 1 })).status).toBe(401)
    expect((await call(`${base}/worker_login`, { worker_parameters: { auth: "m#0", auth_key: "nope", job_type: "llama3" } })).status).toBe(401)
    expect((await call(`${base}/worker_job_request`, { ...legacy("m#0"), job_type: "sdxl" })).status).toBe(403)
    // Malformed bodies.
    expect((await call(`${base}/worker_job_request`, undefined, "{not json")).status).toBe(400)
    expect((await call(`${base}/worker_job_request`, [1, 2])).status).toBe(400)
    expect((await call(`${base}/worker_job_request`, { ...legacy("m#0"), max_job_batch: "x" })).status).toBe(400)
    expect((await call(`${base}/worker_job_progress`, "text")).status).toBe(400)
    expect((await call(`${base}/worker_job_progress`, [])).status).toBe(400)
    expect((await call(`${base}/worker_job_result`, [])).status).toBe(400)
    expect((await call(`${base}/worker_login`, {})).status).toBe(400)
    // A worker that never logged in and sends no version.
    expect((await call(`${base}/worker_job_result`, { auth: "ghost", auth_key: KEY, job_id: "x" })).status).toBe(400)
    // Log in two manual workers (a poll with nothing queued answers no_job).
    expect((await call(`${base}/worker_login`, { worker_parameters: { auth: "B#0", auth_key: KEY, job_type: "llama3", max_batch_size: 1 }, model_parameters: { label: "m" } })).body.success).toBe(true)
    const submitted = await call(`${base}/${EP}`, { chat_context: JSON.stringify(messages), wait_for_result: false })
    const a = await call(`${base}/worker_job_request`, legacy("A#0"))
    expect(a.body.cmd).toBe("job")
    const job = a.body.job_data[0]
    expect(job.chat_context).toEqual(messages)
    // Unknown job ids; a job of another worker.
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
    const details = await call(`${base}/api/endpoints/${EP}`)
    expect(details.body.workers.find((w: Json) => w.name === "A#0").state).toBe("offline")
    const late = await call(`${base}/worker_job_result`, { auth: "A#0", auth_key: KEY, job_id: job.job_id, text: "late" })
    expect(late.status).toBe(409)
    expect((await call(`${base}/worker_job_result`, { auth: "B#0", auth_key: KEY, job_id: job.job_id, text: "partial answer", num_generated_tokens: 2 })).body).toEqual({ cmd: "ok" })
    // B's result already answered: a second one is refused.
    expect((await call(`${base}/worker_job_result`, { auth: "B#0", auth_key: KEY, job_id: job.job_id, text: "twice" })).status).toBe(404)
    const result = await pollResult(base, submitted.body.job_id)
    expect(result.text).toBe("partial answer")
    const status = await call(`${base}/worker_check_server_status`, { auth_key: KEY, job_type: "llama3" })
    expect(status.status).toBe(200)
    expect(status.body.key_valid).toBe(true)
    expect((await call(`${base}/health`)).status).toBe(200)
  }, 60_000)
})

describe("chorus serve with a model and --worker-key: the local engine and remote workers share the queue", () => {
  it("both take jobs from one in-memory queue", async () => {
    const server = await startServer({ adapter: BenchAdapter, adapterOptions: { stepDelayMs: 10 }, engine: { maxNumSeqs: 4 }, remote: { workerKeys: [KEY], localWorker: true, pollWaitMs: 500 } })
    const remote = ManagedRuntime.make(Engine.layer(BenchAdapter, { stepDelayMs: 10 }, { maxNumSeqs: 4 }))
    const stop = new AbortController()
    try {
      const engine = await remote.runPromise(Effect.gen(function*() {
        return yield* Engine
      }))
      const w = runWorker({ apiServer: server.url, workerKey: KEY, engine, maxBatch: 4, name: "remote#0_1xCPU", signal: stop.signal, log: () => {} })
      const pool = server.serving.workers!
      await waitFor(() => (pool.workers().filter((x) => x.actor.state() === "online").length === 2 ? true : undefined), "the local and the remote worker to poll", 30_000)
      const busy = new Set<string>()
      const sampler = setInterval(() => {
        for (const x of pool.workers()) if (x.running.size > 0) busy.add(x.name)
      }, 5)
      const results = await Promise.all(Array.from({ length: 24 }, () => call(`${server.url}/v1/chat/completions`, { messages, max_tokens: 20 })))
      clearInterval(sampler)
      for (const r of results) expect(r.body.usage.completion_tokens).toBe(20)
      expect(new Set(results.map((r) => r.body.choices[0].message.content)).size).toBe(1)
      expect([...busy].sort()).toEqual(["local", "remote#0_1xCPU"])
      stop.abort()
      await w
    } finally {
      stop.abort()
      await server.close()
      await remote.dispose()
    }
  }, 60_000)
})
