/**
 * A worker's progress reports, batched: one `/worker_job_progress` POST (a JSON array, as AIME's worker library
 * sends it) carries every running job that has tokens the server has not acknowledged yet, instead of one POST per
 * job. A job asks for a report when its throttle allows (every N tokens or M ms since its last report); the report
 * goes out on the next turn of the event loop, so the tokens that one engine step gave all of the batch's jobs
 * travel together, and at most one report is in flight per worker. Measured with `npm run bench:workers`: with
 * one POST per job, 64 jobs on 4 workers made 640 progress POSTs a second to the API server, whose per-request cost
 * (and the workers') slowed every step on a 2-core machine.
 */

type Obj = Record<string, unknown>

/** What the report of one job needs; the job's runner owns it and appends tokens as they come. */
export interface ProgressJob {
  readonly id: string
  readonly ids: Array<number>
  readonly texts: Array<string>
  /** The text so far (AIME servers show `progress_data.text`). */
  text: string
  promptTokens: number
  /** Tokens the server has acknowledged: the next report starts there (the server drops what it has twice). */
  acked: number
  /** When this job was last included in a report (performance.now()); 0: never. */
  lastSent: number
  /** The server said the job was canceled (its client went away, or it is no longer this worker's). */
  readonly onCanceled: () => void
}

export interface ProgressSender {
  readonly add: (job: ProgressJob) => void
  /** The job ended: no more reports for it (its result carries what is left). */
  readonly remove: (job: ProgressJob) => void
  /** Called after each token: asks for a report when the job's throttle allows one. */
  readonly tokenArrived: (job: ProgressJob) => void
}

export interface ProgressSenderOptions {
  readonly post: (body: unknown) => Promise<{ readonly status: number; readonly body: unknown }>
  /** `auth`, `auth_key`, `job_type`: sent in every item, as the protocol wants them per job. */
  readonly identity: Obj
  readonly every: { readonly tokens: number; readonly ms: number }
}

const isObj = (x: unknown): x is Obj => x !== null && typeof x === "object" && !Array.isArray(x)

export const makeProgressSender = (options: ProgressSenderOptions): ProgressSender => {
  const jobs = new Set<ProgressJob>()
  let wanted = false
  let scheduled = false
  let inFlight = false

  const schedule = () => {
    if (inFlight || scheduled) return
    scheduled = true
    setImmediate(flush)
  }

  const flush = () => {
    scheduled = false
    if (!wanted) return
    wanted = false
    const now = performance.now()
    const sent = [...jobs].filter((j) => j.ids.length > j.acked).map((job) => ({ job, from: job.acked, to: job.ids.length }))
    if (sent.length === 0) return
    const body = sent.map(({ job, from, to }) => {
      job.lastSent = now
      return {
        ...options.identity,
        job_id: job.id,
        progress: to,
        progress_data: {
          text: job.text,
          num_generated_tokens: to,
          current_context_length: job.promptTokens + to,
          chorus_prompt_tokens: job.promptTokens,
          chorus_tokens: { from, ids: job.ids.slice(from, to), texts: job.texts.slice(from, to) }
        }
      }
    })
    inFlight = true
    options.post(body)
      .then((r) => {
        // A Chorus server answers an array item for item; a server that answers one object answers for all.
        const items = Array.isArray(r.body) ? r.body : sent.map(() => r.body)
        sent.forEach(({ job, to }, i) => {
          const item = items[i]
          if (!isObj(item)) return
          if (item["canceled"] === true) job.onCanceled()
          else if (item["success"] === true || (r.status === 200 && item["success"] === undefined)) job.acked = Math.max(job.acked, to)
        })
      })
      .catch(() => {
        // The server is away: the next report resends from the last acknowledged token.
      })
      .finally(() => {
        inFlight = false
        if (wanted) schedule()
      })
  }

  return {
    add: (job) => void jobs.add(job),
    remove: (job) => void jobs.delete(job),
    tokenArrived: (job) => {
      // A job's first token is reported at once (the client's time to first token), whatever the throttle says.
      const due = job.lastSent === 0 || job.ids.length - job.acked >= options.every.tokens ||
        performance.now() - job.lastSent >= options.every.ms
      if (due) {
        wanted = true
        schedule()
      }
    }
  }
}
