/**
 * The Chorus server: OpenAI- and AIME-compatible APIs, operations routes and the web chat page over one engine.
 * The port opens first (so `/health` and `/ready` answer while the model loads); SIGTERM stops taking requests,
 * lets running ones finish within a grace period, then closes everything and resolves.
 *
 * @since 0.1.0
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Duration, Effect, Layer, ManagedRuntime } from "effect"
import { HttpRouter, HttpServer, HttpServerResponse } from "effect/http"
import * as https from "node:https"
import type { ModelAdapter } from "../core/ModelAdapter.ts"
import type { EngineOptions } from "../core/Engine.ts"
import { accessLog } from "./AccessLog.ts"
import { AimeRoutes } from "./aime/Routes.ts"
import { cors } from "./Cors.ts"
import { type LogFormat, type LogLevelName, loggingLayer } from "./Logging.ts"
import { HttpMetricsMiddleware } from "./metrics/HttpMetrics.ts"
import { createNodeServer, refuseTunnels } from "./NodeServer.ts"
import { OpenAiRoutes } from "./openai/Routes.ts"
import { OpsRoutes } from "./ops/Routes.ts"
import { redactUrl } from "./queue/RedisConnection.ts"
import { type RemoteOptions, Serving } from "./Serving.ts"
import type { SlowReaderLimits } from "./SlowReader.ts"
import { StaticRoutes } from "./StaticFiles.ts"
import { WorkerRoutes } from "./workers/Routes.ts"

/** @category models */
export interface ServerOptions<O> {
  readonly adapter: ModelAdapter<O>
  readonly adapterOptions: O
  readonly host?: string
  /** 0 picks a free port. Default 8080. */
  readonly port?: number
  readonly apiKeys?: ReadonlyArray<string>
  readonly engine?: EngineOptions
  /** AIME endpoint name (route `/<name>`). Default `llama3_chat`. */
  readonly aimeEndpoint?: string
  /** How long running requests may finish after SIGTERM. Default 30 s. */
  readonly graceMs?: number
  /** Origins whose pages may call the API (`*` for any); CORS is off when empty. Default none. */
  readonly corsOrigins?: ReadonlyArray<string>
  /** Format of every log line (start-up, access log, warnings). Default `text`. */
  readonly logFormat?: LogFormat
  /** Lines below this level are dropped. Default `info`. */
  readonly logLevel?: LogLevelName
  /** One log line per request. Default false (`chorus serve` turns it on); `x-request-id` is returned either way. */
  readonly accessLog?: boolean
  /** Serve HTTPS with this certificate and key (PEM). Default: plain HTTP. */
  readonly tls?: { readonly cert: string | Buffer; readonly key: string | Buffer }
  /** AIME session keys: idle lifetime (sliding; default 1 h) and live sessions per API key (default 1,000). */
  readonly sessionTtlMs?: number
  readonly maxSessionsPerKey?: number
  /** When a stream whose client stopped reading is cut (default: its socket stayed full for 30 s). */
  readonly slowReader?: SlowReaderLimits
  /**
   * Serve no model: route every request to remote workers polling the AIME worker routes (`--no-local-model`).
   * The adapter is then not loaded.
   */
  readonly remote?: RemoteOptions
}

/** The base URL of a bound server (`HttpServer.formatAddress` knows nothing of TLS). */
const baseUrl = (address: HttpServer.HttpServer["Service"]["address"], tls: boolean) => {
  const url = HttpServer.formatAddress(address)
  return tls ? url.replace(/^http:/, "https:") : url
}

const logging = <O>(options: ServerOptions<O>) =>
  loggingLayer({ ...(options.logFormat === undefined ? {} : { format: options.logFormat }), ...(options.logLevel === undefined ? {} : { level: options.logLevel }) })

/**
 * An unknown route answers 404 with an OpenAI-style JSON error body instead of an empty one. Router middleware (the
 * server's own middleware only sees a response already sent).
 */
