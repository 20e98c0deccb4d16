// `chorus bench` end to end: real Chorus servers as child processes (the default model, and the bench adapter
// where speed or a full queue matters), the bench CLI as another; its JSON must hold every figure and agree with
// what the server's /metrics counted, its chart must be well-formed SVG naming its axes, failures keep reasons.
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const main = path.join(repoRoot, "src/cli/main.ts")
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-bench-"))
const file = (name: string) => path.join(scratch, name)

interface Chorus {
  readonly url: string
  readonly stop: () => Promise<void>
}

const startChorus = (...args: Array<string>): Promise<Chorus> =>
  new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [main, "serve", "--port", "0", "--host", "127.0.0.1", ...args], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stderr!.on("data", (c) => (err += c))
    child.on("exit", (code) => reject(new Error(`chorus serve exited ${code}: ${err}`)))
    child.stdout!.on("data", (c) => {
      out += c
      const m = /chorus: serving .* at (http:\/\/127\.0\.0\.1:\d+)\//.exec(out)
      if (m !== null) {
        resolve({
          url: m[1]!,
          stop: () => new Promise((done) => {
            child.removeAllListeners("exit")
            child.on("exit", () => done())
            child.kill("SIGTERM")
          })
        })
      }
    })
  })

const chorus = async (...args: Array<string>) => {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [main, ...args], { env: { ...process.env, CHORUS_DEBUG: "" }, timeout: 120_000 })
    return { code: 0, stdout, stderr }
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string }
    return { code: err.code ?? -1, stdout: err.stdout ?? "", stderr: err.stderr ?? "" }
  }
}

/** The counters of /metrics this test reconciles with. */
const scrape = async (url: string) => {
  const text = await (await fetch(`${url}/metrics`)).text()
  const value = (re: RegExp) => [...text.matchAll(re)].reduce((s, m) => s + Number(m[1]), 0)
  return {
    prompt: value(/^chorus:prompt_tokens_total\{model_name="[^"]*"\} (\S+)$/gm),
    generation: value(/^chorus:generation_tokens_total\{model_name="[^"]*"\} (\S+)$/gm),
    success: value(/^chorus:request_success_total\{model_name="[^"]*",finished_reason="(?:stop|length)"\} (\S+)$/gm)
  }
}

/**
 * A small well-formedness check (no DOM in Node): balanced, properly nested tags under one root, quoted
 * attributes, no raw '<' or stray '&' in text. Returns the problem, or undefined.
 */
const xmlProblem = (xml: string): string | undefined => {
  const stack: Array<string> = []
  const tag = /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>/y
  let i = xml.startsWith("<?xml") ? xml.indexOf("?>") + 2 : 0
  let roots = 0
  while (i < xml.length) {
    const lt = xml.indexOf("<", i)
    const text = xml.slice(i, lt === -1 ? xml.length : lt)
    if (/&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-f]+);)/i.test(text)) return `stray '&' in text near ${JSON.stringify(text.slice(0, 40))}`
    if (stack.length === 0 && text.trim() !== "") return `text outside the root: ${JSON.stringify(text.slice(0, 40))}`
    if (lt === -1) break
    tag.lastIndex = lt
    const m = tag.exec(xml)
    if (m === null) return `malformed tag at ${lt}: ${JSON.stringify(xml.slice(lt, lt + 60))}`
    const [whole, close, name, , selfClose] = m
    if (close === "/") {
      if (stack.pop() !== name) return `</${name}> does not close the open element at ${lt}`
    } else {
      if (stack.length === 0 && ++roots > 1) return "more than one root element"
      if (selfClose !== "/") stack.push(name!)
    }
    i = lt + whole.length
  }
  return stack.length === 0 ? undefined : `unclosed <${stack.at(-1)}>`
}

const FIGURES = ["request_throughput", "output_throughput", "total_token_throughput", "tokens_per_session", "duration_s"] as const
const LATENCIES = ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] as const

