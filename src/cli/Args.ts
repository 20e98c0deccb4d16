/**
 * Command-line flags: a small declarative parser so every command states its flags once and every mistake is one
 * line naming the flag (`--top-p must be greater than 0 and at most 1, got 1.5`), exit code 2.
 */
import { ValidationError } from "../core/Errors.ts"

export type FlagKind = "string" | "number" | "integer" | "boolean" | "list"

export interface FlagSpec {
  readonly kind: FlagKind
  readonly description: string
  /** Repeatable string flags collect every value. */
  readonly repeatable?: boolean
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>

export type ParsedFlags<S extends FlagSpecs> = {
  readonly [K in keyof S]?: S[K]["kind"] extends "boolean" ? boolean
    : S[K]["kind"] extends "number" | "integer" ? number
    : S[K]["kind"] extends "list" ? ReadonlyArray<number>
    : S[K]["repeatable"] extends true ? ReadonlyArray<string>
    : string
}

const fail = (field: string, message: string): never => {
  throw new ValidationError({ field, message })
}

const parseNumber = (flag: string, raw: string, integer: boolean): number => {
  const value = Number(raw)
  if (raw.trim() === "" || !Number.isFinite(value)) fail(flag, `${flag} expects a number, got '${raw}'`)
  if (integer && !Number.isInteger(value)) fail(flag, `${flag} expects an integer, got '${raw}'`)
  return value
}

/** Parses `argv` (after the command name) against `specs`; throws ValidationError on the first mistake. */
export const parseFlags = <S extends FlagSpecs>(command: string, argv: ReadonlyArray<string>, specs: S): ParsedFlags<S> => {
  const out: Record<string, unknown> = {}
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith("--")) fail(arg, `unexpected argument '${arg}' for 'chorus ${command}' (see chorus ${command} --help)`)
    const eq = arg.indexOf("=")
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq)
    const spec = specs[name]
    const flag = `--${name}`
    if (spec === undefined) fail(flag, `unknown option ${flag} for 'chorus ${command}' (see chorus ${command} --help)`)
    if (spec!.kind === "boolean") {
      if (eq !== -1) fail(flag, `${flag} takes no value`)
      out[name] = true
      continue
    }
    const raw = eq === -1 ? argv[++i] : arg.slice(eq + 1)
    if (raw === undefined) fail(flag, `${flag} needs a value`)
    const value = raw!
    switch (spec!.kind) {
      case "number":
      case "integer":
        out[name] = parseNumber(flag, value, spec!.kind === "integer")
        break
      case "list":
        out[name] = value.split(",").map((v) => parseNumber(flag, v, true))
        break
      default:
        if (spec!.repeatable === true) out[name] = [...((out[name] as Array<string> | undefined) ?? []), value]
        else out[name] = value
    }
  }
  return out as ParsedFlags<S>
}

/** The `--help` text of a command. */
export const usage = (command: string, synopsis: string, specs: FlagSpecs): string => {
  const width = Math.max(...Object.keys(specs).map((k) => k.length)) + 4
  const lines = Object.entries(specs).map(([name, spec]) => {
    const value = spec.kind === "boolean" ? "" : spec.kind === "list" ? " A,B,C" : spec.kind === "string" ? " VALUE" : " N"
    return `  --${(name + value).padEnd(width + 6)} ${spec.description}`
  })
  return `usage: chorus ${command} ${synopsis}\n\n${lines.join("\n")}\n`
}
