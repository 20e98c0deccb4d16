/**
 * The server's view of the model: loading in the background while the HTTP port is already open (so `/health`
 * and `/ready` answer from the first second), then ready, then draining on shutdown. Routes ask it for the engine
 * and get NotReady or Draining instead while the model cannot take requests. It also owns API keys and metrics.
 *
 * @since 0.1.0
 */
import { Cause, Context, Deferred, Effect, Layer, Ref } from "effect"
import type { ModelAdapter } from "../core/ModelAdapter.ts"
import { describeCapacity, Engine, type EngineOptions } from "../core/Engine.ts"
import type { EngineObserver } from "../core/EngineObserver.ts"
import type { CheckpointError, ConversionError, GenerationError, ModelConfigError } from "../core/Errors.ts"
import { makeKeyMatcher } from "./ApiKeys.ts"
import { recordingUsage } from "./AccessLog.ts"
import { EngineMetrics } from "./metrics/EngineMetrics.ts"
import { registerProcessMetrics } from "./metrics/ProcessMetrics.ts"
import { Registry } from "./metrics/Prometheus.ts"
import { Draining, NotReady, ShutDown, Unauthorized } from "./ServerErrors.ts"
import { defaultSlowReaderLimits, makeSlowReaderWatch, type SlowReaderLimits, type SlowReaderWatch } from "./SlowReader.ts"
import { WORKER_STATES } from "./workers/WorkerMachine.ts"
import { makeWorkerPool, type WorkerPool, type WorkerPoolOptions } from "./workers/WorkerPool.ts"
import { type QueueError, RedisConnection } from "./queue/RedisConnection.ts"
import { makeRedisWorkerQueue } from "./queue/RedisWorkerQueue.ts"
import { memoryWorkerQueue, type WorkerQueue } from "./queue/WorkerQueue.ts"
import { runWorker, type WorkerTransport } from "./workers/WorkerClient.ts"
import { silentObserver } from "../core/EngineObserver.ts"

export type ServingStatus = "loading" | "ready" | "draining"
export type LoadError = CheckpointError | ModelConfigError | ConversionError | GenerationError

/** @category models */
export interface ServingOptions {
  /** API keys; empty means the API is open. */
  readonly apiKeys: ReadonlyArray<string>
  readonly engine: EngineOptions
  /** When a streamed response whose client stopped reading is cut. Default `defaultSlowReaderLimits`. */
  readonly slowReader?: SlowReaderLimits
  /**
   * Serve no model: every request goes to remote workers over the AIME worker protocol (`--no-local-model`).
   * Mixing the local engine and remote workers in one queue is a later step.
   */
  readonly remote?: RemoteOptions
}

/** @category models */
export interface RemoteOptions extends WorkerPoolOptions {
  /**
   * `redis://HOST:PORT`: keep the queue (jobs, progress, results, workers, AIME sessions) in Redis, shared by every
   * replica on it (`--queue`). Default: in this process's memory.
   */
  readonly queueUrl?: string
  /**
   * The local engine takes jobs from the queue too, beside remote workers (`chorus serve --model ... --worker-key K`):
   * it runs as one more worker of the queue, called in-process. Default false (`--no-local-model`: remote only).
   */
  readonly localWorker?: boolean
}

type EngineService = Engine["Service"]

/** Worker calls straight to a queue in this process (the local engine as one of the queue's workers). */
const inProcess = (queue: WorkerQueue): WorkerTransport => (route, body, signal) => {
  const handler = route === "/worker_job_request"
    ? queue.jobRequest
    : route === "/worker_job_progress"
    ? queue.progress
    : route === "/worker_job_result"
    ? queue.result
    : route === "/worker_check_server_status"
    ? queue.checkStatus
    : queue.login
  return Effect.runPromise(handler(body), signal === undefined ? undefined : { signal }).then((r) => ({
    status: r.status,
    body: typeof r.body === "object" && r.body !== null && !Array.isArray(r.body) ? (r.body as Record<string, unknown>) : { items: r.body }
  }))
}

/**
 * @category services
 */
