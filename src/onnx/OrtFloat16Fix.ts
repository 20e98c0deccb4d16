/**
 * Works around onnxruntime-node 1.29 on Node >= 24 (microsoft/onnxruntime#26791): onnxruntime-common maps
 * `float16` to the global `Float16Array` when one exists, and the native binding then reads a byte length of 0.
 * Hiding `Float16Array` while onnxruntime-common runs its one-time type check makes it use `Uint16Array` instead.
 * Import this module before any `ort.Tensor` is created, in the main thread and in every worker.
 */
import * as ort from "onnxruntime-node"

const g = globalThis as { Float16Array?: unknown }
const saved = g.Float16Array
delete g.Float16Array
new ort.Tensor("float32", new Float32Array(1), [1])
g.Float16Array = saved

export { ort }
