/**
 * Stop strings over streamed text. A stop string can straddle token (and piece) boundaries, so text that could
 * still be the start of one is held back until the next piece decides. On a match the text before the stop string
 * is emitted and the stop string itself is not (OpenAI semantics).
 */

export interface StopResult {
  /** Text that is final: it can no longer be part of a stop string. */
  readonly emit: string
  /** A stop string completed; nothing after it is ever emitted. */
  readonly stopped: boolean
}

export class StopMatcher {
  private readonly stops: ReadonlyArray<string>
  private readonly longest: number
  private held = ""
  private done = false

  constructor(stops: ReadonlyArray<string>) {
    this.stops = [...new Set(stops.filter((s) => s.length > 0))]
    this.longest = this.stops.reduce((max, s) => Math.max(max, s.length), 0)
  }

  /** Whether a stop string has matched. */
  get stopped(): boolean {
    return this.done
  }

  push(piece: string): StopResult {
    if (this.done) return { emit: "", stopped: true }
    if (this.stops.length === 0) return { emit: piece, stopped: false }
    const text = this.held + piece
    // The held text contains no complete stop string (it would have matched earlier), so the earliest match
    // in `text` is the one that completed first.
    let at = -1
    for (const stop of this.stops) {
      const i = text.indexOf(stop)
      if (i !== -1 && (at === -1 || i < at)) at = i
    }
    if (at !== -1) {
      this.done = true
      this.held = ""
      return { emit: text.slice(0, at), stopped: true }
    }
    const keep = this.partialSuffixLength(text)
    this.held = text.slice(text.length - keep)
    return { emit: text.slice(0, text.length - keep), stopped: false }
  }

  /** The held-back text, at the end of the stream (empty once stopped). */
  flush(): string {
    const rest = this.done ? "" : this.held
    this.held = ""
    return rest
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
  private partialSuffixLength(text: string): number {
    for (let k = Math.min(text.length, this.longest - 1); k > 0; k--) {
      const suffix = text.slice(text.length - k)
      if (this.stops.some((s) => s.length > k && s.startsWith(suffix))) return k
    }
    return 0
  }
}
