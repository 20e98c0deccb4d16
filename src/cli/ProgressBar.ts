/**
 * A one-line terminal progress bar for long jobs (checkpoint conversion). It draws on stderr only when stderr is
 * a TTY, so logs and pipes stay clean, and redraws at most every 100 ms.
 */
import type { WriteStream } from "node:tty"

export interface ProgressUpdate {
  readonly bytesDone: number
  readonly bytesTotal: number
  /** What is being processed now (a tensor name); shown truncated. */
  readonly tensor?: string
}

const formatBytes = (n: number): string => {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(0)} KiB`
  return `${n} B`
}

/** Text of the bar for a given width (exported for tests and non-TTY callers that want one final line). */
export const renderProgress = (label: string, u: ProgressUpdate, columns = 80): string => {
  const ratio = u.bytesTotal > 0 ? Math.min(1, u.bytesDone / u.bytesTotal) : 1
  const stats = ` ${(ratio * 100).toFixed(0).padStart(3)}% ${formatBytes(u.bytesDone)}/${formatBytes(u.bytesTotal)}`
  const width = Math.max(10, Math.min(30, columns - label.length - stats.length - 30))
  const filled = Math.round(ratio * width)
  const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`
  let line = `${label} ${bar}${stats}`
  const room = columns - line.length - 2
  if (u.tensor !== undefined && room > 8) line += ` ${u.tensor.length > room ? `…${u.tensor.slice(-(room - 1))}` : u.tensor}`
  return line
}

export class ProgressBar {
  private lastDraw = 0
  private drawn = false
  private readonly stream: NodeJS.WriteStream
  private readonly label: string

  constructor(label: string, stream: NodeJS.WriteStream = process.stderr) {
    this.label = label
    this.stream = stream
  }

  private get enabled(): boolean {
    return this.stream.isTTY === true
  }

  /** Redraws the bar (throttled); the final update (done = total) always draws. */
  update(u: ProgressUpdate): void {
    if (!this.enabled) return
    const now = Date.now()
    if (now - this.lastDraw < 100 && u.bytesDone < u.bytesTotal) return
    this.lastDraw = now
    const columns = (this.stream as WriteStream).columns ?? 80
    this.stream.write(`\r\x1b[2K${renderProgress(this.label, u, columns)}`)
    this.drawn = true
  }

  /** Ends the bar's line so that later output starts on a fresh one. */
  done(): void {
    if (this.enabled && this.drawn) this.stream.write("\n")
    this.drawn = false
  }
}