const JsonNotFound = HttpRouter.middleware((app) =>
  Effect.catch(app, (e) => {
    const reason = typeof e === "object" && e !== null && (e as { readonly _tag?: unknown })._tag === "HttpServerError"
      ? (e as unknown as { readonly reason: { readonly _tag: string; readonly request: { readonly method: string; readonly url: string } } }).reason
      : undefined
    if (reason?._tag !== "RouteNotFound") return Effect.fail(e)
    const request = reason.request
    return Effect.succeed(HttpServerResponse.jsonUnsafe({
      error: { message: `no route for ${request.method} ${request.url.split("?")[0]}`, type: "invalid_request_error", param: null, code: "not_found" }
    }, { status: 404 }))
  }), { global: true })

/**
 * The whole server as a layer; also exposes `Serving` (readiness, metrics) and `HttpServer` (the bound address).
 *
 * @category layers
 */
export const serverLayer = <O>(options: ServerOptions<O>) => {
  const aime = AimeRoutes(options.aimeEndpoint ?? "llama3_chat", {
    ...(options.engine?.maxQueue === undefined ? {} : { maxQueue: options.engine.maxQueue }),
    ...(options.engine?.timeoutMs === undefined ? {} : { timeoutMs: options.engine.timeoutMs }),
    ...(options.sessionTtlMs === undefined ? {} : { sessionTtlMs: options.sessionTtlMs }),
    ...(options.maxSessionsPerKey === undefined ? {} : { maxSessionsPerKey: options.maxSessionsPerKey })
  })
  const routes = Layer.mergeAll(OpenAiRoutes, aime, WorkerRoutes, OpsRoutes, StaticRoutes, HttpMetricsMiddleware, JsonNotFound)
  const origins = options.corsOrigins ?? []
  const logRequests = accessLog({ log: options.accessLog === true })
  const middleware = origins.length === 0 ? logRequests : <E, R>(app: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) => logRequests(cors(origins)(app))
  const tls = options.tls
  const listen = tls === undefined ? createNodeServer : () => refuseTunnels(https.createServer({ cert: tls.cert, key: tls.key }))
  return HttpRouter.serve(routes, { disableLogger: true, disableListenLog: true, middleware }).pipe(
    Layer.provideMerge(Serving.layer(options.adapter, options.adapterOptions, {
      apiKeys: options.apiKeys ?? [],
      engine: options.engine ?? {},
      ...(options.slowReader === undefined ? {} : { slowReader: options.slowReader }),
      ...(options.remote === undefined ? {} : {
        remote: {
          endpoint: options.aimeEndpoint ?? "llama3_chat",
          ...(options.engine?.maxQueue === undefined ? {} : { maxQueue: options.engine.maxQueue }),
          ...(options.engine?.timeoutMs === undefined ? {} : { timeoutMs: options.engine.timeoutMs }),
          ...options.remote
        }
      })
    })),
    Layer.provideMerge(NodeHttpServer.layer(listen, {
      port: options.port ?? 8080,
      host: options.host ?? "127.0.0.1",
      // Requests have ended by now (runServer stops them after the grace); this only bounds a stuck connection.
      gracefulShutdownTimeout: Duration.millis(STOP_MS / 2)
    })),
    Layer.provide(logging(options))
  )
}

/** Waits for the first of SIGTERM / SIGINT. */
const shutdownSignal = Effect.callback<string>((resume) => {
  const on = (signal: string) => () => resume(Effect.succeed(signal))
  const term = on("SIGTERM")
  const int = on("SIGINT")
  process.once("SIGTERM", term)
  process.once("SIGINT", int)
  return Effect.sync(() => {
    process.off("SIGTERM", term)
    process.off("SIGINT", int)
  })
})

/** After the grace: streams end with their error event and the engine drops their sequences within this. */
const STOP_MS = 1000

