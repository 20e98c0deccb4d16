/**
 * The CLI's one mapping from errors to what a user sees: one line on stderr and an exit code. Bad input of any kind
 * (flags, paths, checkpoints, prompts) exits 2; a failure while generating exits 1. `CHORUS_DEBUG=1` adds details.
 */
import { Cause } from "effect"

const BAD_INPUT = new Set([
  "ValidationError",
  "CheckpointError",
  "ModelConfigError",
  "ContextLengthError",
  "ConversionError"
])

export interface CliFailure {
  readonly line: string
  readonly exitCode: number
}

const describe = (error: unknown): CliFailure => {
  if (typeof error === "object" && error !== null && "_tag" in error && "message" in error) {
    const tag = String((error as { _tag: unknown })._tag)
    return { line: String((error as { message: unknown }).message), exitCode: BAD_INPUT.has(tag) ? 2 : 1 }
  }
  return { line: error instanceof Error ? error.message : String(error), exitCode: 1 }
}

export const cliFailure = (cause: Cause.Cause<unknown>): CliFailure => {
  const failure = cause.reasons.find(Cause.isFailReason)
  if (failure !== undefined) return describe(failure.error)
  const defect = cause.reasons.find(Cause.isDieReason)
  if (defect !== undefined) return describe(defect.defect)
  return { line: "interrupted", exitCode: 130 }
}

export const report = (cause: Cause.Cause<unknown>): number => {
  const failure = cliFailure(cause)
  process.stderr.write(`chorus: ${failure.line}\n`)
  if (process.env.CHORUS_DEBUG === "1") process.stderr.write(`${Cause.pretty(cause)}\n`)
  return failure.exitCode
}
