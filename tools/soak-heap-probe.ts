/**
 * Preloaded into the soak run's server (`node --expose-gc --import tools/soak-heap-probe.ts`): every 5 s it runs
 * a full garbage collection and reports the heap in use and the RSS right after it on stderr. V8 lets garbage pile
 * up until its heap limit heuristics call a major GC, so the RSS of a busy server climbs for minutes even when
 * nothing leaks; measured right after a full GC, RSS and heap show what the server actually retains.
 */
const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error("soak-heap-probe needs node --expose-gc")
setInterval(() => {
  gc()
  const m = process.memoryUsage()
  process.stderr.write(`soak-heap-probe ${m.heapUsed} ${m.rss}\n`)
}, 5000).unref()
