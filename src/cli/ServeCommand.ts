/**
 * `chorus serve` (= `npm start`): the HTTP server on a model. Flags override the environment (`CHORUS_HOST`,
 * `CHORUS_PORT`, `CHORUS_API_KEYS`), which overrides the config file (`--config`, JSON).
 */
import { Effect, Schema } from "effect"
import * as fs from "node:fs"
import { createSecureContext } from "node:tls"
import { BenchAdapter } from "../adapters/bench/BenchAdapter.ts"
import { Llama3Adapter } from "../adapters/llama3/Llama3Adapter.ts"
import { ValidationError } from "../core/Errors.ts"
import { isCorsOrigin } from "../http/Cors.ts"
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevelName } from "../http/Logging.ts"
import { runServer } from "../http/Server.ts"
import { decodeJson } from "../http/JsonBody.ts"
import { defaultSlowReaderLimits } from "../http/SlowReader.ts"
import type { FlagSpecs, ParsedFlags } from "./Args.ts"
import { modelFlags, resolveModelFlags } from "./ModelFlags.ts"
import { fromEnvironment, readApiKeyFile } from "./ServeEnvironment.ts"

export const serveFlags = {
  ...modelFlags,
  config: { kind: "string", description: "JSON config file with any of these options (flags win)" },
  host: { kind: "string", description: "address to listen on (default 127.0.0.1; 0.0.0.0 for all)" },
  port: { kind: "integer", description: "port (default 8080; 0 picks a free one)" },
  "max-queue": { kind: "integer", description: "waiting requests, prompts being tokenized included, before new ones get 429 (default 1024)" },
  timeout: { kind: "number", description: "seconds a request may take in all before it fails (default 600)" },
  "api-key": { kind: "string", repeatable: true, description: "accepted API key (repeatable); none: the API is open" },
  "api-key-file": { kind: "string", description: "file of accepted API keys, one per line (# comments); keeps keys out of ps" },
  grace: { kind: "number", description: "seconds running requests may finish after SIGTERM (default 30)" },
  "aime-endpoint": { kind: "string", description: "AIME endpoint name (default llama3_chat)" },
  adapter: { kind: "string", description: "llama3 (default) | bench (no model time: measures the server itself)" },
  "cors-origin": { kind: "string", repeatable: true, description: "origin whose web pages may call the API, e.g. https://app.example.com (repeatable; * for any; default none: CORS off)" },
  "log-format": { kind: "string", description: "text (default) | json: one object per line" },
  "log-level": { kind: "string", description: "debug | info (default; includes one access-log line per request) | warn | error" },
  "tls-cert": { kind: "string", description: "PEM certificate file: serve HTTPS (with --tls-key)" },
  "tls-key": { kind: "string", description: "PEM private key file for --tls-cert" },
  "session-ttl": { kind: "number", description: "seconds an unused AIME session key stays valid (default 3600; each use renews it)" },
  "slow-reader-timeout": { kind: "number", description: "seconds a stream's socket may stay full (its client not reading) before it is cut (default 30)" },
  "max-sessions-per-key": { kind: "integer", description: "live AIME session keys per API key; more logins drop its oldest (default 1000)" },
  "no-local-model": { kind: "boolean", description: "serve no model here: every request (OpenAI and AIME) goes to remote `chorus worker`s / AIME workers polling this server" },
  "worker-key": { kind: "string", repeatable: true, description: "key a remote worker must send as auth_key (repeatable; needed with --no-local-model; with a model, the local engine and remote workers share one queue)" },
  "worker-timeout": { kind: "number", description: "seconds a remote worker may stay silent before it is offline and its jobs are re-queued (default 30)" },
  queue: { kind: "string", description: "redis://HOST:PORT: keep the queue for workers in Redis, so that several replicas form one API (with --worker-key; default: in memory)" },
  "bench-step-delay": { kind: "number", description: "bench adapter only: simulated model time per step in ms (default 0)" }
} as const satisfies FlagSpecs

/** The `--help` text after the flags. */
export const serveNotes = `environment (flags win over these, and these over --config):
  CHORUS_HOST        address to listen on, as --host
  CHORUS_PORT        port, as --port
  CHORUS_API_KEYS    accepted API keys, comma-separated; not used when --api-key or --api-key-file is given
A variable that is set must hold a usable value (an empty one is an error, exit code 2).
`

