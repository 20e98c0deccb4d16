#!/usr/bin/env node
/**
 * The `chorus` command: serve, generate, chat, convert, bench. Each command declares its
 * flags once; every error is one line on stderr with exit code 2 for bad input, 1 for a failure while running.
 */
import { Effect, Exit } from "effect"
import { type FlagSpecs, parseFlags, usage } from "./Args.ts"
import { benchCommand } from "./BenchCommand.ts"
import { chatFlags, runChat } from "./ChatCommand.ts"
import { report } from "./CliError.ts"
import { convertFlags, runConvert } from "./ConvertCommand.ts"
import { generateFlags, runGenerate } from "./GenerateCommand.ts"
import { runServe, serveFlags } from "./ServeCommand.ts"

interface Command {
  readonly synopsis: string
  readonly summary: string
  readonly flags: FlagSpecs
  readonly run: (argv: ReadonlyArray<string>) => Effect.Effect<void, unknown>
}

const command = <S extends FlagSpecs>(
  name: string,
  synopsis: string,
  summary: string,
  flags: S,
  run: (flags: ReturnType<typeof parseFlags<S>>) => Effect.Effect<void, unknown>
): [string, Command] => [name, {
  synopsis,
  summary,
  flags,
  run: (argv) => Effect.try({ try: () => parseFlags(name, argv, flags), catch: (e) => e }).pipe(Effect.flatMap(run))
}]

const commands = new Map<string, Command>([
  command("serve", "[--model DIR] [--host H] [--port P] [--api-key K]... [options]", "serve the OpenAI and AIME APIs and the web chat", serveFlags, runServe),
  command("generate", "[--model DIR] (--prompt TEXT | --token-ids 1,2,3) [options]", "generate a continuation", generateFlags, runGenerate),
  command("chat", "[--model DIR] [--system TEXT] [options]", "chat in the terminal", chatFlags, runChat),
  command("convert", "--model DIR --out DIR [--dtype float32|float16] [--shards N]", "convert a checkpoint to ONNX shards", convertFlags, runConvert),
  ["bench", benchCommand]
])

const topUsage = () =>
  `usage: chorus <command> [options]\n\n${[...commands].map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`).join("\n")}\n\n` +
  `Run 'chorus <command> --help' for its options. Without --model, Chorus uses its embedded small Llama 3 model.\n`

const main = async (argv: ReadonlyArray<string>): Promise<number> => {
  const [name, ...rest] = argv
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(topUsage())
    return name === undefined ? 2 : 0
  }
  const cmd = commands.get(name)
  if (cmd === undefined) {
    process.stderr.write(`chorus: unknown command '${name}' (commands: ${[...commands.keys()].join(", ")})\n`)
    return 2
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    process.stdout.write(usage(name, cmd.synopsis, cmd.flags))
    return 0
  }
  const exit = await Effect.runPromiseExit(cmd.run(rest))
  return Exit.isSuccess(exit) ? 0 : report(exit.cause)
}

process.exitCode = await main(process.argv.slice(2))
