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

/** The parts of Node's listen error that say what went wrong (net.Server "error" event). */
interface ListenError {
  readonly code?: string
  readonly address?: string
  readonly port?: number
  readonly hostname?: string
  readonly message?: string
}

const endpoint = (e: ListenError) => `${e.address?.includes(":") === true ? `[${e.address}]` : e.address}:${e.port}`

/**
 * The server could not open its port (`ServeError` of the HTTP server layer, whose own message is empty): say why
 * in the words of an ops tool. A --host this machine does not have is bad input; a busy or forbidden port is not.
 */
const listenFailure = (cause: unknown): CliFailure => {
  const e: ListenError = typeof cause === "object" && cause !== null ? cause : {}
  switch (e.code) {
    case "EADDRINUSE":
      return { line: `port ${e.port} is in use (${endpoint(e)})`, exitCode: 1 }
    case "EADDRNOTAVAIL":
      return { line: `cannot bind ${e.address}: address not available`, exitCode: 2 }
    case "EACCES":
      return {
        line: `permission denied to listen on ${endpoint(e)}${
          e.port !== undefined && e.port < 1024 ? " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" : ""
        }`,
        exitCode: 1
      }
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return { line: `cannot resolve host '${e.hostname}' to listen on`, exitCode: 2 }
    default:
      return { line: `cannot listen: ${e.message ?? String(cause)}`, exitCode: 1 }
  }
}

const describe = (error: unknown): CliFailure => {
  if (typeof error === "object" && error !== null && "_tag" in error) {
    const tag = String((error as { _tag: unknown })._tag)
    if (tag === "ServeError") return listenFailure((error as { cause?: unknown }).cause)
    const message = "message" in error ? String((error as { message: unknown }).message) : ""
    // An error without a message still says what it is rather than printing a bare "chorus: ".
    return { line: message === "" ? tag : message, exitCode: BAD_INPUT.has(tag) ? 2 : 1 }
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
