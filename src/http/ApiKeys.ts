/**
 * API keys at the edge: the strict `Authorization: Bearer <key>` form, and a key check whose time does not depend
 * on which configured key (if any) a candidate matches or how much of one it shares.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import { Unauthorized } from "./ServerErrors.ts"

const digest = (key: string): Buffer => createHash("sha256").update(key, "utf8").digest()

/**
 * A matcher over `keys`. Both sides are hashed first, so every comparison is over 32 bytes whatever the key
 * lengths, and every configured key is compared (no early exit on the first match).
 *
 * @category constructors
 */
export const makeKeyMatcher = (keys: Iterable<string>): (candidate: string) => boolean => {
  const digests = [...new Set(keys)].map(digest)
  return (candidate) => {
    const given = digest(candidate)
    let found = false
    for (const d of digests) found = timingSafeEqual(d, given) || found
    return found
  }
}

const BEARER = /^bearer +(\S+) *$/i

/**
 * The key of an `Authorization` header: none when the header is absent; the header must read `Bearer <key>`
 * (RFC 6750; the scheme name is case-insensitive), anything else is refused rather than guessed at.
 *
 * @category parsing
 */
export const bearerKey = (header: string | undefined): Effect.Effect<string | undefined, Unauthorized> => {
  if (header === undefined) return Effect.succeed(undefined)
  const match = BEARER.exec(header)
  return match === null
    ? Effect.fail(new Unauthorized({ message: "the Authorization header must have the form 'Bearer <API key>'" }))
    : Effect.succeed(match[1])
}
