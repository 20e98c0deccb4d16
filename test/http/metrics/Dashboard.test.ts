// vLLM's Grafana dashboard against a live Chorus: every query of vLLM's example dashboard
// (vllm-project/vllm examples/observability/prometheus_grafana/grafana.json), after the prefix rename docs/api.md
// documents (`vllm:` -> `chorus:`) and with `$model_name` set the way the dashboard sets it
// (`label_values(model_name)`), selects series on /metrics.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BenchAdapter } from "../../../src/adapters/bench/index.ts"
import { parseExposition, type Sample, select, selectorsIn } from "../../support/PromSelector.ts"
import { readSse, startServer, type TestServer } from "../../support/server.ts"

/** The dashboard's queries, panel by panel, as they are written there. */
const DASHBOARD: ReadonlyArray<readonly [panel: string, expr: string]> = [
  ["E2E Request Latency", `histogram_quantile(0.99, sum by(le) (rate(vllm:e2e_request_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))`],
  ["E2E Request Latency", `rate(vllm:e2e_request_latency_seconds_sum{model_name="$model_name"}[$__rate_interval])\n/\nrate(vllm:e2e_request_latency_seconds_count{model_name="$model_name"}[$__rate_interval])`],
  ["Token Throughput", `rate(vllm:prompt_tokens_total{model_name="$model_name"}[$__rate_interval])`],
  ["Token Throughput", `rate(vllm:generation_tokens_total{model_name="$model_name"}[$__rate_interval])`],
  ["Inter Token Latency", `histogram_quantile(0.99, sum by(le) (rate(vllm:inter_token_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))`],
  ["Inter Token Latency", `rate(vllm:inter_token_latency_seconds_sum{model_name="$model_name"}[$__rate_interval])\n/\nrate(vllm:inter_token_latency_seconds_count{model_name="$model_name"}[$__rate_interval])`],
  ["Scheduler State", `vllm:num_requests_running{model_name="$model_name"}`],
  ["Scheduler State", `vllm:num_requests_waiting{model_name="$model_name"}`],
  ["Time To First Token Latency", `histogram_quantile(0.99, sum by(le) (rate(vllm:time_to_first_token_seconds_bucket{model_name="$model_name"}[$__rate_interval])))`],
  ["Time To First Token Latency", `rate(vllm:time_to_first_token_seconds_sum{model_name="$model_name"}[$__rate_interval])\n/\nrate(vllm:time_to_first_token_seconds_count{model_name="$model_name"}[$__rate_interval])`],
  ["Cache Utilization", `vllm:kv_cache_usage_perc{model_name="$model_name"}`],
  ["Request Prompt Length", `sum by(le) (increase(vllm:request_prompt_tokens_bucket{model_name="$model_name"}[$__rate_interval]))`],
  ["Request Generation Length", `sum by(le) (increase(vllm:request_generation_tokens_bucket{model_name="$model_name"}[$__rate_interval]))`],
  ["Finish Reason", `sum by(finished_reason) (increase(vllm:request_success_total{model_name="$model_name"}[$__rate_interval]))`],
  ["Queue Time", `rate(vllm:request_queue_time_seconds_sum{model_name="$model_name"}[$__rate_interval])`],
  ["Requests Prefill and Decode Time", `rate(vllm:request_prefill_time_seconds_sum{model_name="$model_name"}[$__rate_interval])`],
  ["Requests Prefill and Decode Time", `rate(vllm:request_decode_time_seconds_sum{model_name="$model_name"}[$__rate_interval])`],
  ["Max Generation Token in Sequence Group", `rate(vllm:request_max_num_generation_tokens_sum{model_name="$model_name"}[$__rate_interval])`]
]

/** The rename docs/api.md tells dashboard users to make. */
const renamePrefix = (expr: string) => expr.replaceAll("vllm:", "chorus:")

let server: TestServer
let samples: Array<Sample>
let modelName: string

