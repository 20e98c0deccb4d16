/**
 * Where `chorus serve` finds settings besides its flags, for containers and process managers: `CHORUS_HOST`,
 * `CHORUS_PORT`, `CHORUS_API_KEYS` (comma-separated) and `--api-key-file` (one key per line), so that keys stay out
 * of `ps` and shell history. A value that is set but unusable is a ValidationError naming the variable (exit 2),
 * never a silent default: an empty `CHORUS_API_KEYS` would otherwise leave the API open.
 */
import { Effect } from "effect"
import * as fs from "node:fs"
import { ValidationError } from "../core/Errors.ts"

export interface EnvironmentSettings {
  readonly host?: string
  readonly port?: number
  readonly apiKeys?: ReadonlyArray<string>
}

const bad = (field: string, message: string) => Effect.fail(new ValidationError({ field, message }))

/** A key that could never match an `Authorization: Bearer` header is a mistake in the list, not a key. */
const checkKey = (field: string, where: string, key: string) =>
  /\s/.test(key) ? bad(field, `${field}: the key ${where} contains whitespace`) : Effect.succeed(key)

/** The settings the environment gives; unset variables give nothing. */
export const fromEnvironment = (env: Readonly<Record<string, string | undefined>>) =>
  Effect.gen(function*() {
    const out: { host?: string; port?: number; apiKeys?: ReadonlyArray<string> } = {}
    const host = env.CHORUS_HOST
    if (host !== undefined) {
      if (host.trim() === "") return yield* bad("CHORUS_HOST", "CHORUS_HOST is set but empty (unset it for the default 127.0.0.1)")
      out.host = host.trim()
    }
    const port = env.CHORUS_PORT
    if (port !== undefined) {
      const value = Number(port)
      if (port.trim() === "" || !Number.isInteger(value) || value < 0 || value > 65535) {
        return yield* bad("CHORUS_PORT", `CHORUS_PORT must be an integer from 0 to 65535, got '${port}'`)
      }
      out.port = value
    }
    const keys = env.CHORUS_API_KEYS
    if (keys !== undefined) {
      if (keys.trim() === "") {
        return yield* bad("CHORUS_API_KEYS", "CHORUS_API_KEYS is set but empty (unset it to run without API keys)")
      }
      const entries = keys.split(",").map((k) => k.trim())
      const empty = entries.indexOf("")
      if (empty !== -1) return yield* bad("CHORUS_API_KEYS", `CHORUS_API_KEYS: entry ${empty + 1} of ${entries.length} is empty (keys are comma-separated)`)
      out.apiKeys = yield* Effect.forEach(entries, (k, i) => checkKey("CHORUS_API_KEYS", `in entry ${i + 1}`, k))
    }
    return out satisfies EnvironmentSettings
  })

/** The keys of an `--api-key-file`: one per line; blank lines and lines starting with `#` are ignored. */
export const readApiKeyFile = (file: string) =>
  Effect.gen(function*() {
    const text = yield* Effect.try({
      try: () => fs.readFileSync(file, "utf8"),
      catch: (e) =>
        new ValidationError({ field: "--api-key-file", message: `--api-key-file: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? String(e)})` })
    })
    const keys: Array<string> = []
    for (const [i, raw] of text.split(/\r?\n/).entries()) {
      const line = raw.trim()
      if (line === "" || line.startsWith("#")) continue
      keys.push(yield* checkKey("--api-key-file", `on line ${i + 1} of ${file}`, line))
    }
    if (keys.length === 0) return yield* bad("--api-key-file", `--api-key-file: ${file} has no keys (one per line; blank and # lines are ignored)`)
    return keys
  })