/** The config file: the same options, camelCase. */
const ServeConfig = Schema.Struct({
  model: Schema.optional(Schema.String),
  dtype: Schema.optional(Schema.String),
  shards: Schema.optional(Schema.Int),
  pipelineDepth: Schema.optional(Schema.Int),
  layerSplit: Schema.optional(Schema.Array(Schema.Int)),
  gpuMemory: Schema.optional(Schema.Array(Schema.Number)),
  maxBatch: Schema.optional(Schema.Int),
  contextLength: Schema.optional(Schema.Int),
  host: Schema.optional(Schema.String),
  port: Schema.optional(Schema.Int),
  maxQueue: Schema.optional(Schema.Int),
  timeout: Schema.optional(Schema.Number),
  apiKeys: Schema.optional(Schema.Array(Schema.String)),
  grace: Schema.optional(Schema.Number),
  aimeEndpoint: Schema.optional(Schema.String),
  adapter: Schema.optional(Schema.Literals(["llama3", "bench"])),
  corsOrigins: Schema.optional(Schema.Array(Schema.String)),
  logFormat: Schema.optional(Schema.String),
  logLevel: Schema.optional(Schema.String),
  tlsCert: Schema.optional(Schema.String),
  tlsKey: Schema.optional(Schema.String),
  sessionTtl: Schema.optional(Schema.Number),
  maxSessionsPerKey: Schema.optional(Schema.Int),
  slowReaderTimeout: Schema.optional(Schema.Number)
})

const bad = (field: string, message: string) => Effect.fail(new ValidationError({ field, message }))

const readConfig = (file: string) =>
  Effect.gen(function*() {
    const text = yield* Effect.try({
      try: () => fs.readFileSync(file, "utf8"),
      catch: () => new ValidationError({ field: "--config", message: `cannot read the config file ${file}` })
    })
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (e) => new ValidationError({ field: "--config", message: `${file} is not valid JSON: ${e instanceof Error ? e.message : String(e)}` })
    })
    return yield* decodeJson(ServeConfig, json).pipe(
      Effect.mapError((e) => new ValidationError({ field: "--config", message: `${file}: ${e.message}` }))
    )
  })

const readPem = (flag: string, file: string) =>
  Effect.try({
    try: () => fs.readFileSync(file, "utf8"),
    catch: (e) => new ValidationError({ field: flag, message: `cannot read ${flag} ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` })
  })

/** CORS, logging and TLS: checked here so that a mistake is one line before anything starts. */
const operationsOptions = (flags: ParsedFlags<typeof serveFlags>) =>
  Effect.gen(function*() {
    const origins = flags["cors-origin"] ?? []
    const badOrigin = origins.find((o) => !isCorsOrigin(o))
    if (badOrigin !== undefined) {
      return yield* bad("--cors-origin", `--cors-origin must be * or an origin such as https://app.example.com (scheme, host, optional port; no path), got '${badOrigin}'`)
    }
    const format = flags["log-format"] ?? "text"
    if (!LOG_FORMATS.includes(format as LogFormat)) return yield* bad("--log-format", `--log-format must be ${LOG_FORMATS.join(" or ")}, got '${format}'`)
    const level = flags["log-level"] ?? "info"
    if (!LOG_LEVELS.includes(level as LogLevelName)) return yield* bad("--log-level", `--log-level must be one of ${LOG_LEVELS.join(", ")}, got '${level}'`)
    const certFile = flags["tls-cert"]
    const keyFile = flags["tls-key"]
    if ((certFile === undefined) !== (keyFile === undefined)) {
      return yield* bad(certFile === undefined ? "--tls-cert" : "--tls-key", "--tls-cert and --tls-key go together: give both files or neither")
    }
    let tls: { cert: string; key: string } | undefined
    if (certFile !== undefined && keyFile !== undefined) {
      tls = { cert: yield* readPem("--tls-cert", certFile), key: yield* readPem("--tls-key", keyFile) }
      const pair = tls
      yield* Effect.try({
        try: () => createSecureContext(pair),
        catch: (e) => new ValidationError({ field: "--tls-cert", message: `--tls-cert ${certFile} and --tls-key ${keyFile} are not a usable PEM certificate and key: ${e instanceof Error ? e.message : String(e)}` })
      })
    }
    return {
      corsOrigins: origins,
      logFormat: format as LogFormat,
      logLevel: level as LogLevelName,
      accessLog: true,
      ...(tls === undefined ? {} : { tls })
    }
  })

