/**
 * Where AIME session keys live: in this process (`localSessionStore` over Sessions.ts) or, with `--queue
 * redis://...`, in Redis (`redisSessionStore`), so that a session key issued by one replica works at every other.
 * Either way a session names the identity of the API key it was issued for (a hash, never the key itself), lives
 * for a sliding TTL and counts against a cap per key.
 *
 * @since 0.3.0
 */
import { Effect, Schema } from "effect"
import { randomUUID } from "node:crypto"
import type { QueueError, RedisConnection } from "../queue/RedisConnection.ts"
import type { SessionTable } from "./Sessions.ts"

export type Resolved = { readonly found: true; readonly apiKey: string | undefined } | { readonly found: false }

/** @category models */
export interface SessionStore {
  readonly issue: (identity: string | undefined, now: number) => Effect.Effect<string, QueueError>
  readonly resolve: (session: string, now: number) => Effect.Effect<Resolved, QueueError>
  readonly sweep: (now: number) => Effect.Effect<void>
}

/** @category constructors */
export const localSessionStore = (table: SessionTable): SessionStore => ({
  issue: (identity, now) => Effect.sync(() => table.issue(identity, now)),
  resolve: (session, now) => Effect.sync(() => table.resolve(session, now)),
  sweep: (now) => Effect.sync(() => table.sweep(now))
})

const Stored = Schema.fromJsonString(Schema.Struct({ k: Schema.NullOr(Schema.String) }))
const decode = Schema.decodeUnknownExit(Stored)

/**
 * Sessions in Redis: `sess:<id>` holds `{k: identity}` with a TTL renewed on every use; `sessk:<identity>` is a
 * sorted set of that identity's sessions by last use, trimmed to the cap at each login (oldest first).
 *
 * @category constructors
 */
export const redisSessionStore = (
  redis: RedisConnection["Service"],
  options: { readonly ttlMs: number; readonly maxPerKey: number; readonly prefix: string }
): SessionStore => {
  const sk = (id: string) => `${options.prefix}sess:${id}`
  const bucket = (identity: string | undefined) => `${options.prefix}sessk:${identity ?? ""}`
  const ttl = String(options.ttlMs)
  return {
    issue: (identity, now) =>
      Effect.gen(function*() {
        const id = randomUUID()
        const b = bucket(identity)
        yield* redis.command(["SET", sk(id), JSON.stringify({ k: identity ?? null }), "PX", ttl])
        yield* redis.command(["ZREMRANGEBYSCORE", b, "-inf", String(now - options.ttlMs)])
        yield* redis.command(["ZADD", b, String(now), id])
        yield* redis.command(["PEXPIRE", b, ttl])
        const count = Number(yield* redis.command(["ZCARD", b]))
        if (count > options.maxPerKey) {
          const dropped = yield* redis.command(["ZPOPMIN", b, String(count - options.maxPerKey)])
          const ids = Array.isArray(dropped) ? dropped.filter((_, i) => i % 2 === 0).map(String) : []
          if (ids.length > 0) yield* redis.command(["DEL", ...ids.map(sk)])
        }
        return id
      }),
    resolve: (session, now) =>
      Effect.gen(function*() {
        const raw = yield* redis.command(["GET", sk(session)])
        if (typeof raw !== "string") return { found: false } as const
        const d = decode(raw)
        if (d._tag === "Failure") return { found: false } as const
        const identity = d.value.k ?? undefined
        yield* redis.command(["PEXPIRE", sk(session), ttl])
        yield* redis.command(["ZADD", bucket(identity), "XX", String(now), session])
        return { found: true, apiKey: identity } as const
      }),
    // Redis expires the sessions itself.
    sweep: () => Effect.void
  }
}
