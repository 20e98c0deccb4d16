/**
 * Read access to the named tensors of a checkpoint, without loading the whole checkpoint.
 * Implemented by `Safetensors.ts` (single file or sharded with an index); graph builders consume it.
 */
import type { Effect } from "effect"
import type { CheckpointError } from "../core/Errors.ts"

/** Float storage dtypes as safetensors names them. */
export type StorageDType = "F32" | "F16" | "BF16"

/** Every dtype a checkpoint tensor may have: the float ones, and int32 (the packed 4-bit words of AWQ / GPTQ checkpoints). */
export type TensorDType = StorageDType | "I32"

export interface TensorInfo {
  readonly name: string
  readonly dtype: TensorDType
  readonly shape: ReadonlyArray<number>
  /** The file that holds the tensor (for error messages). */
  readonly file: string
}

/** Where a tensor's raw bytes lie, as plain data (a worker thread can read them itself). */
export interface TensorLocation {
  readonly file: string
  /** Absolute byte offset of the tensor in `file`. */
  readonly position: number
  readonly byteLength: number
  readonly dtype: TensorDType
  readonly shape: ReadonlyArray<number>
}

export interface TensorSource {
  /** Every tensor name in the checkpoint. */
  readonly names: ReadonlyArray<string>
  readonly info: (name: string) => TensorInfo | undefined
  /**
   * Reads one float tensor converted to float32 (an I32 tensor fails: `locate` gives its raw bytes). Fails with a CheckpointError naming the file and the tensor when the
   * tensor is missing, when `expectedShape` is given and differs, or when the file is shorter than its header says.
   */
  readonly readFloat32: (name: string, expectedShape?: ReadonlyArray<number>) => Effect.Effect<Float32Array, CheckpointError>
  /** The file and byte range of a tensor (undefined when missing); no bytes are read. */
  readonly locate: (name: string) => TensorLocation | undefined
  /** Bytes of every file, for a content key (graph conversion cache). */
  readonly files: ReadonlyArray<string>
}
