/**
 * The process's one log format: every line the server writes (start-up, draining, the access log, warnings from the
 * engine) goes through Effect's logger, configured once here. `text` is a timestamp, a level and the message,
 * then `key=value` annotations; `json` is one object per line with the same fields. Lines go to stdout, in order,
 * so a log collector reads one stream.
 *
 * @since 0.1.0
 */
import { Layer, Logger, References } from "effect"

/** @category models */
export type LogFormat = "text" | "json"
/** @category models */
export type LogLevelName = "debug" | "info" | "warn" | "error"

export const LOG_FORMATS: ReadonlyArray<LogFormat> = ["text", "json"]
export const LOG_LEVELS: ReadonlyArray<LogLevelName> = ["debug", "info", "warn", "error"]

const minimumLevel = { debug: "Debug", info: "Info", warn: "Warn", error: "Error" } as const

const levelName = (level: string): string => (level === "Warn" ? "warn" : level.toLowerCase())

/** A text value as logfmt writes it: bare when it is one plain word, quoted otherwise. */
const textValue = (value: unknown): string => {
  const s = typeof value === "string" ? value : JSON.stringify(value)
  return /^[^\s"=\\]+$/.test(s) ? s : JSON.stringify(s)
}

const messageText = (message: unknown): string =>
  Array.isArray(message) ? message.map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join(" ") : String(message)

const render = (format: LogFormat, write: (line: string) => void) =>
  Logger.map(Logger.formatStructured, (entry) => {
    const level = levelName(entry.level)
    const message = messageText(entry.message)
    const cause = entry.cause === undefined || entry.cause === "" ? undefined : entry.cause
    if (format === "json") {
      write(JSON.stringify({ time: entry.timestamp, level, message, ...entry.annotations, ...(cause === undefined ? {} : { cause }) }))
    } else {
      const fields = Object.entries(entry.annotations).map(([k, v]) => ` ${k}=${textValue(v)}`).join("")
      // A cause is multi-line; in text it follows the line, so the first line stays one greppable record.
      write(`${entry.timestamp} ${level.toUpperCase().padEnd(5)} ${message}${fields}${cause === undefined ? "" : `\n${cause}`}`)
    }
  })

/** @category models */
export interface LoggingOptions {
  readonly format?: LogFormat
  readonly level?: LogLevelName
  /** Where finished lines go. Default: stdout. */
  readonly write?: (line: string) => void
}

/**
 * Replaces the default loggers with the Chorus format and sets the minimum level; provide it once, around the
 * whole server (routes, engine, start-up messages).
 *
 * @category layers
 */
export const loggingLayer = (options: LoggingOptions = {}): Layer.Layer<never> =>
  Layer.mergeAll(
    Logger.layer([render(options.format ?? "text", options.write ?? ((line) => process.stdout.write(`${line}\n`)))]),
    Layer.succeed(References.MinimumLogLevel, minimumLevel[options.level ?? "info"])
  )
