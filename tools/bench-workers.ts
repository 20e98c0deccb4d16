/**
 * `npm run bench:workers`: how `chorus serve --no-local-model` scales with remote `chorus worker`s, and what the
 * API tier costs per token against the in-process engine. Every worker runs the bench adapter with a simulated step
 * time (`--bench-step-delay`), spent blocked in a shard thread (`Atomics.wait`), so four workers on two cores wait
 * rather than compute and the step time, not the CPU, sets each worker's pace: N workers can reach N times the
 * tokens/s of one, and whatever is missing is the protocol's (polling, progress posts, hand-offs).
 *
 * Per repeat, each setup in turn (interleaved, so that noise of the shared machine spreads over all of them):
 *   local:  `chorus serve --adapter bench` (the in-process engine), same step time and batch;
 *   N = 1, 2, 4: `chorus serve --no-local-model` and N `chorus worker --adapter bench` processes.
 * Load: `chorus bench` (its library) with streamed OpenAI chat completions, concurrency = N x --max-batch (every
 * slot busy), a warm-up of one wave, then `--waves` waves measured. CPU seconds of the API process and of the
 * workers are read from /proc over the whole bench (warm-up included) and divided by the tokens it streamed.
 *
 *   node tools/bench-workers.ts [--step-ms 50] [--max-batch 16] [--workers 1,2,4] [--output-len 64] [--repeat 3] [--json FILE]
 *   node tools/bench-workers.ts --queue redis://127.0.0.1:6399 ...   (the API on a Redis queue; start redis-server first)
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Writable } from "node:stream"
import { settingsFromFlags } from "../src/bench/BenchFlags.ts"
import type { BenchLevel } from "../src/bench/ResultFile.ts"
import { bench } from "../src/cli/BenchCommand.ts"
import { parseToolFlags, toolScript } from "./ToolFlags.ts"

const flags = parseToolFlags(toolScript("bench-workers.ts"), "[options]", {
  "step-ms": { kind: "number", description: "simulated model time per engine step in ms (default 50)" },
  "max-batch": { kind: "integer", description: "sequences per worker (and of the local engine) (default 16)" },
  workers: { kind: "list", description: "worker counts to measure (default 1,2,4)" },
  "output-len": { kind: "integer", description: "tokens per request (default 64)" },
  "input-len": { kind: "integer", description: "words per random prompt (default 32)" },
  waves: { kind: "integer", description: "measured requests = waves x concurrency (default 4)" },
  repeat: { kind: "integer", description: "runs of every setup; the table shows medians (default 3)" },
  "no-local": { kind: "boolean", description: "skip the in-process baseline" },
  queue: { kind: "string", description: "redis://HOST:PORT: the remote setups keep their queue in this Redis (chorus serve --queue; flushed before each setup)" },
  json: { kind: "string", description: "write every run and the medians here" }
})
const stepMs = flags["step-ms"] ?? 50
const maxBatch = flags["max-batch"] ?? 16
const workerCounts = flags.workers ?? [1, 2, 4]
const outputLen = flags["output-len"] ?? 64
const inputLen = flags["input-len"] ?? 32
const waves = flags.waves ?? 4
const repeat = flags.repeat ?? 3
const WORKER_KEY = "bench-workers-key"

const repoRoot = path.resolve(import.meta.dirname, "..")
const cli = path.join(repoRoot, "src/cli/main.ts")
const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? Number.NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}
const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** CPU seconds (user + system) of a process, all its threads together (clock ticks of 1/100 s on Linux). */
const cpuSecondsOf = (pid: number): number => {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(fields[11]) + Number(fields[12])) / 100
}

interface Child {
  readonly process: ChildProcess
  readonly output: () => string
}

const start = (args: ReadonlyArray<string>): Child => {
  const child = spawn(process.execPath, [cli, ...args], { stdio: ["ignore", "pipe", "pipe"] })
  let output = ""
  child.stdout!.on("data", (d: Buffer) => (output += d.toString()))
  child.stderr!.on("data", (d: Buffer) => (output += d.toString()))
  return { process: child, output: () => output }
}

