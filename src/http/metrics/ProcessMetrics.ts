/**
 * Node process metrics under the names Prometheus client libraries use (`process_*` as the Go and Python clients
 * write them, `nodejs_*` as prom-client does), so standard process and Node.js dashboards read them unchanged.
 * Everything is read at scrape time; the only resource is the event-loop delay monitor, owned by the caller's scope.
 *
 * @since 0.1.0
 */
import { Effect, type Scope } from "effect"
import * as fs from "node:fs"
import { monitorEventLoopDelay } from "node:perf_hooks"
import type { Registry } from "./Prometheus.ts"

const NS_PER_S = 1e9

/** The open file descriptors, where the platform lists them (Linux); NaN elsewhere. */
const openFds = (): number => (fs.existsSync("/proc/self/fd") ? fs.readdirSync("/proc/self/fd").length : Number.NaN)

/**
 * Registers the process metrics in `registry` and starts the event-loop delay monitor for as long as the scope lives.
 * The lag figures cover the time since the previous scrape (the monitor restarts at each one), as prom-client's do.
 */
export const registerProcessMetrics = (registry: Registry): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const delay = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const h = monitorEventLoopDelay({ resolution: 10 })
        h.enable()
        return h
      }),
      (h) => Effect.sync(() => h.disable())
    )
    // The four lag gauges are read one after another in one scrape: take one snapshot for all of them.
    let snapshot = { at: -Infinity, mean: 0, max: 0, p50: 0, p99: 0 }
    const lag = () => {
      const now = performance.now()
      if (now - snapshot.at > 100) {
        const n = delay.count > 0
        snapshot = {
          at: now,
          mean: n ? delay.mean / NS_PER_S : 0,
          max: n ? delay.max / NS_PER_S : 0,
          p50: n ? delay.percentile(50) / NS_PER_S : 0,
          p99: n ? delay.percentile(99) / NS_PER_S : 0
        }
        delay.reset()
      }
      return snapshot
    }
    const startTime = Math.round(Date.now() / 1000 - process.uptime())
    registry.counterFn("process_cpu_user_seconds_total", "Total user CPU time spent in seconds.", () => process.cpuUsage().user / 1e6)
    registry.counterFn("process_cpu_system_seconds_total", "Total system CPU time spent in seconds.", () => process.cpuUsage().system / 1e6)
    registry.counterFn("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", () => {
      const u = process.cpuUsage()
      return (u.user + u.system) / 1e6
    })
    registry.gaugeFn("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", () => startTime)
    registry.gaugeFn("process_resident_memory_bytes", "Resident memory size in bytes.", () => process.memoryUsage.rss())
    registry.gaugeFn("process_open_fds", "Number of open file descriptors.", openFds)
    registry.gaugeFn("nodejs_heap_size_total_bytes", "Process heap size from Node.js in bytes.", () => process.memoryUsage().heapTotal)
    registry.gaugeFn("nodejs_heap_size_used_bytes", "Process heap size used from Node.js in bytes.", () => process.memoryUsage().heapUsed)
    registry.gaugeFn("nodejs_external_memory_bytes", "Node.js external memory size in bytes.", () => process.memoryUsage().external)
    registry.gaugeFn("nodejs_active_resources_total", "Number of active resources keeping the event loop alive.", () => process.getActiveResourcesInfo().length)
    registry.gaugeFn("nodejs_eventloop_lag_mean_seconds", "The mean of the recorded event loop delays.", () => lag().mean)
    registry.gaugeFn("nodejs_eventloop_lag_max_seconds", "The maximum recorded event loop delay.", () => lag().max)
    registry.gaugeFn("nodejs_eventloop_lag_p50_seconds", "The 50th percentile of the recorded event loop delays.", () => lag().p50)
    registry.gaugeFn("nodejs_eventloop_lag_p99_seconds", "The 99th percentile of the recorded event loop delays.", () => lag().p99)
  })
