/**
 * Which kernel ONNX Runtime's CUDA GroupQueryAttention decodes with (one query token a row, the row cache's shared
 * KV buffer): TensorRT-LLM's XQA kernel or flash decoding. ORT 1.29 reads the choice from the process environment
 * (`ORT_ENABLE_XQA`) when a session is made, so it is process-wide, and it must be set in the main thread before
 * the shard workers make their sessions: a worker thread's `process.env` is its own copy, the C environment that
 * ORT reads is the process's.
 *
 * XQA is the default. Measured on an H200 (docs/benchmarks.md, "Decode attention by kernel"): 2.94 against 2.51 TB/s
 * of KV read at 64 rows of 1,024 tokens; the 8B served at 64 streams 3,915 against 3,555 output tokens/s, ITL p99 82
 * against 180 ms; the device tests pass with either.
 */
export type DecodeAttention = "xqa" | "flash" | "chorus"

const VARIABLE = "ORT_ENABLE_XQA"

/**
 * Sets the process environment for `choice`. Without one, a value the user already put in the environment stands
 * (ORT's own switch), else XQA. Returns the kernel in effect. `chorus` (experimental) replaces GroupQueryAttention
 * with Chorus's own op (`CudaOps.ts`, when a shard loads) and leaves the environment alone.
 */
export const applyDecodeAttention = (choice: DecodeAttention | undefined): DecodeAttention => {
  if (choice === "chorus") return choice
  const set = process.env[VARIABLE]
  if (choice === undefined && set !== undefined && set !== "") return set === "0" ? "flash" : "xqa"
  const effective = choice ?? "xqa"
  process.env[VARIABLE] = effective === "xqa" ? "1" : "0"
  return effective
}