const stop = async (children: ReadonlyArray<Child>) => {
  for (const c of children) if (c.process.exitCode === null) c.process.kill("SIGTERM")
  await Promise.all(children.map((c) => c.process.exitCode !== null ? undefined : new Promise((r) => c.process.once("exit", r))))
}

/** A port nothing listens on now (the OS picks it; the server binds it right after). */
const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const probe = net.createServer()
    probe.once("error", reject)
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as net.AddressInfo
      probe.close(() => resolve(port))
    })
  })

/**
 * Starts a server and resolves with its base URL once `/ready` says 200 (the local model loaded). `--log-level warn`: no access-log line per
 * request (in the remote setups that would be one per progress post too), in every setup alike.
 */
const startServer = async (args: ReadonlyArray<string>): Promise<{ child: Child; url: string }> => {
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const child = start(["serve", "--port", String(port), "--log-level", "warn", ...args])
  const began = Date.now()
  for (;;) {
    // A probe that hangs (a server still setting up its listener) must not hang the benchmark.
    const up = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok, () => false)
    if (up) return { child, url }
    if (child.process.exitCode !== null || Date.now() - began > 60_000) throw new Error(`the server did not start: ${child.output()}`)
    await sleep(100)
  }
}

/** Waits until the server's `chorus:workers` gauge counts `n` workers online (registered and polling). */
const waitForWorkers = async (url: string, n: number, workers: ReadonlyArray<Child>) => {
  const began = Date.now()
  for (;;) {
    const text = await (await fetch(`${url}/metrics`)).text()
    const online = [...text.matchAll(/^chorus:workers\{[^}]*state="(?:online|busy)"[^}]*\} (\S+)$/gm)].reduce((s, m) => s + Number(m[1]), 0)
    if (online >= n) return
    const dead = workers.find((w) => w.process.exitCode !== null)
    if (dead !== undefined) throw new Error(`a worker exited: ${dead.output()}`)
    if (Date.now() - began > 120_000) throw new Error(`only ${online} of ${n} workers came online`)
    await sleep(100)
  }
}

/** The sum of every series of a counter or histogram part (`name` plus `{...}` labels containing `has`). */
const metricSum = (text: string, name: string, has = ""): number => {
  let sum = 0
  for (const m of text.matchAll(/^([^{\s]+)(\{[^}]*\})? (\S+)$/gm)) if (m[1] === name && (m[2] ?? "").includes(has)) sum += Number(m[3])
  return sum
}

/** With --queue, the Redis server's process id (INFO server: process_id), so its CPU can be counted too. */
const redisPid = (): number | undefined => {
  if (flags.queue === undefined) return undefined
  const info = spawnSync("redis-cli", ["-u", flags.queue, "info", "server"], { encoding: "utf8" })
  const m = /^process_id:(\d+)/m.exec(info.stdout ?? "")
  return m === null ? undefined : Number(m[1])
}

/** What the API server counts of the protocol: progress POSTs, job requests (polls), time from arrival to a worker. */
const protocolCounts = async (url: string) => {
  const text = await (await fetch(`${url}/metrics`)).text()
  return {
    progressPosts: metricSum(text, "chorus:http_requests_total", 'route="/worker_job_progress"'),
    jobRequests: metricSum(text, "chorus:http_requests_total", 'route="/worker_job_request"'),
    queueSeconds: metricSum(text, "chorus:request_queue_time_seconds_sum"),
    queued: metricSum(text, "chorus:request_queue_time_seconds_count")
  }
}

interface Run {
  readonly setup: string
  readonly workers: number
  readonly concurrency: number
  readonly outputTokensPerSecond: number
  readonly ttftMedianMs: number
  readonly tpotMedianMs: number
  readonly itlMedianMs: number
  readonly itlP99Ms: number
  readonly e2elMedianMs: number
  readonly tokensStreamed: number
  readonly apiCpuSecondsPer1000Tokens: number
  readonly workerCpuSecondsPer1000Tokens: number
  /** With --queue: the Redis server's CPU (its process, found through INFO); 0 without. */
  readonly redisCpuSecondsPer1000Tokens: number
  /** Arrival to admission: to a worker's poll (remote), into an engine step (local). */
  readonly queueTimeMeanMs: number
  readonly progressPostsPer1000Tokens: number
  readonly jobRequestsPer1000Tokens: number
  readonly failed: number
}