const expectEveryFigure = (level: Record<string, any>, requests: number) => {
  expect(level.completed).toBe(requests)
  expect(level.failed).toBe(0)
  expect(level.failures).toEqual({})
  expect(level.tokens_from_server).toBe(requests)
  expect(level.input_tokens).toBeGreaterThan(0)
  expect(level.output_tokens).toBeGreaterThanOrEqual(requests)
  for (const k of FIGURES) expect(level[k], k).toBeGreaterThan(0)
  for (const k of LATENCIES) {
    for (const s of ["mean", "median", "p90", "p99"]) expect(level[k][s], `${k}.${s}`).toEqual(expect.any(Number))
    expect(level[k].p99).toBeGreaterThanOrEqual(level[k].median)
  }
  expect(level.ttft_ms.median).toBeGreaterThan(0)
  expect(level.e2el_ms.median).toBeGreaterThanOrEqual(level.ttft_ms.median)
  expect(level.client.cpu_percent).toBeGreaterThan(0)
}

/** Server deltas must equal measured plus warm-up figures of every level. */
const expectAgreement = (result: { levels: Array<Record<string, any>> }, before: Awaited<ReturnType<typeof scrape>>, after: Awaited<ReturnType<typeof scrape>>) => {
  const sum = (f: (l: Record<string, any>) => number) => result.levels.reduce((s, l) => s + f(l), 0)
  expect(after.generation - before.generation).toBe(sum((l) => l.output_tokens + l.warmup.output_tokens))
  expect(after.prompt - before.prompt).toBe(sum((l) => l.input_tokens + l.warmup.input_tokens))
  expect(after.success - before.success).toBe(sum((l) => l.completed + l.warmup.completed))
}

describe("chorus bench against Chorus (default model)", () => {
  let server: Chorus
  beforeAll(async () => {
    server = await startChorus()
  })
  afterAll(() => server?.stop())

  it("OpenAI: a 2-level sweep writes every figure, agrees with /metrics, and draws a chart that names its axes", async () => {
    const before = await scrape(server.url)
    const r = await chorus("bench", "--url", server.url, "--concurrency", "1,3", "--requests", "6", "--warmup", "2", "--output-len", "24",
      "--json", file("openai.json"), "--chart", file("openai.svg"))
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    const after = await scrape(server.url)
    const result = JSON.parse(fs.readFileSync(file("openai.json"), "utf8"))
    expect(result).toMatchObject({ tool: "chorus bench", server: { api: "openai", model: "chorus-default-llama3" }, settings: { dataset: "story", output_len: 24 } })
    expect(result.levels.map((l: { concurrency: number }) => l.concurrency)).toEqual([1, 3])
    for (const level of result.levels) {
      expectEveryFigure(level, 6)
      expect(level.warmup).toMatchObject({ requests: 2, completed: 2 })
      expect(level.output_tokens).toBeLessThanOrEqual(6 * 24)
    }
    expect(result.levels[1].peak_in_flight).toBe(3)
    expectAgreement(result, before, after)
    for (const row of ["successful requests", "output tokens/s", "tokens/s per session", "TTFT median (ms)", "TPOT p99 (ms)", "ITL p90 (ms)", "E2EL mean (ms)"]) {
      expect(r.stdout).toContain(row)
    }
    const svg = fs.readFileSync(file("openai.svg"), "utf8")
    expect(xmlProblem(svg)).toBeUndefined()
    expect(svg.startsWith("<svg")).toBe(true)
    for (const axis of ["concurrent sessions", "total output tokens/s", "tokens/s per session"]) expect(svg).toContain(`>${axis}</text>`)
  })

  it("AIME: job submission and progress polling, every figure, counts agree with /metrics", async () => {
    const before = await scrape(server.url)
    const r = await chorus("bench", "--url", server.url, "--api", "aime", "--concurrency", "2", "--requests", "4", "--warmup", "1", "--output-len", "40",
      "--poll-interval", "5", "--json", file("aime.json"))
    expect(r.stderr).toBe("")
    expect(r.code).toBe(0)
    const after = await scrape(server.url)
    const result = JSON.parse(fs.readFileSync(file("aime.json"), "utf8"))
    expect(result).toMatchObject({ server: { api: "aime", endpoint: "llama3_chat", model: "chorus-default-llama3" }, settings: { poll_interval_ms: 5 } })
    expectEveryFigure(result.levels[0], 4)
    expectAgreement(result, before, after)
    expect(r.stdout).toContain("(aime /llama3_chat)")
  })

  it("compare prints the ratios of the main figures and draws side-by-side bars", async () => {
    const r = await chorus("bench", "compare", file("openai.json"), file("aime.json"), "--chart", file("compare.svg"))
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/^A: chorus-default-llama3 @ /)
    expect(r.stdout).toContain("B/A")
    const a = JSON.parse(fs.readFileSync(file("openai.json"), "utf8")).levels
    const b = JSON.parse(fs.readFileSync(file("aime.json"), "utf8")).levels
    // Level "concurrency 1" exists only in A; "concurrency 2" only in B: both are listed, ratios "-".
    expect(r.stdout).toMatch(/concurrency 1 /)
    expect(r.stdout).toMatch(/concurrency 2 /)
    const shown = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(2))
    const line = r.stdout.split("\n").find((l) => l.trim().startsWith("output tokens/s") && l.includes(shown(a[0].output_throughput)))
    expect(line).toBeDefined()
    expect(b[0].concurrency).toBe(2)
    const svg = fs.readFileSync(file("compare.svg"), "utf8")
    expect(xmlProblem(svg)).toBeUndefined()
    for (const axis of ["concurrent sessions", "total output tokens/s", "tokens/s per session"]) expect(svg).toContain(`>${axis}</text>`)
  })
})

