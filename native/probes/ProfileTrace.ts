/**
 * ORT's profiler trace (the Chrome trace JSON `endProfiling()` writes), summed by op type: host-side kernel times of
 * every node run, as the probes print them.
 */
import * as fs from "node:fs"

export interface OpTime {
  /** Microseconds over every run of every node of this op type. */
  readonly us: number
  /** Node runs. */
  readonly n: number
}

export const opTimes = (traceFile: string): Map<string, OpTime> => {
  const events = JSON.parse(fs.readFileSync(traceFile, "utf8")) as Array<{ cat: string; name: string; dur: number; args?: { op_name?: string } }>
  const byOp = new Map<string, OpTime>()
  for (const e of events) {
    if (e.cat !== "Node" || !e.name.endsWith("_kernel_time")) continue
    const op = e.args?.op_name ?? e.name
    const cur = byOp.get(op) ?? { us: 0, n: 0 }
    byOp.set(op, { us: cur.us + e.dur, n: cur.n + 1 })
  }
  return byOp
}