const discard = new Writable({ write: (_chunk, _encoding, done) => done() })

/** One bench against a running setup: `api` is the process whose CPU counts as the API tier's. */
const measure = async (setup: string, url: string, api: Child, workers: ReadonlyArray<Child>, concurrency: number): Promise<Run> => {
  const settings = settingsFromFlags({
    url,
    dataset: "random",
    "input-len": inputLen,
    "output-len": outputLen,
    concurrency: [concurrency],
    requests: waves * concurrency,
    warmup: concurrency,
    label: setup
  })
  const redis = redisPid()
  const cpu = () => ({
    api: cpuSecondsOf(api.process.pid!),
    workers: workers.reduce((s, w) => s + cpuSecondsOf(w.process.pid!), 0),
    redis: redis === undefined ? 0 : cpuSecondsOf(redis)
  })
  const before = cpu()
  const countsBefore = await protocolCounts(url)
  const result = await bench(settings, discard)
  const after = cpu()
  const counts = await protocolCounts(url)
  const level: BenchLevel = result.levels[0]!
  const tokens = level.output_tokens + level.warmup.output_tokens
  const run: Run = {
    setup,
    workers: workers.length,
    concurrency,
    outputTokensPerSecond: round(level.output_throughput, 1),
    ttftMedianMs: round(level.ttft_ms.median ?? Number.NaN, 2),
    tpotMedianMs: round(level.tpot_ms.median ?? Number.NaN, 2),
    itlMedianMs: round(level.itl_ms.median ?? Number.NaN, 2),
    itlP99Ms: round(level.itl_ms.p99 ?? Number.NaN, 2),
    e2elMedianMs: round(level.e2el_ms.median ?? Number.NaN, 1),
    tokensStreamed: tokens,
    apiCpuSecondsPer1000Tokens: round(((after.api - before.api) / tokens) * 1000, 3),
    workerCpuSecondsPer1000Tokens: round(((after.workers - before.workers) / tokens) * 1000, 3),
    redisCpuSecondsPer1000Tokens: round(((after.redis - before.redis) / tokens) * 1000, 3),
    queueTimeMeanMs: round(((counts.queueSeconds - countsBefore.queueSeconds) / (counts.queued - countsBefore.queued)) * 1000, 2),
    progressPostsPer1000Tokens: round(((counts.progressPosts - countsBefore.progressPosts) / tokens) * 1000, 1),
    jobRequestsPer1000Tokens: round(((counts.jobRequests - countsBefore.jobRequests) / tokens) * 1000, 1),
    failed: level.failed + level.warmup.failed
  }
  process.stdout.write(`${JSON.stringify(run)}\n`)
  return run
}

const benchLocal = async (): Promise<Run> => {
  const server = await startServer(["--adapter", "bench", "--bench-step-delay", String(stepMs), "--max-batch", String(maxBatch)])
  try {
    return await measure("local", server.url, server.child, [], maxBatch)
  } finally {
    await stop([server.child])
  }
}

const benchRemote = async (n: number): Promise<Run> => {
  const queue = flags.queue
  if (queue !== undefined) {
    // Each setup starts from an empty queue and worker registry, as a fresh in-memory server does.
    const flushed = spawnSync("redis-cli", ["-u", queue, "flushall"], { encoding: "utf8" })
    if (flushed.status !== 0) throw new Error(`redis-cli -u ${queue} flushall failed: ${flushed.stderr || flushed.error?.message}`)
  }
  const server = await startServer(["--no-local-model", "--worker-key", WORKER_KEY, ...(queue === undefined ? [] : ["--queue", queue])])
  const workers = Array.from({ length: n }, (_, i) =>
    start([
      "worker", "--api-server", server.url, "--worker-key", WORKER_KEY, "--adapter", "bench",
      "--bench-step-delay", String(stepMs), "--max-batch", String(maxBatch), "--name", `bench#${i}_1xCPU`
    ]))
  try {
    await waitForWorkers(server.url, n, workers)
    return await measure(`${n} worker${n === 1 ? "" : "s"}`, server.url, server.child, workers, n * maxBatch)
  } finally {
    // Workers first: a worker whose server is gone retries with backoff instead of exiting.
    await stop(workers)
    await stop([server.child])
  }
}