describe("chorus bench against Chorus's bench adapter", () => {
  it("a full queue: 429s (OpenAI) and queue-full refusals (AIME) are failures with their reason, successes still agree with /metrics", async () => {
    const server = await startChorus("--adapter", "bench", "--max-batch", "1", "--max-queue", "1")
    try {
      const before = await scrape(server.url)
      const r = await chorus("bench", "--url", server.url, "--concurrency", "8", "--requests", "16", "--warmup", "0", "--output-len", "1000", "--json", file("busy.json"))
      expect(r.code).toBe(0)
      const after = await scrape(server.url)
      const level = JSON.parse(fs.readFileSync(file("busy.json"), "utf8")).levels[0]
      expect(level.completed + level.failed).toBe(16)
      expect(level.completed).toBeGreaterThan(0)
      expect(level.failed).toBeGreaterThan(0)
      expect(Object.keys(level.failures).every((k) => k.startsWith("HTTP 429: "))).toBe(true)
      expect(r.stdout).toMatch(/failed \(concurrency 8\): \d+ x HTTP 429: /)
      expect(after.success - before.success).toBe(level.completed)
      expect(after.generation - before.generation).toBe(level.output_tokens)

      const aime = await chorus("bench", "--url", server.url, "--api", "aime", "--concurrency", "8", "--requests", "8", "--warmup", "0", "--output-len", "1000",
        "--poll-interval", "5", "--json", file("busy-aime.json"))
      expect(aime.code).toBe(0)
      const aimeLevel = JSON.parse(fs.readFileSync(file("busy-aime.json"), "utf8")).levels[0]
      expect(aimeLevel.failed).toBeGreaterThan(0)
      expect(Object.keys(aimeLevel.failures)).toContain("HTTP 400: Job queue reached max length 1!")
    } finally {
      await server.stop()
    }
  })

  it("a request that fails mid-stream (the server's deadline) counts as failed with its reason", async () => {
    const server = await startChorus("--adapter", "bench", "--timeout", "0.3")
    try {
      const r = await chorus("bench", "--url", server.url, "--concurrency", "2", "--requests", "2", "--warmup", "0", "--output-len", "8000", "--ignore-eos", "--json", file("deadline.json"))
      expect(r.code).toBe(0)
      const level = JSON.parse(fs.readFileSync(file("deadline.json"), "utf8")).levels[0]
      expect(level).toMatchObject({ completed: 0, failed: 2, failures: { "stream error: the request exceeded its deadline of 300 ms": 2 } })
    } finally {
      await server.stop()
    }
  })

  it("open-loop Poisson arrivals, JSONL chats and random prompts of a fixed length", async () => {
    const server = await startChorus("--adapter", "bench")
    try {
      const before = await scrape(server.url)
      const rate = await chorus("bench", "--url", server.url, "--rate", "40", "--requests", "12", "--warmup", "0", "--output-len", "16", "--json", file("rate.json"))
      expect(rate.code).toBe(0)
      const level = JSON.parse(fs.readFileSync(file("rate.json"), "utf8")).levels[0]
      expect(level).toMatchObject({ rate: 40, concurrency: null, completed: 12, output_tokens: 12 * 16 })
      // 11 exponential gaps at 40/s take about 0.275 s; far longer would mean closed-loop pacing.
      expect(level.duration_s).toBeGreaterThan(0.05)
      expect(level.duration_s).toBeLessThan(3)

      fs.writeFileSync(file("chats.jsonl"), [
        JSON.stringify({ messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }], max_tokens: 5 }),
        JSON.stringify([{ role: "user", content: "Tell a story" }]),
        JSON.stringify({ prompt: "Once upon a time" })
      ].join("\n"))
      const jsonl = await chorus("bench", "--url", server.url, "--jsonl", file("chats.jsonl"), "--requests", "6", "--warmup", "0", "--output-len", "9", "--json", file("jsonl.json"))
      expect(jsonl.code).toBe(0)
      // The bench adapter never stops early: lines cycle, 5 + 9 + 9 tokens, twice.
      expect(JSON.parse(fs.readFileSync(file("jsonl.json"), "utf8")).levels[0]).toMatchObject({ completed: 6, output_tokens: 46 })

      const random = await chorus("bench", "--url", server.url, "--dataset", "random", "--input-len", "100", "--requests", "4", "--warmup", "0", "--output-len", "8", "--json", file("random.json"))
      expect(random.code).toBe(0)
      const randomLevel = JSON.parse(fs.readFileSync(file("random.json"), "utf8")).levels[0]
      // 100 one-token words plus the chat template's few tokens per request.
      expect(randomLevel.input_tokens / 4).toBeGreaterThanOrEqual(100)
      expect(randomLevel.input_tokens / 4).toBeLessThan(120)
      const after = await scrape(server.url)
      expect(after.generation - before.generation).toBe(12 * 16 + 46 + 32)
    } finally {
      await server.stop()
    }
  })
})

