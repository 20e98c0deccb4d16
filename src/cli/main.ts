#!/usr/bin/env node
/**
 * The `chorus` command: serve, generate, chat, convert, worker, bench; `--version`, and `help` for any command or subcommand.
 * Each command declares its flags once; every error is one line on stderr with exit code 2 for bad input, 1 for a failure while running.
 */
import { Effect, Exit, References } from "effect"
import { type FlagSpecs, parseFlags, usage } from "./Args.ts"
import { benchCommand } from "./BenchCommand.ts"
import { chatFlags, runChat } from "./ChatCommand.ts"
import { report } from "./CliError.ts"
import { convertFlags, runConvert } from "./ConvertCommand.ts"
import { generateFlags, runGenerate } from "./GenerateCommand.ts"
import { runServe, serveFlags, serveNotes } from "./ServeCommand.ts"
import { runWorkerCommand, workerFlags } from "./WorkerCommand.ts"
import { packageVersion } from "./Version.ts"

/** What `--help` shows of a command or subcommand. */
interface CommandHelp {
  readonly synopsis: string
  readonly summary: string
  readonly flags: FlagSpecs
  /** Text after the flags (environment variables, precedence). */
  readonly notes?: string
  readonly subcommands?: ReadonlyMap<string, CommandHelp>
}

interface Command extends CommandHelp {
  readonly run: (argv: ReadonlyArray<string>) => Effect.Effect<void, unknown>
}

const command = <S extends FlagSpecs>(
  name: string,
  help: Omit<CommandHelp, "flags">,
  flags: S,
  run: (flags: ReturnType<typeof parseFlags<S>>) => Effect.Effect<void, unknown>
): [string, Command] => [name, {
  ...help,
  flags,
  run: (argv) => Effect.try({ try: () => parseFlags(name, argv, flags), catch: (e) => e }).pipe(Effect.flatMap(run))
}]

const commands = new Map<string, Command>([
  command("serve", { synopsis: "[--model DIR] [--host H] [--port P] [--api-key K]... [options]", summary: "serve the OpenAI and AIME APIs and the web chat", notes: serveNotes }, serveFlags, runServe),
  command("generate", { synopsis: "[--model DIR] (--prompt TEXT | --token-ids 1,2,3) [options]", summary: "generate a continuation" }, generateFlags, runGenerate),
  command("chat", { synopsis: "[--model DIR] [--system TEXT] [options]", summary: "chat in the terminal (or answer each line of a pipe)" }, chatFlags, runChat),
  command("convert", { synopsis: "--model DIR --out DIR [--dtype float32|float16] [--shards N]", summary: "convert a checkpoint to ONNX shards" }, convertFlags, runConvert),
  command("worker", { synopsis: "--api-server URL --worker-key KEY [--model DIR] [--device cuda:N] [--max-batch N] [--endpoint llama3_chat]", summary: "take jobs from a chorus serve --no-local-model (or AIME) server" }, workerFlags, runWorkerCommand),
  ["bench", benchCommand]
])

const topUsage = () =>
  `usage: chorus <command> [options]\n\n${[...commands].map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`).join("\n")}\n\n` +
  `Run 'chorus help <command>' or 'chorus <command> --help' for its options, 'chorus --version' for the version.\n` +
  `Without --model, Chorus uses its embedded small Llama 3 model.\n`

const commandUsage = (path: ReadonlyArray<string>, help: CommandHelp): string => {
  const subcommands = help.subcommands === undefined ? "" :
    `\nsubcommands (chorus help ${path.join(" ")} <subcommand>):\n${[...help.subcommands].map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`).join("\n")}\n`
  return usage(path.join(" "), help.synopsis, help.flags) + subcommands + (help.notes === undefined ? "" : `\n${help.notes}`)
}

/**
 * The help of `chorus <path...>` (`help bench compare`, or `bench compare --help`): a command's own subcommand
 * words are followed as far as they name one, so a nested command shows its own flags, not its parent's.
 */
const printHelp = (path: ReadonlyArray<string>, strict: boolean): number => {
  const [name, ...rest] = path
  const cmd = name === undefined ? undefined : commands.get(name)
  if (name === undefined || cmd === undefined) {
    process.stderr.write(`chorus: unknown command '${name}' (commands: ${[...commands.keys()].join(", ")})\n`)
    return 2
  }
  let help: CommandHelp = cmd
  const found = [name]
  for (const word of rest) {
    const sub = help.subcommands?.get(word)
    if (sub === undefined) {
      if (!strict) break
      const known = help.subcommands === undefined ? "it has none" : `subcommands: ${[...help.subcommands.keys()].join(", ")}`
      process.stderr.write(`chorus: 'chorus ${found.join(" ")}' has no subcommand '${word}' (${known})\n`)
      return 2
    }
    help = sub
    found.push(word)
  }
  process.stdout.write(commandUsage(found, help))
  return 0
}

const isHelpFlag = (arg: string) => arg === "--help" || arg === "-h"

const main = async (argv: ReadonlyArray<string>): Promise<number> => {
  const [name, ...rest] = argv
  if (name === "--version" || name === "-v") {
    process.stdout.write(`chorus ${packageVersion()}\n`)
    return 0
  }
  if (name === undefined || isHelpFlag(name) || (name === "help" && rest.length === 0)) {
    process.stdout.write(topUsage())
    return name === undefined ? 2 : 0
  }
  if (name === "help") return printHelp(rest, true)
  const cmd = commands.get(name)
  if (cmd === undefined) {
    process.stderr.write(`chorus: unknown command '${name}' (commands: ${[...commands.keys()].join(", ")})\n`)
    return 2
  }
  if (rest.some(isHelpFlag)) return printHelp([name, ...rest.filter((a) => !isHelpFlag(a))], false)
  // The terminal commands print their results, not the engine's start-up log; `serve` sets its own logger and level.
  const exit = await Effect.runPromiseExit(cmd.run(rest).pipe(Effect.provideService(References.MinimumLogLevel, "Warn")))
  return Exit.isSuccess(exit) ? 0 : report(exit.cause)
}

process.exitCode = await main(process.argv.slice(2))
