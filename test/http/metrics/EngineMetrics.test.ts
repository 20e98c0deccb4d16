import { describe, expect, it } from "vitest"
import { ITL_BUCKETS, makeEngineMetrics, TTFT_BUCKETS, toErrorType } from "../../../src/http/metrics/EngineMetrics.ts"
import { Registry } from "../../../src/http/metrics/Prometheus.ts"

const lines = (text: string): Array<string> => text.split("\n")

describe("EngineMetrics", () => {
  it("renders every serving metric with its # TYPE line", () => {
    const text = makeEngineMetrics().registry.render()
    const expected: Array<[string, string]> = [
      ["chorus:time_to_first_token_seconds", "histogram"],
      ["chorus:inter_token_latency_seconds", "histogram"],
      ["chorus:request_queue_time_seconds", "histogram"],
      ["chorus:e2e_request_latency_seconds", "histogram"],
      ["chorus:request_prefill_time_seconds", "histogram"],
      ["chorus:request_decode_time_seconds", "histogram"],
      ["chorus:num_requests_running", "gauge"],
      ["chorus:num_requests_waiting", "gauge"],
      ["chorus:kv_cache_usage_perc", "gauge"],
      ["chorus:prompt_tokens_total", "counter"],
      ["chorus:generation_tokens_total", "counter"],
      ["chorus:request_success_total", "counter"],
      ["chorus:num_decode_steps_total", "counter"],
      ["chorus:num_batched_decode_steps_total", "counter"],
      ["chorus:iteration_tokens_total", "histogram"],
      ["chorus:request_failure_total", "counter"]
    ]
    const types = lines(text).filter((l) => l.startsWith("# TYPE "))
    expect(types).toEqual(expected.map(([name, type]) => `# TYPE ${name} ${type}`))
    for (const reason of ["stop", "length", "abort", "error", "timeout"]) {
      expect(lines(text)).toContain(`chorus:request_success_total{finished_reason="${reason}"} 0`)
    }
  })

  it("uses vLLM's TTFT buckets and the ITL buckets with sub-millisecond ones in front", () => {
    const text = makeEngineMetrics().registry.render()
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
    expect(les("chorus:iteration_tokens_total")).toEqual(["1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "+Inf"])
  })

  it("records a request's life: tokens, latencies, finish reason, decode steps, failures", () => {
    const m = makeEngineMetrics()
    m.promptTokens(12)
    m.firstToken(0.2, 0.03)
    m.token(0.0003)
    m.token(0.0004)
    m.finished("stop", 0.9, 0.03, 0.5)
    m.finished("abort", 0.1) // aborted while queued: no prefill or decode time
    m.decodeStep(1)
    m.decodeStep(3)
    m.decodeStep(3)
    m.failed("DeadlineExceeded")
    m.failed("deadline_exceeded")
    m.failed("KVCacheFull")
    const text = lines(m.registry.render())
    expect(text).toContain("chorus:prompt_tokens_total 12")
    expect(text).toContain("chorus:generation_tokens_total 3")
    expect(text).toContain("chorus:request_queue_time_seconds_count 1")
    expect(text).toContain("chorus:time_to_first_token_seconds_sum 0.03")
    expect(text).toContain('chorus:time_to_first_token_seconds_bucket{le="0.02"} 0')
    expect(text).toContain('chorus:time_to_first_token_seconds_bucket{le="0.04"} 1')
    expect(text).toContain('chorus:inter_token_latency_seconds_bucket{le="0.00025"} 0')
    expect(text).toContain('chorus:inter_token_latency_seconds_bucket{le="0.0005"} 2')
    expect(text).toContain('chorus:request_success_total{finished_reason="stop"} 1')
    expect(text).toContain('chorus:request_success_total{finished_reason="abort"} 1')
    expect(text).toContain('chorus:request_success_total{finished_reason="length"} 0')
    expect(text).toContain("chorus:e2e_request_latency_seconds_count 2")
    expect(text).toContain("chorus:request_prefill_time_seconds_count 1")
    expect(text).toContain("chorus:request_decode_time_seconds_count 1")
    expect(text).toContain("chorus:num_decode_steps_total 3")
    expect(text).toContain("chorus:num_batched_decode_steps_total 2")
    expect(text).toContain('chorus:iteration_tokens_total_bucket{le="1"} 1')
    expect(text).toContain('chorus:iteration_tokens_total_bucket{le="2"} 1')
    expect(text).toContain('chorus:iteration_tokens_total_bucket{le="4"} 3')
    expect(text).toContain("chorus:iteration_tokens_total_sum 7")
    expect(text).toContain('chorus:request_failure_total{error_type="deadline_exceeded"} 2')
    expect(text).toContain('chorus:request_failure_total{error_type="kv_cache_full"} 1')
  })

  it("reads bound gauges at scrape time and reports 0 before binding", () => {
    const m = makeEngineMetrics(new Registry())
    expect(lines(m.registry.render())).toContain("chorus:kv_cache_usage_perc 0")
    let running = 2
    m.bindGauges({ running: () => running, waiting: () => 5, kvUsage: () => 0.75 })
    let text = lines(m.registry.render())
    expect(text).toContain("chorus:num_requests_running 2")
    expect(text).toContain("chorus:num_requests_waiting 5")
    expect(text).toContain("chorus:kv_cache_usage_perc 0.75")
    running = 4
    text = lines(m.registry.render())
    expect(text).toContain("chorus:num_requests_running 4")
  })

  it("registers into a shared registry next to other metrics, and refuses a second EngineMetrics there", () => {
    const r = new Registry()
    r.counter("http_requests_total", "HTTP requests.")
    const m = makeEngineMetrics(r)
    expect(m.registry).toBe(r)
    expect(r.render()).toContain("# TYPE http_requests_total counter")
    expect(() => makeEngineMetrics(r)).toThrow(/already registered/)
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
    const m = makeEngineMetrics()
    const t0 = performance.now()
    for (let i = 0; i < 1e6; i++) m.token((i % 100) * 0.0001)
    expect(performance.now() - t0).toBeLessThan(1000)
    expect(lines(m.registry.render())).toContain("chorus:generation_tokens_total 1000000")
  })
})