const main = async () => {
  const runs: Array<Run> = []
  for (let r = 0; r < repeat; r++) {
    if (flags["no-local"] !== true) runs.push(await benchLocal())
    for (const n of workerCounts) runs.push(await benchRemote(n))
  }
  const of = (setup: string) => runs.filter((x) => x.setup === setup)
  const med = (setup: string, key: keyof Run) => median(of(setup).map((x) => Number(x[key])))
  const one = med("1 worker", "outputTokensPerSecond")
  const scaling = workerCounts.map((n) => {
    const setup = `${n} worker${n === 1 ? "" : "s"}`
    const tps = med(setup, "outputTokensPerSecond")
    return {
      workers: n,
      concurrency: n * maxBatch,
      outputTokensPerSecond: round(tps, 1),
      runs: of(setup).map((x) => x.outputTokensPerSecond),
      linear: round(one * n, 1),
      percentOfLinear: round((tps / (one * n)) * 100, 1),
      tpotMedianMs: med(setup, "tpotMedianMs"),
      ttftMedianMs: med(setup, "ttftMedianMs"),
      apiCpuSecondsPer1000Tokens: med(setup, "apiCpuSecondsPer1000Tokens"),
      workerCpuSecondsPer1000Tokens: med(setup, "workerCpuSecondsPer1000Tokens"),
      redisCpuSecondsPer1000Tokens: med(setup, "redisCpuSecondsPer1000Tokens"),
      queueTimeMeanMs: med(setup, "queueTimeMeanMs"),
      progressPostsPer1000Tokens: med(setup, "progressPostsPer1000Tokens"),
      jobRequestsPer1000Tokens: med(setup, "jobRequestsPer1000Tokens")
    }
  })
  const overhead = flags["no-local"] === true ? undefined : {
    local: {
      outputTokensPerSecond: med("local", "outputTokensPerSecond"),
      tpotMedianMs: med("local", "tpotMedianMs"),
      ttftMedianMs: med("local", "ttftMedianMs"),
      e2elMedianMs: med("local", "e2elMedianMs"),
      serveCpuSecondsPer1000Tokens: med("local", "apiCpuSecondsPer1000Tokens"),
      queueTimeMeanMs: med("local", "queueTimeMeanMs")
    },
    oneWorker: {
      outputTokensPerSecond: one,
      tpotMedianMs: med("1 worker", "tpotMedianMs"),
      ttftMedianMs: med("1 worker", "ttftMedianMs"),
      e2elMedianMs: med("1 worker", "e2elMedianMs"),
      apiCpuSecondsPer1000Tokens: med("1 worker", "apiCpuSecondsPer1000Tokens"),
      workerCpuSecondsPer1000Tokens: med("1 worker", "workerCpuSecondsPer1000Tokens")
    },
    addedMsPerToken: round(med("1 worker", "tpotMedianMs") - med("local", "tpotMedianMs"), 2),
    addedTtftMs: round(med("1 worker", "ttftMedianMs") - med("local", "ttftMedianMs"), 1)
  }
  const result = {
    date: new Date().toISOString(),
    machine: `${os.cpus()[0]?.model ?? "?"}, ${os.availableParallelism()} cores (shared), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.versions.node}`,
    command: `node tools/bench-workers.ts --step-ms ${stepMs} --max-batch ${maxBatch} --workers ${workerCounts.join(",")} --output-len ${outputLen} --input-len ${inputLen} --waves ${waves} --repeat ${repeat}${flags["no-local"] === true ? " --no-local" : ""}${flags.queue === undefined ? "" : ` --queue ${flags.queue}`}`,
    settings: { stepMs, maxBatch, outputLen, inputLen, waves, repeat, api: "openai streamed chat completions", dataset: "random" },
    scaling,
    overhead,
    runs
  }
  process.stdout.write(`${JSON.stringify({ ...result, runs: `${runs.length} runs` }, null, 2)}\n`)
  if (flags.json !== undefined) fs.writeFileSync(flags.json, `${JSON.stringify(result, null, 2)}\n`)
  if (runs.some((x) => x.failed > 0)) process.exitCode = 1
}

await main()
