/**
 * One load level: a warm-up batch (sent at once, its figures kept apart), then the measured requests, either
 * closed-loop (C sessions, each sending its next request when the last one ends, as AIME's semaphore does) or
 * open-loop (Poisson arrivals at `rate` per second, optionally capped at C in flight, as `vllm bench serve
 * --request-rate --max-concurrency`). It also measures the client itself: CPU time and event-loop delay, so a
 * run where the load generator was the bottleneck shows it.
 */
import { monitorEventLoopDelay } from "node:perf_hooks"
import { setTimeout as sleep } from "node:timers/promises"
import type { LoadClient } from "./LoadClient.ts"
import { type LevelMetrics, RequestOutcome, Samples, summarize } from "./Metrics.ts"
import { makeRng, type Prompt } from "./Prompts.ts"

export interface LevelPlan {
  readonly requests: number
  /** Sessions (closed loop) or the in-flight cap (open loop); undefined with a rate: no cap. */
  readonly concurrency: number | undefined
  /** Requests per second, Poisson arrivals; undefined: closed loop. */
  readonly rate: number | undefined
  readonly warmup: number
  /** Seeds the arrival times. */
  readonly seed: number
}

export interface LiveProgress {
  readonly total: number
  readonly done: number
  readonly failed: number
  readonly inFlight: number
  readonly outputTokens: number
  readonly elapsedMs: number
  readonly warmup: boolean
}

export interface WarmupFigures {
  readonly requests: number
  readonly completed: number
  readonly failed: number
  readonly inputTokens: number
  readonly outputTokens: number
}

export interface ClientFigures {
  /** CPU seconds this process used during the measured phase. */
  readonly cpuS: number
  /** That CPU time as a share of one core over the phase, in percent. */
  readonly cpuPercent: number
  /** 99th percentile event-loop delay: high values mean the client lagged behind its streams. */
  readonly eventLoopP99Ms: number
}

export interface LevelResult {
  readonly metrics: LevelMetrics
  readonly warmup: WarmupFigures
  readonly client: ClientFigures
}

/** `prompt(i)`: warm-up requests take indices 0..warmup-1, measured ones the next `requests`. */
export type PromptSource = (index: number) => Prompt

class Counters {
  done = 0
  failed = 0
  inFlight = 0
  peak = 0
  outputTokens = 0
}

const runOne = async (client: LoadClient, prompt: Prompt, itl: Samples, c: Counters): Promise<RequestOutcome> => {
  const o = new RequestOutcome()
  c.inFlight++
  if (c.inFlight > c.peak) c.peak = c.inFlight
  await client.send(prompt, o, itl)
  c.inFlight--
  c.done++
  if (!o.ok) c.failed++
  c.outputTokens += o.outputTokens
  return o
}

/** A counting semaphore: at most `n` holders. */
const semaphore = (n: number) => {
  let free = n
  const waiting: Array<() => void> = []
  return {
    acquire: (): Promise<void> => (free > 0 ? (free--, Promise.resolve()) : new Promise((r) => waiting.push(r))),
    release: () => {
      const next = waiting.shift()
      if (next !== undefined) next()
      else free++
    }
  }
}

const closedLoop = async (client: LoadClient, prompt: PromptSource, offset: number, n: number, sessions: number, itl: Samples, c: Counters) => {
  const out = new Array<RequestOutcome>(n)
  let next = 0
  const session = async () => {
    while (next < n) {
      const i = next++
      out[i] = await runOne(client, prompt(offset + i), itl, c)
    }
  }
  await Promise.all(Array.from({ length: Math.min(sessions, n) }, session))
  return out
}

const openLoop = async (client: LoadClient, prompt: PromptSource, offset: number, n: number, plan: LevelPlan, itl: Samples, c: Counters) => {
  const rng = makeRng(plan.seed ^ 0x5eed)
  const cap = plan.concurrency === undefined ? undefined : semaphore(plan.concurrency)
  const start = performance.now()
  let due = start
  const pending: Array<Promise<RequestOutcome>> = []
  for (let i = 0; i < n; i++) {
    if (i > 0) due += (-Math.log(1 - rng()) / plan.rate!) * 1000
    const wait = due - performance.now()
    if (wait > 1) await sleep(wait)
    if (cap !== undefined) await cap.acquire()
    pending.push(runOne(client, prompt(offset + i), itl, c).finally(() => cap?.release()))
  }
  return Promise.all(pending)
}

export const runLevel = async (client: LoadClient, prompt: PromptSource, plan: LevelPlan, onProgress?: (p: LiveProgress) => void): Promise<LevelResult> => {
  let phase = { counters: new Counters(), total: plan.warmup, start: performance.now(), warmup: true }
  const report = () => onProgress?.({
    total: phase.total,
    done: phase.counters.done,
    failed: phase.counters.failed,
    inFlight: phase.counters.inFlight,
    outputTokens: phase.counters.outputTokens,
    elapsedMs: performance.now() - phase.start,
    warmup: phase.warmup
  })
  const ticker = onProgress === undefined ? undefined : setInterval(report, 100)
  try {
    // Warm-up: one batch at once (server-side first-run costs, connections opened), figures kept apart.
    const warm = await Promise.all(Array.from({ length: plan.warmup }, (_, i) => runOne(client, prompt(i), new Samples(), phase.counters)))
    const warmOk = warm.filter((o) => o.ok)
    const warmup: WarmupFigures = {
      requests: plan.warmup,
      completed: warmOk.length,
      failed: plan.warmup - warmOk.length,
      inputTokens: warmOk.reduce((s, o) => s + (Number.isFinite(o.promptTokens) ? o.promptTokens : 0), 0),
      outputTokens: warmOk.reduce((s, o) => s + o.outputTokens, 0)
    }
    report()

    phase = { counters: new Counters(), total: plan.requests, start: performance.now(), warmup: false }
    const itl = new Samples()
    const loop = monitorEventLoopDelay({ resolution: 5 })
    loop.enable()
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const outcomes = plan.rate === undefined
      ? await closedLoop(client, prompt, plan.warmup, plan.requests, plan.concurrency ?? 1, itl, phase.counters)
      : await openLoop(client, prompt, plan.warmup, plan.requests, plan, itl, phase.counters)
    const t1 = Math.max(t0, ...outcomes.map((o) => o.endMs).filter(Number.isFinite))
    const cpu = process.cpuUsage(cpu0)
    loop.disable()
    report()
    const cpuS = (cpu.user + cpu.system) / 1e6
    return {
      metrics: summarize(outcomes, itl, t1 - t0, phase.counters.peak),
      warmup,
      client: { cpuS, cpuPercent: t1 > t0 ? (100 * cpuS) / ((t1 - t0) / 1000) : 0, eventLoopP99Ms: loop.percentile(99) / 1e6 }
    }
  } finally {
    if (ticker !== undefined) clearInterval(ticker)
  }
}
