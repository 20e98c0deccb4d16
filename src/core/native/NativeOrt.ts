/**
 * Typed front of the optional native addon (native/, docs/native.md): ONNX Runtime sessions run through IO binding,
 * so tensors such as the KV cache live in the session's device memory (CUDA memory for provider "cuda") across runs,
 * and only the small inputs and outputs named "host" cross into JS memory. onnxruntime-node cannot do this: it
 * copies every input in and every output out at each `run()`.
 *
 * Everything is synchronous (it runs inside shard worker threads). The addon is built on demand with
 * `npm run build:native`; the CPU path never needs it, so nothing loads it until `NativeOrt.load()` is called.
 */
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

export type NativeDtype = "float32" | "float16" | "bfloat16" | "int32" | "int64"

/** The JS array of each dtype (float16 travels as its raw bits in a Uint16Array). */
export interface NativeArrayOf {
  readonly float32: Float32Array
  readonly float16: Uint16Array
  readonly bfloat16: Uint16Array
  readonly int32: Int32Array
  readonly int64: BigInt64Array
}
export type NativeArray = NativeArrayOf[NativeDtype]

/** A tensor in JS memory; onnxruntime-node's `Tensor` fits too. The dtype follows from the array's class. */
export interface HostTensor<A extends NativeArray = NativeArray> {
  readonly data: A
  readonly dims: ReadonlyArray<number>
  /** Needed only where the array class is ambiguous: a Uint16Array is float16 unless this says bfloat16. */
  readonly dtype?: NativeDtype
}

/** A tensor in the memory of the session that allocated it; views share that memory. */
export interface DeviceTensor<D extends NativeDtype = NativeDtype> {
  readonly dtype: D
  readonly dims: ReadonlyArray<number>
  readonly location: NativeProvider
  /** A tensor over `count(dims)` elements of the same memory from `offsetElements` on (e.g. rows of a KV slot buffer). */
  view(offsetElements: number, dims: ReadonlyArray<number>): DeviceTensor<D>
  /** Overwrites the whole tensor; `data.length` must equal its element count. */
  upload(data: NativeArrayOf[D]): void
  download(): NativeArrayOf[D]
  /** Drops this handle's reference; memory is freed once no tensor over it remains (the GC does the same). */
  release(): void
}

export type NativeProvider = "cpu" | "cuda"

export interface NativeSessionOptions {
  readonly provider: NativeProvider
  /** CUDA device ordinal (provider "cuda"); default 0. */
  readonly deviceId?: number
  readonly intraOpThreads?: number
  readonly graphOptimization?: "disabled" | "basic" | "extended" | "all"
  /**
   * CUDA EP provider options as ORT names them, e.g. `gpu_mem_limit`, `arena_extend_strategy`
   * (`kSameAsRequested`), `cudnn_conv_algo_search`, `do_copy_in_default_stream`, `use_tf32`, `enable_cuda_graph`.
   */
  readonly cuda?: Readonly<Record<string, string>>
  /** Turn on ORT's per-node profiler; `endProfiling()` writes `<prefix>_<date>.json` (a Chrome trace). */
  readonly profile?: string
  /** A custom-op library to register (`CudaOps.ts`: native/build-cuda/libchorus_cuda_ops.so). */
  readonly customOpsLibrary?: string
  /** Session config entries (`AddConfigEntry`), e.g. `session.disable_prepacking`. */
  readonly sessionConfig?: Readonly<Record<string, string>>
}

export interface NativeRunOptions {
  /** CUDA graph to capture on first use and replay after (needs `cuda: { enable_cuda_graph: "1" }`; docs/native.md). */
  readonly cudaGraphId?: number
}

