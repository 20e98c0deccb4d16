import { describe, expect, it } from "vitest"
import type { FinishedRequest } from "../../../src/core/EngineObserver.ts"
import { buckets125, ITL_BUCKETS, makeEngineMetrics, TTFT_BUCKETS, toErrorType } from "../../../src/http/metrics/EngineMetrics.ts"
import { Registry } from "../../../src/http/metrics/Prometheus.ts"

const lines = (text: string): Array<string> => text.split("\n")
const MODEL = { modelName: "tiny-llama", maxModelLen: 2048 }
const M = 'model_name="tiny-llama"'
const make = () => makeEngineMetrics(MODEL)

const request = (r: Partial<FinishedRequest>): FinishedRequest => ({
  reason: "stop",
  e2eSeconds: 1,
  prefillSeconds: undefined,
  decodeSeconds: undefined,
  promptTokens: 10,
  generationTokens: 0,
  maxTokens: 16,
  ...r
})

describe("EngineMetrics", () => {
  it("renders every serving metric with its # TYPE line, each series labelled with the model", () => {
    const text = make().registry.render()
    const expected: Array<[string, string]> = [
      ["chorus:time_to_first_token_seconds", "histogram"],
      ["chorus:inter_token_latency_seconds", "histogram"],
      ["chorus:request_time_per_output_token_seconds", "histogram"],
      ["chorus:request_queue_time_seconds", "histogram"],
      ["chorus:e2e_request_latency_seconds", "histogram"],
      ["chorus:request_prefill_time_seconds", "histogram"],
      ["chorus:request_decode_time_seconds", "histogram"],
      ["chorus:request_inference_time_seconds", "histogram"],
      ["chorus:num_requests_running", "gauge"],
      ["chorus:num_requests_waiting", "gauge"],
      ["chorus:kv_cache_usage_perc", "gauge"],
      ["chorus:prefix_cache_queries_total", "counter"],
      ["chorus:prefix_cache_hits_total", "counter"],
      ["chorus:num_preemptions_total", "counter"],
      ["chorus:prompt_tokens_total", "counter"],
      ["chorus:generation_tokens_total", "counter"],
      ["chorus:request_success_total", "counter"],
      ["chorus:request_prompt_tokens", "histogram"],
      ["chorus:request_generation_tokens", "histogram"],
      ["chorus:request_max_num_generation_tokens", "histogram"],
      ["chorus:request_params_max_tokens", "histogram"],
      ["chorus:iteration_tokens_total", "histogram"],
      ["chorus:request_failure_total", "counter"],
      ["chorus:engine_decode_steps_total", "counter"],
      ["chorus:engine_batched_decode_steps_total", "counter"],
      ["chorus:engine_decode_step_sequences", "histogram"],
      ["chorus:engine_step_seconds_total", "counter"]
    ]
    const types = lines(text).filter((l) => l.startsWith("# TYPE "))
    expect(types).toEqual(expected.map(([name, type]) => `# TYPE ${name} ${type}`))
    for (const reason of ["stop", "length", "abort", "error", "timeout"]) {
      expect(lines(text)).toContain(`chorus:request_success_total{${M},finished_reason="${reason}"} 0`)
    }
    const series = lines(text).filter((l) => l !== "" && !l.startsWith("#") && !l.startsWith("chorus:request_failure_total"))
    expect(series.length).toBeGreaterThan(100)
    for (const l of series) expect(l).toContain(`{${M}`)
  })

  it("uses vLLM's buckets: TTFT, latency, tokens per engine step, 1-2-5 token counts up to the context length", () => {
    const text = make().registry.render()
    const les = (name: string): Array<string> =>
      lines(text)
        .filter((l) => l.startsWith(`${name}_bucket{`))
        .map((l) => /le="([^"]+)"/.exec(l)![1])
    expect(les("chorus:time_to_first_token_seconds")).toEqual([...TTFT_BUCKETS.map(String), "+Inf"])
    expect(les("chorus:inter_token_latency_seconds").slice(0, 8)).toEqual(
      ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025"]
    )
    expect(les("chorus:inter_token_latency_seconds")).toHaveLength(ITL_BUCKETS.length + 1)
    expect(les("chorus:e2e_request_latency_seconds").at(-2)).toBe("7680")
    expect(les("chorus:iteration_tokens_total")).toEqual(
      ["1", "8", "16", "32", "64", "128", "256", "512", "1024", "2048", "4096", "8192", "16384", "+Inf"]
    )
    expect(les("chorus:request_prompt_tokens")).toEqual(["1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "2000", "+Inf"])
    expect(buckets125(100)).toEqual([1, 2, 5, 10, 20, 50, 100])
    expect(buckets125(131072).at(-1)).toBe(100000)
  })

  it("records a request's life: tokens, latencies, sizes, finish reason, engine steps, failures", () => {
    const m = make()
    m.promptTokens(12)
    m.engineStep(12)
    m.firstToken(0.2, 0.03)
    m.token(0.0003)
    m.token(0.0004)
    m.finished(request({ reason: "stop", e2eSeconds: 0.9, prefillSeconds: 0.03, decodeSeconds: 0.5, promptTokens: 12, generationTokens: 3 }))
    m.finished(request({ reason: "abort", e2eSeconds: 0.1, promptTokens: 7 })) // aborted while queued
    m.decodeStep(1)
    m.decodeStep(3)
    m.decodeStep(3)
    m.engineStep(3)
    m.failed("DeadlineExceeded")
    m.failed("deadline_exceeded")
    m.failed("KVCacheFull")
    const text = lines(m.registry.render())
    expect(text).toContain(`chorus:prompt_tokens_total{${M}} 12`)
    expect(text).toContain(`chorus:generation_tokens_total{${M}} 3`)
    expect(text).toContain(`chorus:request_queue_time_seconds_count{${M}} 1`)
    expect(text).toContain(`chorus:time_to_first_token_seconds_sum{${M}} 0.03`)
    expect(text).toContain(`chorus:time_to_first_token_seconds_bucket{${M},le="0.02"} 0`)
    expect(text).toContain(`chorus:time_to_first_token_seconds_bucket{${M},le="0.04"} 1`)
    expect(text).toContain(`chorus:inter_token_latency_seconds_bucket{${M},le="0.00025"} 0`)
    expect(text).toContain(`chorus:inter_token_latency_seconds_bucket{${M},le="0.0005"} 2`)
    expect(text).toContain(`chorus:request_time_per_output_token_seconds_sum{${M}} 0.25`)
    expect(text).toContain(`chorus:request_success_total{${M},finished_reason="stop"} 1`)
    expect(text).toContain(`chorus:request_success_total{${M},finished_reason="abort"} 1`)
    expect(text).toContain(`chorus:request_success_total{${M},finished_reason="length"} 0`)
    expect(text).toContain(`chorus:e2e_request_latency_seconds_count{${M}} 2`)
    expect(text).toContain(`chorus:request_prefill_time_seconds_count{${M}} 1`)
    expect(text).toContain(`chorus:request_decode_time_seconds_count{${M}} 1`)
    expect(text).toContain(`chorus:request_inference_time_seconds_sum{${M}} 0.53`)
    expect(text).toContain(`chorus:request_prompt_tokens_count{${M}} 2`)
    expect(text).toContain(`chorus:request_prompt_tokens_sum{${M}} 19`)
    expect(text).toContain(`chorus:request_prompt_tokens_bucket{${M},le="5"} 0`)
    expect(text).toContain(`chorus:request_prompt_tokens_bucket{${M},le="10"} 1`)
    expect(text).toContain(`chorus:request_generation_tokens_sum{${M}} 3`)
    expect(text).toContain(`chorus:request_max_num_generation_tokens_sum{${M}} 3`)
    expect(text).toContain(`chorus:request_params_max_tokens_sum{${M}} 32`)
    expect(text).toContain(`chorus:iteration_tokens_total_bucket{${M},le="1"} 0`)
    expect(text).toContain(`chorus:iteration_tokens_total_bucket{${M},le="8"} 1`)
    expect(text).toContain(`chorus:iteration_tokens_total_sum{${M}} 15`)
    expect(text).toContain(`chorus:engine_decode_steps_total{${M}} 3`)
    expect(text).toContain(`chorus:engine_batched_decode_steps_total{${M}} 2`)
    expect(text).toContain(`chorus:engine_decode_step_sequences_bucket{${M},le="1"} 1`)
    expect(text).toContain(`chorus:engine_decode_step_sequences_bucket{${M},le="4"} 3`)
    expect(text).toContain(`chorus:request_failure_total{${M},error_type="deadline_exceeded"} 2`)
    expect(text).toContain(`chorus:request_failure_total{${M},error_type="kv_cache_full"} 1`)
  })

  it("reads bound gauges at scrape time and reports 0 before binding", () => {
    const m = makeEngineMetrics(MODEL, new Registry())
    expect(lines(m.registry.render())).toContain(`chorus:kv_cache_usage_perc{${M}} 0`)
    let running = 2
    m.bindGauges({ running: () => running, waiting: () => 5, kvUsage: () => 0.75, prefixCacheQueries: () => 40, prefixCacheHits: () => 32 })
    let text = lines(m.registry.render())
    expect(text).toContain(`chorus:num_requests_running{${M}} 2`)
    expect(text).toContain(`chorus:num_requests_waiting{${M}} 5`)
    expect(text).toContain(`chorus:kv_cache_usage_perc{${M}} 0.75`)
    expect(text).toContain(`chorus:prefix_cache_queries_total{${M}} 40`)
    expect(text).toContain(`chorus:prefix_cache_hits_total{${M}} 32`)
    running = 4
    text = lines(m.registry.render())
    expect(text).toContain(`chorus:num_requests_running{${M}} 4`)
  })

  it("registers into a shared registry next to other metrics, and refuses a second EngineMetrics there", () => {
    const r = new Registry()
    r.counter("http_requests_total", "HTTP requests.")
    const m = makeEngineMetrics(MODEL, r)
    expect(m.registry).toBe(r)
    expect(r.render()).toContain("# TYPE http_requests_total counter")
    expect(() => makeEngineMetrics(MODEL, r)).toThrow(/already registered/)
  })

  it("escapes a model name with quotes in its label", () => {
    const text = makeEngineMetrics({ modelName: 'a"b\\c', maxModelLen: 8 }).registry.render()
    expect(lines(text)).toContain('chorus:num_requests_running{model_name="a\\"b\\\\c"} 0')
  })

  it("snake_cases error tags into stable error types", () => {
    expect(toErrorType("CheckpointError")).toBe("checkpoint_error")
    expect(toErrorType("KVCacheFull")).toBe("kv_cache_full")
    expect(toErrorType("HTTPServerError")).toBe("http_server_error")
    expect(toErrorType("already_snake")).toBe("already_snake")
    expect(toErrorType("Bad Thing!")).toBe("bad_thing")
    expect(toErrorType("")).toBe("unknown")
  })

  it("takes 1e6 per-token calls well under a second", () => {
    const m = make()
    const t0 = performance.now()
    for (let i = 0; i < 1e6; i++) m.token((i % 100) * 0.0001)
    expect(performance.now() - t0).toBeLessThan(1000)
    expect(lines(m.registry.render())).toContain(`chorus:generation_tokens_total{${M}} 1000000`)
  })
})