export class Serving extends Context.Service<Serving, {
  readonly status: Effect.Effect<ServingStatus>
  /** The engine, for a new request: fails while loading or draining. */
  readonly engine: Effect.Effect<EngineService, NotReady | Draining>
  /** The engine regardless of draining (progress polls, metrics); fails only while loading. */
  readonly loadedEngine: Effect.Effect<EngineService, NotReady>
  /** Completes when the model is loaded; fails with the load error. */
  readonly ready: Effect.Effect<EngineService, LoadError>
  /** Stops taking new requests. */
  readonly drain: Effect.Effect<void>
  /**
   * Fails with ShutDown once the grace period after SIGTERM is over, and never completes before: a running request
   * races it so that it ends with an error its client can see instead of being cut off.
   */
  readonly shutdown: Effect.Effect<never, ShutDown>
  /** Ends the grace period: every request racing `shutdown` ends now. */
  readonly stop: Effect.Effect<void>
  readonly checkKey: (key: string | undefined) => Effect.Effect<void, Unauthorized>
  /** Whether `key` is a configured API key, in constant time (see ApiKeys.ts); false on an open server. */
  readonly isKey: (key: string) => boolean
  readonly isOpen: boolean
  readonly keys: ReadonlySet<string>
  /** Everything `/metrics` serves: process metrics from the start, the model's once it is loaded, HTTP counts. */
  readonly registry: Registry
  /** Cuts streams whose client stopped reading; counts them in `chorus:stream_aborted_slow_reader_total`. */
  readonly slowReader: SlowReaderWatch
  /** The in-memory worker pool; undefined when the server runs its model itself or the queue is in Redis. */
  readonly workers: WorkerPool | undefined
  /** The queue remote workers take jobs from (memory or Redis); undefined when the server runs its model itself. */
  readonly queue: WorkerQueue | undefined
}>()("chorus/http/Serving") {
  static readonly layer = <O>(adapter: ModelAdapter<O>, adapterOptions: O, options: ServingOptions): Layer.Layer<Serving, QueueError> =>
    Layer.effect(
      Serving,
      Effect.gen(function*() {
        const registry = new Registry()
        yield* registerProcessMetrics(registry)
        // The series are labelled with the model's id, known once it is loaded; the engine reports nothing before.
        let metrics: EngineMetrics | undefined
        const slowReaderAborted = registry
          .counter("chorus:stream_aborted_slow_reader_total", "Number of streamed responses aborted because their client stopped reading.")
          .child({})
        const slowReader = yield* makeSlowReaderWatch(options.slowReader ?? defaultSlowReaderLimits, () => slowReaderAborted.inc())
        const observer: EngineObserver = {
          queued: () => {},
          admitted: () => {},
          promptTokens: (n) => metrics?.promptTokens(n),
          firstToken: (queue, ttft) => metrics?.firstToken(queue, ttft),
          token: (itl) => metrics?.token(itl),
          decodeStep: (n) => metrics?.decodeStep(n),
          engineStep: (n) => metrics?.engineStep(n),
          stepTiming: (t) => metrics?.stepTiming(t),
          finished: (request) => metrics?.finished(request),
          preempted: () => metrics?.preempted(),
          failed: (errorType) => metrics?.failed(errorType)
        }
        const status = yield* Ref.make<ServingStatus>("loading")
        const loaded = yield* Deferred.make<EngineService, LoadError>()
        const stopped = yield* Deferred.make<never, ShutDown>()
        let current: EngineService | undefined
        const engineLayer = Engine.layer(adapter, adapterOptions, { ...options.engine, observer })
        const remote = options.remote
        let workers: WorkerPool | undefined
        let queue: WorkerQueue | undefined
        if (remote !== undefined) {
          const gauge = registry.gauge("chorus:workers", "Remote workers by state (connecting, online, busy, offline).", ["state"])
          const poolOptions = {
            ...remote,
            observer,
            onChange: (counts: Record<(typeof WORKER_STATES)[number], number>) => {
              for (const s of WORKER_STATES) gauge.set({ state: s }, counts[s])
            }
          }
          for (const s of WORKER_STATES) gauge.set({ state: s }, 0)
          if (remote.queueUrl === undefined) {
            workers = yield* makeWorkerPool(poolOptions)
            queue = memoryWorkerQueue(workers)
          } else {
            const connection = yield* Layer.build(RedisConnection.layer(remote.queueUrl))
            queue = yield* makeRedisWorkerQueue(poolOptions).pipe(Effect.provideContext(connection))
          }
          const engine = queue.engine as unknown as EngineService
          metrics = new EngineMetrics(registry, { modelName: "remote", maxModelLen: engine.model.contextLength })
          metrics.bindGauges({
            running: () => Effect.runSync(engine.stats).numRunning,
            waiting: () => Effect.runSync(engine.stats).numWaiting,
            kvUsage: () => 0,
            prefixCacheQueries: () => 0,
            prefixCacheHits: () => 0
          })
          current = engine
          yield* Ref.set(status, "ready")
          yield* Deferred.succeed(loaded, engine)
          const workerQueue = queue
          const key = remote.workerKeys[0]
          if (remote.localWorker === true && key !== undefined) {
            // The local engine loads in the background and then takes jobs like any worker. Its requests are counted
            // once, by the queue's engine (the metrics above), so it reports to no observer.
            const stop = new AbortController()
            yield* Effect.addFinalizer(() => Effect.sync(() => stop.abort()))
            yield* Effect.forkScoped(
              Layer.build(Engine.layer(adapter, adapterOptions, { ...options.engine, observer: silentObserver })).pipe(
                Effect.map((ctx) => Context.get(ctx, Engine)),
                Effect.tap((local) => Effect.logInfo(`chorus: the local model ${local.model.id} takes jobs from the queue beside remote workers; ${describeCapacity(local.capacity, local.model.contextLength)}`)),
                Effect.flatMap((local) =>
                  Effect.flatMap(local.stats, (stats) =>
                    Effect.promise(() =>
                      runWorker({
                        apiServer: "in-process",
                        workerKey: key,
                        engine: local,
                        maxBatch: stats.maxNumSeqs,
                        name: "local",
                        transport: inProcess(workerQueue),
                        signal: stop.signal,
                        log: () => {}
                      })
                    )
                  )
                ),
                Effect.catchCause((cause) => Effect.logError(`chorus: the local model cannot take jobs: ${Cause.pretty(cause)}`)),
                Effect.andThen(Effect.never)
              )
            )
          }
        }
        // Load in the background, in the layer's scope: the engine lives as long as the server.
        if (remote === undefined) yield* Effect.forkScoped(
          Layer.build(engineLayer).pipe(
            Effect.map((ctx) => Context.get(ctx, Engine)),
            Effect.tap((engine) =>
              Effect.sync(() => {
                metrics = new EngineMetrics(registry, { modelName: engine.model.id, maxModelLen: engine.model.contextLength })
                metrics.bindGauges({
                  running: () => Effect.runSync(engine.stats).numRunning,
                  waiting: () => Effect.runSync(engine.stats).numWaiting,
                  kvUsage: () => Effect.runSync(engine.stats).kvUsage,
                  prefixCacheQueries: () => Effect.runSync(engine.stats).prefixCacheQueries,
                  prefixCacheHits: () => Effect.runSync(engine.stats).prefixCacheHits
                })
              })
            ),
            Effect.tap((engine) => Effect.sync(() => (current = engine))),
            Effect.tap((engine) => Effect.logInfo(describeCapacity(engine.capacity, engine.model.contextLength))),
            Effect.tap(() => Ref.update(status, (s) => (s === "loading" ? "ready" : s))),
            Effect.exit,
            Effect.flatMap((exit) => Deferred.done(loaded, exit)),
            Effect.andThen(Effect.never)
          )
        )
        const keys = new Set(options.apiKeys)
        const isKey = makeKeyMatcher(keys)
        const loadedEngine = Effect.suspend(() =>
          current === undefined
            ? Effect.fail(new NotReady({ message: "the model is still loading; retry in a moment" }))
            : Effect.succeed(current)
        )
        return Serving.of({
          status: Ref.get(status),
          loadedEngine,
          engine: Effect.gen(function*() {
            if ((yield* Ref.get(status)) === "draining") {
              return yield* Effect.fail(new Draining({ message: "the server is shutting down and takes no new requests" }))
            }
            return recordingUsage(yield* loadedEngine)
          }),
          ready: Deferred.await(loaded),
          drain: Ref.set(status, "draining"),
          shutdown: Deferred.await(stopped),
          stop: Deferred.fail(stopped, new ShutDown({ message: "the server is shutting down and its grace period for running requests is over" })).pipe(Effect.asVoid),
          checkKey: (key) =>
            keys.size === 0 || (key !== undefined && isKey(key))
              ? Effect.void
              : Effect.fail(new Unauthorized({ message: key === undefined ? "an API key is required" : "the API key is not valid" })),
          isKey,
          isOpen: keys.size === 0,
          keys,
          registry,
          slowReader,
          workers,
          queue
        })
      })
    )
}
