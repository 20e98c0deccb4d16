/**
 * Connections to the Redis that holds the shared queue (`--queue redis://HOST:PORT`): one for commands and Lua
 * scripts, one for blocking stream reads (`XREAD BLOCK`, which holds its connection while it waits) and one for
 * pub/sub (a subscribed connection takes no other command). All three are opened in the layer's scope and closed
 * with it; the client reconnects by itself, and a command that fails while Redis is away fails with `QueueError`.
 *
 * @since 0.3.0
 */
import { Context, Effect, Layer, Schema } from "effect"
import { createHash } from "node:crypto"
import { createClient } from "redis"

/** Redis is unreachable or answered with an error. */
export class QueueError extends Schema.TaggedError<QueueError>()("QueueError", { message: Schema.String }) {
  readonly errorType = "queue_unavailable"
}

/** A Lua script, sent once per connection by its SHA1 (EVALSHA), in full only when Redis does not know it yet. */
export interface LuaScript {
  readonly source: string
  readonly sha: string
}

export const luaScript = (source: string): LuaScript => ({ source, sha: createHash("sha1").update(source).digest("hex") })

/** A reply as RESP2 gives it: strings, integers, null and arrays of those. */
export type RedisReply = string | number | null | ReadonlyArray<RedisReply>

/**
 * @category services
 */
export class RedisConnection extends Context.Service<RedisConnection, {
  readonly url: string
  readonly command: (args: ReadonlyArray<string>) => Effect.Effect<RedisReply, QueueError>
  readonly script: (script: LuaScript, keys: ReadonlyArray<string>, args: ReadonlyArray<string>) => Effect.Effect<RedisReply, QueueError>
  /** A blocking command on the dedicated blocking connection (one at a time: callers serialize). */
  readonly blocking: (args: ReadonlyArray<string>) => Effect.Effect<RedisReply, QueueError>
  /** Calls `onMessage` for every message on `channel` (until the layer closes). */
  readonly subscribe: (channel: string, onMessage: (message: string) => void) => Effect.Effect<void, QueueError>
}>()("chorus/http/queue/RedisConnection") {
  /** Connects (failing with QueueError when Redis cannot be reached within 5 s); closes on scope end. */
  static readonly layer = (url: string): Layer.Layer<RedisConnection, QueueError> =>
    Layer.effect(RedisConnection, make(url))
}

/** A URL without its password, for logs and errors. */
export const redactUrl = (url: string): string => {
  if (!URL.canParse(url)) return url
  const u = new URL(url)
  if (u.password !== "") u.password = "***"
  return u.toString()
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e))

const make = (url: string) =>
  Effect.gen(function*() {
    // A blocked XREAD would hold a graceful close for its whole block time: that connection is cut instead.
    const open = (role: string, graceful = true) =>
      Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            // While Redis is away a command fails at once (a 503 for clients, a retry for workers) instead of
            // waiting in an offline queue; the client reconnects in the background.
            const client = createClient({
              url,
              RESP: 2,
              disableOfflineQueue: true,
              socket: { connectTimeout: 5000, reconnectStrategy: (retries) => Math.min(50 * 2 ** retries, 2000) }
            })
            // Without a listener an 'error' event would end the process; the failed command reports the error.
            client.on("error", () => {})
            const first = client.connect()
            const limit = new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no answer within 5 s")), 5000).unref())
            await Promise.race([first, limit]).catch(async (e: unknown) => {
              client.destroy()
              throw e
            })
            return client
          },
          catch: (e) => new QueueError({ message: `cannot connect to the queue ${redactUrl(url)} (${role} connection): ${message(e)}` })
        }),
        (client) => (graceful ? Effect.promise(() => client.close().catch(() => client.destroy())) : Effect.sync(() => client.destroy()))
      )
    const main = yield* open("command")
    const blocker = yield* open("blocking", false)
    const subscriber = yield* open("pub/sub")
    const run = (client: typeof main, args: ReadonlyArray<string>) =>
      Effect.tryPromise({
        try: () => client.sendCommand<RedisReply>(args),
        catch: (e) => new QueueError({ message: `the queue (Redis) failed: ${message(e)}` })
      })
    return RedisConnection.of({
      url,
      command: (args) => run(main, args),
      script: (script, keys, args) =>
        run(main, ["EVALSHA", script.sha, String(keys.length), ...keys, ...args]).pipe(
          Effect.catchTag("QueueError", (e) =>
            e.message.includes("NOSCRIPT") ? run(main, ["EVAL", script.source, String(keys.length), ...keys, ...args]) : Effect.fail(e)
          )
        ),
      blocking: (args) => run(blocker, args),
      subscribe: (channel, onMessage) =>
        Effect.tryPromise({
          try: () => subscriber.subscribe(channel, (m) => onMessage(String(m))),
          catch: (e) => new QueueError({ message: `the queue (Redis) failed: ${message(e)}` })
        })
    })
  })
