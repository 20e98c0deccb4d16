/**
 * `npm run bench:soak`: many streams against a `chorus serve --adapter bench` child (zero-cost model), checking what
 * a long run must keep true: every stream ends exactly once (one finish chunk, one `[DONE]`, no error, one end of
 * response), the server's /metrics counters equal the client's own counts, and the server's RSS stops growing
 * after warm-up (growth under 10%). Exits 1 when a check fails. Linux only (RSS from /proc).
 *
 * Two RSS series: as the OS sees it every second (it includes garbage V8 has not collected yet, so it climbs
 * while V8's heap limit grows), and right after a full GC that `soak-heap-probe.ts` runs in the server every
 * 5 s, with the heap in use: what the server retains. The growth check is on the second.
 *
 *   node tools/bench-soak.ts [--requests 20000] [--concurrency 256] [--output-len 16] [--max-batch 256] [--json FILE]
 */
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as http from "node:http"
import * as os from "node:os"
import * as path from "node:path"
import { parseToolFlags, toolScript } from "./ToolFlags.ts"

const flags = parseToolFlags(toolScript("bench-soak.ts"), "[options]", {
  requests: { kind: "integer", description: "streams in all (default 20000)" },
  concurrency: { kind: "integer", description: "streams open at once (default 256)" },
  "output-len": { kind: "integer", description: "tokens per stream (default 16)" },
  "max-batch": { kind: "integer", description: "the server's KV slots (default 256)" },
  "time-limit": { kind: "number", description: "seconds after which no new stream starts (default 290; the run then fails)" },
  json: { kind: "string", description: "write the results here" }
})
const requests = flags.requests ?? 20_000
const concurrency = flags.concurrency ?? 256
const outputLen = flags["output-len"] ?? 16
const maxBatch = flags["max-batch"] ?? 256
const timeLimitMs = (flags["time-limit"] ?? 290) * 1000
/** Completed share of the run after which the server counts as warm. */
const WARM = 0.25
const MAX_GROWTH = 0.1

const repoRoot = path.resolve(import.meta.dirname, "..")
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN

/** Post-GC figures from the server's probe: [seconds since start, completed streams, heap bytes, RSS bytes]. */
const afterGc: Array<readonly [number, number, number, number]> = []
let progress = { started: performance.now(), completed: 0 }

const startServer = async () => {
  const probe = path.join(repoRoot, "tools/soak-heap-probe.ts")
  const args = ["--expose-gc", "--import", probe, path.join(repoRoot, "src/cli/main.ts"), "serve", "--adapter", "bench", "--port", "0", "--max-batch", String(maxBatch)]
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] })
  let out = ""
  child.stdout.on("data", (d) => (out += d))
  let err = ""
  child.stderr.on("data", (d: Buffer) => {
    err += d.toString()
    let i: number
    while ((i = err.indexOf("\n")) >= 0) {
      const line = err.slice(0, i)
      err = err.slice(i + 1)
      const m = /^soak-heap-probe (\d+) (\d+)$/.exec(line)
      if (m === null) process.stderr.write(`${line}\n`)
      else afterGc.push([(performance.now() - progress.started) / 1000, progress.completed, Number(m[1]), Number(m[2])])
    }
  })
  const started = Date.now()
  while (!/at (http:\/\/127\.0\.0\.1:\d+)\//.test(out)) {
    if (child.exitCode !== null || Date.now() - started > 60_000) throw new Error(`the server did not start: ${out}`)
    await new Promise((r) => setTimeout(r, 50))
  }
  return { child, url: new URL(/at (http:\/\/127\.0\.0\.1:\d+)\//.exec(out)![1]!) }
}

const rssOf = (pid: number): number => {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))
  return m === null ? Number.NaN : Number(m[1]) * 1024
}

/** CPU seconds (user + system) the process has used, all its threads together. */
const cpuSecondsOf = (pid: number): number => {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  // utime and stime are fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 per second on Linux).
  return (Number(fields[11]) + Number(fields[12])) / 100
}

interface StreamResult {
  readonly ok: boolean
  readonly problem?: string
  readonly tokens: number
}