describe("chorus bench with bad input", () => {
  it.each([
    ["an unreachable URL", ["--url", "http://127.0.0.1:1"], /^chorus: cannot reach --url http:\/\/127\.0\.0\.1:1\/: ECONNREFUSED\n$/],
    ["a non-numeric concurrency", ["--concurrency", "4,abc"], /^chorus: --concurrency expects a number, got 'abc'\n$/],
    ["a missing JSONL file", ["--jsonl", "/nonexistent/chats.jsonl"], /^chorus: cannot read the prompt file \/nonexistent\/chats\.jsonl: no such file\n$/],
    ["an unknown API", ["--api", "grpc"], /^chorus: --api must be openai or aime, got 'grpc'\n$/],
    ["a zero concurrency", ["--concurrency", "0"], /^chorus: --concurrency values must be positive integers, got 0\n$/],
    ["compare with a missing file", ["compare", "/nonexistent/a.json", "/nonexistent/b.json"], /^chorus: no such result file: \/nonexistent\/a\.json\n$/],
    ["compare with one file", ["compare", "a.json"], /^chorus: 'chorus bench compare' needs at least two result files, got 1\n$/]
  ])("%s: one line on stderr, exit 2", async (_name, args, message) => {
    const r = await chorus("bench", ...args)
    expect(r.stderr).toMatch(message)
    expect(r.code).toBe(2)
    expect(r.stdout).toBe("")
  })
})
