/**
 * A job's events as they travel through Redis (one stream per job, `ev:<id>`), their Schema, and the fan-out that
 * brings them to whichever replica holds the client's connection: one loop per replica reads every stream its
 * clients watch with a single `XREAD BLOCK` on its own connection. A new watch wakes the loop through a
 * per-replica wake stream, so it joins the read at once. A watch starts from any entry id ("0": from the start),
 * so a replica that watches late (a client that asks a second replica) still sees every event, in order.
 *
 * @since 0.3.0
 */
import { Effect, Schema, type Scope } from "effect"
import { randomUUID } from "node:crypto"
import { type QueueError, RedisConnection, type RedisReply } from "./RedisConnection.ts"

export const JobEvent = Schema.Union([
  Schema.Struct({ t: Schema.Literal("a") }),
  Schema.Struct({ t: Schema.Literal("q") }),
  Schema.Struct({ t: Schema.Literal("c") }),
  Schema.Struct({ t: Schema.Literal("s"), pt: Schema.Number }),
  Schema.Struct({ t: Schema.Literal("k"), i: Schema.Array(Schema.Number), x: Schema.Array(Schema.String) }),
  Schema.Struct({ t: Schema.Literal("f"), fr: Schema.Literals(["stop", "length"]), sr: Schema.Literals(["eos", "stop_string", "max_tokens", "context"]), pt: Schema.Number, ct: Schema.Number, x: Schema.String }),
  Schema.Struct({ t: Schema.Literal("x"), k: Schema.Literals(["gen", "deadline"]), m: Schema.optional(Schema.String), waiting: Schema.optional(Schema.Number) })
])
export type JobEvent = typeof JobEvent.Type

/** Whether the event ends the job. */
export const isEnd = (e: JobEvent): boolean => e.t === "f" || e.t === "x" || e.t === "c"

const decodeEvent = Schema.decodeUnknownExit(Schema.fromJsonString(JobEvent))

/** XREAD's answer: per stream, its new entries (id, [field, value, ...]). */
const XReadReply = Schema.NullOr(Schema.Array(Schema.Tuple([Schema.String, Schema.Array(Schema.Tuple([Schema.String, Schema.Array(Schema.String)]))])))
const decodeXRead = Schema.decodeUnknownExit(XReadReply)

/** @category models */
export interface JobEventFanout {
  /**
   * Calls `onEvent` with every event of the job from its start, in order, until `onEvent` returns false or the
   * returned effect's scope closes.
   */
  readonly watch: (jobStream: string, onEvent: (e: JobEvent) => boolean) => Effect.Effect<void, QueueError, Scope.Scope>
}

interface Watch {
  last: string
  readonly onEvent: (e: JobEvent) => boolean
}

/** Whether stream entry id `a` comes before `b` (ids are `<ms>-<seq>`). */
const before = (a: string, b: string) => {
  const [am = 0, as = 0] = a.split("-").map(Number)
  const [bm = 0, bs = 0] = b.split("-").map(Number)
  return am < bm || (am === bm && as < bs)
}

/** Starts the replica's read loop (in the caller's scope). */
export const makeJobEventFanout = (prefix: string): Effect.Effect<JobEventFanout, never, RedisConnection | Scope.Scope> =>
  Effect.gen(function*() {
    const redis = yield* RedisConnection
    const wake = `${prefix}rwake:${randomUUID()}`
    // Several watches of one stream (two clients of one job on this replica) read from the earliest of them.
    const watches = new Map<string, Set<Watch>>()
    const from = (key: string) => [...(watches.get(key) ?? [])].reduce((min, w) => (before(w.last, min) ? w.last : min), "9999999999999999-0")
    let failing = false
    const loop = Effect.gen(function*() {
      const keys = [...watches.keys()]
      const reply: RedisReply = yield* redis.blocking(["XREAD", "COUNT", "512", "BLOCK", "2000", "STREAMS", wake, ...keys, "$", ...keys.map(from)])
      const decoded = decodeXRead(reply)
      if (decoded._tag === "Failure") return yield* Effect.logWarning(`chorus: unexpected XREAD reply from the queue: ${JSON.stringify(reply).slice(0, 200)}`)
      for (const [key, entries] of decoded.value ?? []) {
        const set = watches.get(key)
        if (set === undefined) continue
        for (const [id, fields] of entries) {
          const e = decodeEvent(fields[1])
          for (const w of set) {
            if (!before(w.last, id)) continue
            w.last = id
            if (e._tag === "Success" && !w.onEvent(e.value)) set.delete(w)
          }
        }
        if (set.size === 0) watches.delete(key)
      }
    }).pipe(
      Effect.tap(() => Effect.sync(() => (failing = false))),
      // One line per outage, not one per retry.
      Effect.catchTag("QueueError", (e) =>
        (failing ? Effect.void : Effect.logWarning(`chorus: ${e.message}; retrying`)).pipe(
          Effect.tap(() => Effect.sync(() => (failing = true))),
          Effect.andThen(Effect.sleep("200 millis"))
        )
      )
    )
    yield* Effect.forkScoped(Effect.forever(loop))
    yield* Effect.addFinalizer(() => redis.command(["DEL", wake]).pipe(Effect.ignore))
    return {
      watch: (jobStream, onEvent) =>
        Effect.gen(function*() {
          const w: Watch = { last: "0-0", onEvent }
          yield* Effect.addFinalizer(() =>
            Effect.sync(() => {
              const set = watches.get(jobStream)
              set?.delete(w)
              if (set?.size === 0) watches.delete(jobStream)
            })
          )
          const set = watches.get(jobStream) ?? new Set<Watch>()
          set.add(w)
          watches.set(jobStream, set)
          yield* redis.command(["XADD", wake, "MAXLEN", "~", "16", "*", "w", "1"])
        })
    }
  })