/** One streamed chat completion; the body is checked once the response has ended. */
const streamOne = (agent: http.Agent, url: URL, i: number, ended: { count: number; twice: number }) =>
  new Promise<StreamResult>((resolve) => {
    let settled = false
    const settle = (r: StreamResult) => {
      ended.count++
      if (settled) {
        ended.twice++
        return
      }
      settled = true
      resolve(r)
    }
    const body = JSON.stringify({
      messages: [{ role: "user", content: `Tell story number ${i} about a lighthouse keeper.` }],
      max_tokens: outputLen,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true }
    })
    const req = http.request(url, { method: "POST", agent, path: "/v1/chat/completions", headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (d: Buffer) => chunks.push(d))
      res.on("error", (e) => settle({ ok: false, problem: `response error: ${e.message}`, tokens: 0 }))
      res.on("end", () => {
        if (res.statusCode !== 200) return settle({ ok: false, problem: `status ${res.statusCode}`, tokens: 0 })
        const frames = Buffer.concat(chunks).toString("utf8").split("\n\n").filter((f) => f.length > 0).map((f) => f.slice("data: ".length))
        const done = frames.filter((f) => f === "[DONE]").length
        if (done !== 1 || frames.at(-1) !== "[DONE]") return settle({ ok: false, problem: `${done} [DONE] frames, last ${frames.at(-1)?.slice(0, 80)}`, tokens: 0 })
        if (frames.some((f) => f.startsWith('{"error"'))) return settle({ ok: false, problem: "error event", tokens: 0 })
        const finishes = frames.filter((f) => f.includes('"finish_reason":"')).length
        if (finishes !== 1) return settle({ ok: false, problem: `${finishes} finish chunks`, tokens: 0 })
        const usage = /"completion_tokens":(\d+)/.exec(frames.at(-2) ?? "")
        const tokens = usage === null ? -1 : Number(usage[1])
        if (tokens !== outputLen) return settle({ ok: false, problem: `usage says ${tokens} tokens`, tokens: Math.max(0, tokens) })
        settle({ ok: true, tokens })
      })
    })
    req.on("error", (e) => settle({ ok: false, problem: `request error: ${e.message}`, tokens: 0 }))
    req.end(body)
  })

