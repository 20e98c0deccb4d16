/**
 * Flags of the scripts under tools/: the commands' declarative parser (src/cli/Args.ts) plus `--help`, and a mistake
 * is one line naming the flag, exit code 2, as for the `chorus` commands (no stack trace).
 */
import { type FlagSpecs, type ParsedFlags, parseFlags, usage } from "../src/cli/Args.ts"

const help = { help: { kind: "boolean", description: "print this help" } } as const

/** Parses `process.argv` for the script `tools/<script>`; prints the usage and exits on `--help`. */
export const parseToolFlags = <S extends FlagSpecs>(script: string, synopsis: string, specs: S): ParsedFlags<S & typeof help> => {
  const all = { ...specs, ...help }
  const run = `node tools/${script}`
  let flags: ParsedFlags<S & typeof help>
  try {
    flags = parseFlags(script, process.argv.slice(2), all) as ParsedFlags<S & typeof help>
  } catch (e) {
    const message = (e instanceof Error ? e.message : String(e)).replaceAll(`chorus ${script}`, run)
    process.stderr.write(`${script}: ${message}\n`)
    process.exit(2)
  }
  if (flags.help === true) {
    process.stdout.write(usage(script, synopsis, all).replace(`chorus ${script}`, run))
    process.exit(0)
  }
  return flags
}