beforeAll(async () => {
  server = await startServer({ adapter: BenchAdapter, adapterOptions: {} })
  const post = (body: unknown) =>
    fetch(`${server.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
  expect((await post({ prompt: "The sea", max_tokens: 8, ignore_eos: true })).status).toBe(200)
  const streamed = await post({ prompt: "A robot walks", max_tokens: 12, ignore_eos: true, stream: true })
  expect((await readSse(streamed)).at(-1)!.data).toBe("[DONE]")
  samples = parseExposition(await (await fetch(`${server.url}/metrics`)).text())
  // the dashboard's model_name variable: label_values(model_name)
  const names = new Set(samples.flatMap((s) => (s.labels.model_name === undefined ? [] : [s.labels.model_name])))
  expect([...names]).toEqual([server.engine.model.id])
  modelName = [...names][0]!
})
afterAll(() => server.close())

describe("vLLM's Grafana dashboard on Chorus's /metrics", () => {
  it.each(DASHBOARD.map(([panel, expr], i) => [`${i + 1}. ${panel}`, expr] as const))("%s: every selector selects a series", (_, expr) => {
    const selectors = selectorsIn(renamePrefix(expr).replaceAll("$model_name", modelName))
    expect(selectors.length).toBeGreaterThan(0)
    for (const selector of selectors) {
      const found = select(samples, selector)
      expect(found, selector).not.toHaveLength(0)
      for (const s of found) expect(s.labels.model_name).toBe(modelName)
    }
  })

  it("the series carry the traffic just sent: two requests, their tokens, their finish reason", () => {
    const one = (selector: string) => {
      const found = select(samples, selector)
      expect(found, selector).toHaveLength(1)
      return found[0]!.value
    }
    const m = `model_name="${modelName}"`
    expect(one(`chorus:e2e_request_latency_seconds_count{${m}}`)).toBe(2)
    expect(one(`chorus:request_generation_tokens_sum{${m}}`)).toBe(20)
    expect(one(`chorus:generation_tokens_total{${m}}`)).toBe(20)
    expect(one(`chorus:request_success_total{${m},finished_reason="length"}`)).toBe(2)
    expect(one(`chorus:request_prompt_tokens_count{${m}}`)).toBe(2)
    expect(one(`chorus:prompt_tokens_total{${m}}`)).toBe(one(`chorus:request_prompt_tokens_sum{${m}}`))
    expect(one(`chorus:request_prompt_tokens_bucket{${m},le="+Inf"}`)).toBe(2)
    expect(one(`chorus:time_to_first_token_seconds_count{${m}}`)).toBe(2)
    // tokens per engine step (vLLM's meaning): every prompt and generated token was computed in some step,
    // except each request's last token, which is sampled but never fed back
    expect(one(`chorus:iteration_tokens_total_sum{${m}}`)).toBe(one(`chorus:prompt_tokens_total{${m}}`) + 20 - 2)
    expect(select(samples, `chorus:request_success_total{${m},finished_reason=~"stop|length|abort|error|timeout"}`)).toHaveLength(5)
  })

  it("the matcher is a real one: wrong names, other models and negated matchers select nothing", () => {
    expect(select(samples, `vllm:num_requests_running{model_name="${modelName}"}`)).toHaveLength(0)
    expect(select(samples, `chorus:num_requests_running{model_name="another-model"}`)).toHaveLength(0)
    expect(select(samples, `chorus:num_requests_running{model_name!="${modelName}"}`)).toHaveLength(0)
    expect(select(samples, `chorus:num_requests_running{model_name=~"chorus-.*"}`)).toHaveLength(1)
    expect(select(samples, `chorus:num_requests_running{model_name=~"chorus"}`)).toHaveLength(0) // anchored, as in Prometheus
    expect(select(samples, `chorus:request_success_total{model_name="${modelName}",finished_reason!="abort"}`)).toHaveLength(4)
    expect(selectorsIn(`sum by(le) (rate(a:b{x="}"}[5m])) / c{y=~"1|2"}`)).toEqual([`a:b{x="}"}`, `c{y=~"1|2"}`])
  })

  it("process metrics use the conventional names", () => {
    for (const name of [
      "process_resident_memory_bytes",
      "process_cpu_seconds_total",
      "process_start_time_seconds",
      "nodejs_heap_size_used_bytes",
      "nodejs_heap_size_total_bytes",
      "nodejs_eventloop_lag_p99_seconds",
      "nodejs_active_resources_total"
    ]) {
      const found = select(samples, name)
      expect(found, name).toHaveLength(1)
      expect(Number.isFinite(found[0]!.value), name).toBe(true)
    }
    expect(select(samples, "process_resident_memory_bytes")[0]!.value).toBeGreaterThan(10 * 1024 * 1024)
    expect(select(samples, "nodejs_heap_size_used_bytes")[0]!.value).toBeLessThanOrEqual(select(samples, "nodejs_heap_size_total_bytes")[0]!.value)
  })
})