/** The sum of the series of `selector` (`name` or `name{label="value",...}`): other labels (model_name) may be present. */
const metricValue = (text: string, selector: string): number => {
  const [, name, wanted = ""] = /^([^{]+)(?:\{(.*)\})?$/.exec(selector)!
  const pairs = wanted === "" ? [] : wanted.split(",")
  let sum = 0
  for (const line of text.split("\n")) {
    const m = /^([^{\s]+)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    const labels = (m[2] ?? "").split(",")
    if (pairs.every((p) => labels.includes(p))) sum += Number(m[3])
  }
  return sum
}

const main = async () => {
  const server = await startServer()
  const pid = server.child.pid!
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency })
  const samples: Array<{ atS: number; completed: number; rss: number }> = []
  const ended = { count: 0, twice: 0 }
  const problems = new Map<string, number>()
  let completed = 0
  let failed = 0
  let tokens = 0
  const started = performance.now()
  const cpuAtStart = cpuSecondsOf(pid)
  progress = { started, completed: 0 }
  const sampler = setInterval(() => samples.push({ atS: (performance.now() - started) / 1000, completed, rss: rssOf(pid) }), 1000)
  samples.push({ atS: 0, completed: 0, rss: rssOf(pid) })

  let next = 0
  const worker = async () => {
    while (next < requests && performance.now() - started < timeLimitMs) {
      const i = next++
      const r = await streamOne(agent, server.url, i, ended)
      tokens += r.tokens
      if (r.ok) progress.completed = ++completed
      else {
        failed++
        problems.set(r.problem!, (problems.get(r.problem!) ?? 0) + 1)
      }
      if ((completed + failed) % 2000 === 0) {
        const s = samples.at(-1)!
        process.stdout.write(`${completed + failed}/${requests} streams, ${((performance.now() - started) / 1000).toFixed(0)} s, server RSS ${(s.rss / 2 ** 20).toFixed(0)} MiB\n`)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  const seconds = (performance.now() - started) / 1000
  const serverCpuSeconds = cpuSecondsOf(pid) - cpuAtStart
  clearInterval(sampler)
  samples.push({ atS: seconds, completed, rss: rssOf(pid) })
  // Let the server count the last ends, and its probe report once more after them (it reports every 5 s).
  const lastReport = afterGc.length
  for (let i = 0; i < 60 && afterGc.length === lastReport; i++) await new Promise((r) => setTimeout(r, 100))
  const metrics = await (await fetch(new URL("/metrics", server.url))).text()
  agent.destroy()
  server.child.kill("SIGTERM")
  const exitCode = await new Promise<number | null>((r) => server.child.on("exit", r))

  const server_ = {
    length: metricValue(metrics, 'chorus:request_success_total{finished_reason="length"}'),
    stop: metricValue(metrics, 'chorus:request_success_total{finished_reason="stop"}'),
    abort: metricValue(metrics, 'chorus:request_success_total{finished_reason="abort"}'),
    error: metricValue(metrics, 'chorus:request_success_total{finished_reason="error"}'),
    timeout: metricValue(metrics, 'chorus:request_success_total{finished_reason="timeout"}'),
    generationTokens: metricValue(metrics, "chorus:generation_tokens_total"),
    slowReaderAborts: metricValue(metrics, "chorus:stream_aborted_slow_reader_total")
  }
  /** Median of one series over a window of the run (by completed share), and the growth from warm to end. */
  const windowed = (series: ReadonlyArray<readonly [number, number]>) => {
    const within = (from: number, to: number) => {
      const inside = series.filter(([done]) => done >= requests * from && done <= requests * to).map(([, v]) => v)
      // A short run may have no sample inside a window: the first one after its start stands for it.
      return inside.length > 0 ? median(inside) : series.find(([done]) => done >= requests * from)?.[1] ?? Number.NaN
    }
    const warm = within(WARM, WARM + 0.15)
    const end = within(0.85, 1)
    const max = Math.max(...series.filter(([done]) => done >= requests * WARM).map(([, v]) => v))
    const mib = (x: number) => Math.round(x / 2 ** 20)
    return { warm: mib(warm), end: mib(end), maxAfterWarmUp: mib(max), growthAfterWarmUpPercent: Math.round((end / warm - 1) * 1000) / 10 }
  }
  const rss = windowed(samples.map((s) => [s.completed, s.rss] as const))
  const rssAfterGc = windowed(afterGc.map(([, done, , r]) => [done, r] as const))
  const heapAfterGc = windowed(afterGc.map(([, done, h]) => [done, h] as const))
  const checks = {
    everyStreamEndedOnce: completed === requests && failed === 0 && ended.count === requests && ended.twice === 0,
    withinTimeLimit: seconds * 1000 < timeLimitMs,
    metricsEqualClient: server_.length === completed && server_.generationTokens === tokens &&
      server_.stop + server_.abort + server_.error + server_.timeout === 0 && server_.slowReaderAborts === 0,
    rssGrowthAfterWarmUpUnder10Percent: rssAfterGc.growthAfterWarmUpPercent < MAX_GROWTH * 100,
    serverExitedZero: exitCode === 0
  }
  const result = {
    date: new Date().toISOString(),
    machine: `${os.cpus()[0]?.model ?? "?"}, ${os.availableParallelism()} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.versions.node}`,
    command: `node tools/bench-soak.ts --requests ${requests} --concurrency ${concurrency} --output-len ${outputLen} --max-batch ${maxBatch}`,
    requests, concurrency, outputLen, seconds: Math.round(seconds * 10) / 10,
    streamsPerSecond: Math.round(requests / seconds), tokensPerSecond: Math.round(tokens / seconds),
    serverCpuSeconds: Math.round(serverCpuSeconds * 10) / 10,
    serverCpuMicrosecondsPerToken: Math.round((serverCpuSeconds / tokens) * 1e6 * 10) / 10,
    client: { completed, failed, tokens, ends: ended.count, endedTwice: ended.twice, problems: Object.fromEntries(problems) },
    server: server_,
    memoryMiB: { rssStart: Math.round(samples[0]!.rss / 2 ** 20), rssAfterGc, heapAfterGc, rssAsSampled: rss },
    /** [seconds, completed streams, RSS MiB as sampled]; [seconds, completed, heap MiB, RSS MiB] right after a full GC. */
    rssSamples: samples.map((s) => [Math.round(s.atS), s.completed, Math.round(s.rss / 2 ** 20)]),
    afterGcSamples: afterGc.map(([t, done, h, r]) => [Math.round(t), done, Math.round(h / 2 ** 20), Math.round(r / 2 ** 20)]),
    checks
  }
  process.stdout.write(`${JSON.stringify({ ...result, rssSamples: `${samples.length} samples`, afterGcSamples: `${afterGc.length} samples` }, null, 2)}\n`)
  if (flags.json !== undefined) fs.writeFileSync(flags.json, `${JSON.stringify(result, null, 2)}\n`)
  process.exitCode = Object.values(checks).every(Boolean) ? 0 : 1
}

await main()
