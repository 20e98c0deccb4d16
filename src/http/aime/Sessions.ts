/**
 * AIME session keys (`/<ep>/login` -> `client_session_auth_key`): each names the API key it was issued for, lives
 * for a sliding TTL (every use renews it) and counts against a cap per API key. The cap is per key so that one
 * tenant logging in without end evicts only its own oldest sessions, never another tenant's.
 *
 * @since 0.1.0
 */
import { randomUUID } from "node:crypto"

/** @category models */
export interface SessionTableOptions {
  /** Idle time after which a session key stops working. */
  readonly ttlMs: number
  /** Live sessions per API key; a login beyond it drops that key's least recently used session. */
  readonly maxPerKey: number
}

/** @category models */
export interface SessionTable {
  /** A new session key for `apiKey` (undefined: an open server's keyless login). */
  readonly issue: (apiKey: string | undefined, now: number) => string
  /** The session's API key, renewing its TTL; `{ found: false }` for an unknown or expired session. */
  readonly resolve: (session: string, now: number) => { readonly found: true; readonly apiKey: string | undefined } | { readonly found: false }
  /** Forgets every expired session (the table also drops them lazily on use). */
  readonly sweep: (now: number) => void
  /** Live sessions in all, and of one API key. */
  readonly size: () => number
  readonly sizeOf: (apiKey: string | undefined) => number
}

interface Session {
  readonly apiKey: string | undefined
  lastUsed: number
}

/**
 * An in-memory session table. Per key, a Map in least-recently-used order (a renewed session is re-inserted at the
 * end), so eviction and renewal are O(1).
 *
 * @category constructors
 */
export const makeSessionTable = (options: SessionTableOptions): SessionTable => {
  const sessions = new Map<string, Session>()
  // The keyless bucket of an open server needs a name that no API key can have.
  const keyless = Symbol("keyless")
  const byKey = new Map<string | symbol, Map<string, Session>>()
  const bucketOf = (apiKey: string | undefined) => apiKey ?? keyless

  const forget = (id: string, session: Session) => {
    sessions.delete(id)
    const bucket = byKey.get(bucketOf(session.apiKey))
    bucket?.delete(id)
    if (bucket?.size === 0) byKey.delete(bucketOf(session.apiKey))
  }
  const expired = (session: Session, now: number) => now - session.lastUsed >= options.ttlMs

  return {
    issue: (apiKey, now) => {
      const name = bucketOf(apiKey)
      let bucket = byKey.get(name)
      if (bucket === undefined) byKey.set(name, (bucket = new Map()))
      while (bucket.size >= options.maxPerKey) {
        const oldest = bucket.keys().next().value!
        bucket.delete(oldest)
        sessions.delete(oldest)
      }
      const id = randomUUID()
      const session: Session = { apiKey, lastUsed: now }
      sessions.set(id, session)
      bucket.set(id, session)
      return id
    },
    resolve: (id, now) => {
      const session = sessions.get(id)
      if (session === undefined) return { found: false }
      if (expired(session, now)) {
        forget(id, session)
        return { found: false }
      }
      session.lastUsed = now
      const bucket = byKey.get(bucketOf(session.apiKey))!
      bucket.delete(id)
      bucket.set(id, session)
      return { found: true, apiKey: session.apiKey }
    },
    sweep: (now) => {
      for (const [id, session] of sessions) if (expired(session, now)) forget(id, session)
    },
    size: () => sessions.size,
    sizeOf: (apiKey) => byKey.get(bucketOf(apiKey))?.size ?? 0
  }
}