export interface NativeSession {
  readonly inputNames: ReadonlyArray<string>
  readonly outputNames: ReadonlyArray<string>
  readonly provider: NativeProvider
  /** Zero-filled memory of the session's device. */
  allocate<D extends NativeDtype>(dtype: D, dims: ReadonlyArray<number>): DeviceTensor<D>
  /**
   * Binds every model input (host tensors are wrapped without a copy, device tensors bound in place) and the
   * listed outputs (a device tensor receives the output in place, "host" comes back in JS memory), runs, and
   * waits for the device once. Returns the "host" outputs.
   */
  run(
    inputs: Readonly<Record<string, HostTensor | DeviceTensor>>,
    outputs: Readonly<Record<string, DeviceTensor | "host">>,
    options?: NativeRunOptions
  ): Record<string, HostTensor>
  /**
   * `run`'s binding made once and kept (host inputs copied): for runs that repeat with the same tensors, such as a
   * decode step replaying its CUDA graph, whose per-run binding of every layer's cache would otherwise cost the
   * worker a tenth of a one-stream step. The bound device tensors stay alive while the binding does.
   */
  bind(inputs: Readonly<Record<string, HostTensor | DeviceTensor>>, outputs: Readonly<Record<string, DeviceTensor | "host">>): BoundRun
  /** With `profile`: stops ORT's profiler and returns the trace file it wrote. */
  endProfiling(): string
  /** Drops the session; tensors still alive keep its allocator (and so the session) until they are released. */
  release(): void
}

/** A session's inputs and outputs bound once (`NativeSession.bind`). */
export interface BoundRun {
  /** Runs with the bound tensors (device inputs as they are now) and returns the "host" outputs, as `run` does. */
  run(options?: NativeRunOptions): Record<string, HostTensor>
  /** Drops the binding and its hold on the tensors. */
  release(): void
}

export interface NativeOrtModule {
  /** The ONNX Runtime library's version (the one onnxruntime-node ships) and the C API version asked of it. */
  readonly ortVersion: string
  readonly apiVersion: number
  /** Throws an Error naming what to install when provider "cuda" cannot load. */
  createSession(modelPath: string, options: NativeSessionOptions): NativeSession
  /**
   * Free and total bytes of CUDA device `deviceId` (`cudaMemGetInfo`; the CUDA runtime is loaded on first use, never
   * linked). Throws where no CUDA runtime or device is present.
   */
  deviceMemory(deviceId: number): DeviceMemory
}

/** A CUDA device's memory in bytes, as `cudaMemGetInfo` reports it (free counts other processes' use too). */
export interface DeviceMemory {
  readonly free: number
  readonly total: number
}

/** The addon could not be loaded: not built, or built but unable to load its libraries. */
export class NativeOrtUnavailable extends Error {
  readonly addonPath: string
  constructor(addonPath: string, message: string) {
    super(message)
    this.name = "NativeOrtUnavailable"
    this.addonPath = addonPath
  }
}

const defaultAddonPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../native/build/Release/chorus_ort.node")

/** Where `load()` looks: `CHORUS_NATIVE_ADDON` when set, else native/build/Release/chorus_ort.node. */
export const addonPath = (): string => process.env.CHORUS_NATIVE_ADDON ?? defaultAddonPath

const loaded = new Map<string, NativeOrtModule>()

/** Loads the addon (once per thread and path), or throws `NativeOrtUnavailable` saying how to build it. */
const load = (file: string = addonPath()): NativeOrtModule => {
  const cached = loaded.get(file)
  if (cached !== undefined) return cached
  if (!fs.existsSync(file)) {
    throw new NativeOrtUnavailable(file, `native ONNX Runtime addon not built: ${file} is missing; run \`npm run build:native\` (docs/native.md)`)
  }
  let mod: NativeOrtModule
  try {
    mod = createRequire(import.meta.url)(file) as NativeOrtModule
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).split("\n")[0]
    throw new NativeOrtUnavailable(file, `native ONNX Runtime addon ${file} failed to load (${why}); rebuild it with \`npm run build:native\` after \`npm install\` (docs/native.md)`)
  }
  loaded.set(file, mod)
  return mod
}

/** Whether the addon file exists (it may still fail to load; `load()` says why). */
const isBuilt = (file: string = addonPath()): boolean => fs.existsSync(file)

export const NativeOrt = { load, isBuilt, addonPath } as const

/** Element count of `dims`. */
export const elementCount = (dims: ReadonlyArray<number>): number => dims.reduce((a, b) => a * b, 1)
