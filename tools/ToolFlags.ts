/**
 * Flags of the scripts under tools/: the commands' declarative parser (src/cli/Args.ts) plus `--help`, and a mistake
 * is one line naming the flag, exit code 2, as for the `chorus` commands (no stack trace).
 */
import { type FlagSpecs, type ParsedFlags, parseFlags, usage } from "../src/cli/Args.ts"

const help = { help: { kind: "boolean", description: "print this help" } } as const

/** How a script names itself: `name` starts its error lines, `run` is the command line that starts it. */
export interface ToolName {
  readonly name: string
  readonly run: string
}

/** A one-line error from the script, exit code 2. */
export const toolFail = (tool: ToolName) => (message: string): never => {
  process.stderr.write(`${tool.name}: ${message}\n`)
  process.exit(2)
}

/** Parses `process.argv` for the script; prints the usage and exits on `--help`. */
export const parseToolFlags = <S extends FlagSpecs>(tool: ToolName, synopsis: string, specs: S): ParsedFlags<S & typeof help> => {
  const all = { ...specs, ...help }
  let flags: ParsedFlags<S & typeof help>
  try {
    flags = parseFlags(tool.name, process.argv.slice(2), all) as ParsedFlags<S & typeof help>
  } catch (e) {
    return toolFail(tool)((e instanceof Error ? e.message : String(e)).replaceAll(`chorus ${tool.name}`, tool.run))
  }
  if (flags.help === true) {
    process.stdout.write(usage(tool.name, synopsis, all).replace(`chorus ${tool.name}`, tool.run))
    process.exit(0)
  }
  return flags
}

/** A script directly under tools/: named by its file, started with `node tools/<file>`. */
export const toolScript = (file: string): ToolName => ({ name: file, run: `node tools/${file}` })