export const runServe = (given: ParsedFlags<typeof serveFlags>) =>
  Effect.gen(function*() {
    const file = given.config === undefined ? {} : yield* readConfig(given.config)
    const env = yield* fromEnvironment(process.env)
    const keyFile = given["api-key-file"] === undefined ? undefined : yield* readApiKeyFile(given["api-key-file"])
    // Keys given on the command line replace those of the environment and the config file, as every flag does.
    const flagKeys = given["api-key"] === undefined && keyFile === undefined ? {} : { "api-key": [...(given["api-key"] ?? []), ...(keyFile ?? [])] }
    const flags: ParsedFlags<typeof serveFlags> = {
      ...(file.model === undefined ? {} : { model: file.model }),
      ...(file.dtype === undefined ? {} : { dtype: file.dtype }),
      ...(file.shards === undefined ? {} : { shards: file.shards }),
      ...(file.pipelineDepth === undefined ? {} : { "pipeline-depth": file.pipelineDepth }),
      ...(file.layerSplit === undefined ? {} : { "layer-split": file.layerSplit }),
      ...(file.gpuMemory === undefined ? {} : { "gpu-memory": file.gpuMemory }),
      ...(file.maxBatch === undefined ? {} : { "max-batch": file.maxBatch }),
      ...(file.contextLength === undefined ? {} : { "context-length": file.contextLength }),
      ...(file.host === undefined ? {} : { host: file.host }),
      ...(file.port === undefined ? {} : { port: file.port }),
      ...(file.maxQueue === undefined ? {} : { "max-queue": file.maxQueue }),
      ...(file.timeout === undefined ? {} : { timeout: file.timeout }),
      ...(file.apiKeys === undefined ? {} : { "api-key": file.apiKeys }),
      ...(file.grace === undefined ? {} : { grace: file.grace }),
      ...(file.aimeEndpoint === undefined ? {} : { "aime-endpoint": file.aimeEndpoint }),
      ...(file.adapter === undefined ? {} : { adapter: file.adapter }),
      ...(file.sessionTtl === undefined ? {} : { "session-ttl": file.sessionTtl }),
      ...(file.maxSessionsPerKey === undefined ? {} : { "max-sessions-per-key": file.maxSessionsPerKey }),
      ...(file.slowReaderTimeout === undefined ? {} : { "slow-reader-timeout": file.slowReaderTimeout }),
      ...(file.corsOrigins === undefined ? {} : { "cors-origin": file.corsOrigins }),
      ...(file.logFormat === undefined ? {} : { "log-format": file.logFormat }),
      ...(file.logLevel === undefined ? {} : { "log-level": file.logLevel }),
      ...(file.tlsCert === undefined ? {} : { "tls-cert": file.tlsCert }),
      ...(file.tlsKey === undefined ? {} : { "tls-key": file.tlsKey }),
      ...(env.host === undefined ? {} : { host: env.host }),
      ...(env.port === undefined ? {} : { port: env.port }),
      ...(env.apiKeys === undefined ? {} : { "api-key": env.apiKeys }),
      ...given,
      ...flagKeys
    }
    const port = flags.port ?? 8080
    if (port < 0 || port > 65535) return yield* bad("--port", `--port must be between 0 and 65535, got ${port}`)
    if (flags["max-queue"] !== undefined && flags["max-queue"] < 1) return yield* bad("--max-queue", `--max-queue must be at least 1, got ${flags["max-queue"]}`)
    if (flags.timeout !== undefined && !(flags.timeout > 0)) return yield* bad("--timeout", `--timeout must be a positive number of seconds, got ${flags.timeout}`)
    if (flags.grace !== undefined && !(flags.grace >= 0)) return yield* bad("--grace", `--grace must be zero or more seconds, got ${flags.grace}`)
    if (flags["session-ttl"] !== undefined && !(flags["session-ttl"] > 0)) return yield* bad("--session-ttl", `--session-ttl must be a positive number of seconds, got ${flags["session-ttl"]}`)
    if (flags["max-sessions-per-key"] !== undefined && flags["max-sessions-per-key"] < 1) return yield* bad("--max-sessions-per-key", `--max-sessions-per-key must be at least 1, got ${flags["max-sessions-per-key"]}`)
    if (flags["slow-reader-timeout"] !== undefined && !(flags["slow-reader-timeout"] > 0)) return yield* bad("--slow-reader-timeout", `--slow-reader-timeout must be a positive number of seconds, got ${flags["slow-reader-timeout"]}`)
    const endpoint = flags["aime-endpoint"] ?? "llama3_chat"
    if (!/^[A-Za-z0-9_-]+$/.test(endpoint)) return yield* bad("--aime-endpoint", `--aime-endpoint must be letters, digits, '_' or '-', got '${endpoint}'`)
    const adapterName = flags.adapter ?? "llama3"
    if (adapterName !== "llama3" && adapterName !== "bench") return yield* bad("--adapter", `--adapter must be llama3 or bench, got '${adapterName}'`)
    const stepDelay = flags["bench-step-delay"]
    if (stepDelay !== undefined && !(stepDelay >= 0)) return yield* bad("--bench-step-delay", `--bench-step-delay must be zero or more milliseconds, got ${stepDelay}`)
    if (stepDelay !== undefined && adapterName !== "bench") return yield* bad("--bench-step-delay", "--bench-step-delay needs --adapter bench")
    const workerTimeout = flags["worker-timeout"]
    if (workerTimeout !== undefined && !(workerTimeout > 0)) return yield* bad("--worker-timeout", `--worker-timeout must be a positive number of seconds, got ${workerTimeout}`)
    const workerKeys = flags["worker-key"] ?? []
    if (flags["no-local-model"] === true && workerKeys.length === 0) {
      return yield* bad("--worker-key", "--no-local-model needs at least one --worker-key: the key remote workers authenticate with")
    }
    if (workerKeys.length === 0 && workerTimeout !== undefined) {
      return yield* bad("--worker-timeout", "--worker-timeout needs --worker-key: it is the time a remote worker may stay silent")
    }
    const queueUrl = flags.queue
    if (queueUrl !== undefined) {
      const parsed = URL.canParse(queueUrl) ? new URL(queueUrl) : undefined
      if (parsed === undefined || (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:") || parsed.hostname === "") {
        return yield* bad("--queue", `--queue must be a Redis URL, redis://HOST:PORT (or rediss:// for TLS), got '${queueUrl}'`)
      }
      if (workerKeys.length === 0) return yield* bad("--queue", "--queue needs --worker-key: the shared queue is for workers (remote ones, and with a model the local one)")
    }
    const operations = yield* operationsOptions(flags)
    const model = yield* resolveModelFlags(flags)
    const engine = {
      ...model.engine,
      maxQueue: flags["max-queue"] ?? 1024,
      timeoutMs: (flags.timeout ?? 600) * 1000
    }
    const common = {
      host: flags.host ?? "127.0.0.1",
      port,
      apiKeys: flags["api-key"] ?? [],
      engine,
      aimeEndpoint: endpoint,
      graceMs: (flags.grace ?? 30) * 1000,
      ...operations,
      sessionTtlMs: (flags["session-ttl"] ?? 3600) * 1000,
      slowReader: { maxStallMs: flags["slow-reader-timeout"] === undefined ? defaultSlowReaderLimits.maxStallMs : flags["slow-reader-timeout"] * 1000 },
      ...(flags["max-sessions-per-key"] === undefined ? {} : { maxSessionsPerKey: flags["max-sessions-per-key"] }),
      // --worker-key with a model: the local engine and remote workers take jobs from one queue.
      ...(workerKeys.length > 0
        ? {
          remote: {
            workerKeys,
            workerTimeoutMs: (workerTimeout ?? 30) * 1000,
            ...(queueUrl === undefined ? {} : { queueUrl }),
            ...(flags["no-local-model"] === true ? {} : { localWorker: true })
          }
        }
        : {})
    }
    if (adapterName === "bench") {
      const benchOptions = {
        ...(model.adapter.maxContext === undefined ? {} : { contextLength: model.adapter.maxContext }),
        ...(model.adapter.shards === undefined ? {} : { shards: model.adapter.shards }),
        ...(stepDelay === undefined ? {} : { stepDelayMs: stepDelay })
      }
      yield* runServer({ ...common, adapter: BenchAdapter, adapterOptions: benchOptions })
    } else {
      yield* runServer({ ...common, adapter: Llama3Adapter, adapterOptions: model.adapter })
    }
  })