/** Waits until no request is running or waiting, at most `graceMs`. */
const drained = (graceMs: number) =>
  Effect.gen(function*() {
    const serving = yield* Serving
    const engine = yield* Effect.option(serving.loadedEngine)
    if (engine._tag === "None") return
    const deadline = Date.now() + graceMs
    while (Date.now() < deadline) {
      const s = yield* engine.value.stats
      if (s.numRunning + s.numWaiting === 0) return
      yield* Effect.sleep("50 millis")
    }
  })

/**
 * Runs the server until SIGTERM/SIGINT, then drains and closes. `onReady` gets the base URL once the model is loaded.
 *
 * @category constructors
 */
export const runServer = <O>(options: ServerOptions<O>) =>
  Effect.gen(function*() {
    const serving = yield* Serving
    const server = yield* HttpServer.HttpServer
    const url = baseUrl(server.address, options.tls !== undefined)
    const ready = serving.ready.pipe(
      Effect.tap((engine) =>
        Effect.gen(function*() {
          const aime = options.aimeEndpoint ?? "llama3_chat"
          if (serving.queue !== undefined) {
            yield* Effect.logInfo(options.remote?.localWorker === true
              ? `chorus: the local model and remote workers (chorus worker --api-server ${url}) take jobs from one queue`
              : `chorus: no local model: every request goes to remote workers (chorus worker --api-server ${url})`)
            if (options.remote?.queueUrl !== undefined) {
              yield* Effect.logInfo(`chorus: the queue is in Redis at ${redactUrl(options.remote.queueUrl)}: every replica on it serves the same jobs`)
            }
          }
          yield* Effect.logInfo(`chorus: serving ${engine.model.id} at ${url}/ (OpenAI /v1, AIME /${aime}, web chat /, metrics /metrics)`)
          yield* Effect.logInfo(serving.isOpen ? "chorus: no API keys configured: the API is open to anyone who can reach it" : `chorus: ${serving.keys.size} API key(s) configured`)
        })
      ),
      Effect.andThen(Effect.never)
    )
    const signal = yield* Effect.raceFirst(ready, shutdownSignal)
    yield* Effect.logInfo(`chorus: ${signal}: draining (up to ${(options.graceMs ?? 30_000) / 1000} s for running requests)`)
    yield* serving.drain
    yield* drained(options.graceMs ?? 30_000)
    // Whatever still runs ends now with an error its client sees (SSE error event + [DONE], 503, AIME error result).
    yield* serving.stop
    yield* drained(STOP_MS / 2)
    yield* Effect.logInfo("chorus: stopped")
  }).pipe(Effect.provide(serverLayer(options)), Effect.provide(logging(options)))

/** A server started from plain Node code: its base URL, the loaded engine, and how to stop it. */
export interface RunningServer {
  readonly url: string
  readonly serving: Serving["Service"]
  readonly engine: Effect.Success<Serving["Service"]["ready"]>
  /** Stops taking requests, closes the port and the model's worker threads. */
  readonly close: () => Promise<void>
}

/**
 * Starts the server for a plain Node app (no Effect in sight): resolves once the model is loaded.
 *
 * @example
 * ```ts
 * const server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 8080 })
 * console.log(server.url)  // http://127.0.0.1:8080
 * await server.close()
 * ```
 *
 * @category constructors
 */
export const startServer = async <O>(options: ServerOptions<O>): Promise<RunningServer> => {
  const runtime = ManagedRuntime.make(serverLayer(options))
  try {
    const started = await runtime.runPromise(
      Effect.gen(function*() {
        const serving = yield* Serving
        const engine = yield* serving.ready
        const server = yield* HttpServer.HttpServer
        return { url: baseUrl(server.address, options.tls !== undefined), engine, serving }
      })
    )
    return { ...started, close: () => runtime.dispose() }
  } catch (error) {
    await runtime.dispose()
    throw error
  }
}
