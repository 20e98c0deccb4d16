/**
 * How many CUDA devices this process may use, for `--device cuda:all`. Asked of `nvidia-smi -L` (one `GPU n: ...` line
 * per device) rather than the native addon, so that counting needs neither a built addon nor ONNX Runtime loaded on
 * the main thread. CUDA renumbers the devices that `CUDA_VISIBLE_DEVICES` names from 0 and hides the rest, while
 * nvidia-smi lists them all: where that variable is set, its entries are the count.
 */
import { execFileSync } from "node:child_process"

/** The GPUs could not be counted: no nvidia-smi, or it failed. */
export class GpuCountUnavailable extends Error {
  constructor(message: string) {
    super(message)
    this.name = "GpuCountUnavailable"
  }
}

/** `nvidia-smi -L`'s output; throws where the command is missing or fails. */
const listWithNvidiaSmi = (): string => execFileSync("nvidia-smi", ["-L"], { encoding: "utf8", timeout: 10_000, stdio: ["ignore", "pipe", "pipe"] })

/**
 * The number of usable CUDA devices (0 where `CUDA_VISIBLE_DEVICES` is set empty or nvidia-smi lists none). `env` and
 * `listGpus` are the process's environment and `nvidia-smi -L`; tests pass their own.
 */
export const countGpus = (
  env: Readonly<Record<string, string | undefined>> = process.env,
  listGpus: () => string = listWithNvidiaSmi
): number => {
  const visible = env.CUDA_VISIBLE_DEVICES
  if (visible !== undefined) return visible.split(",").filter((entry) => entry.trim() !== "").length
  let listing: string
  try {
    listing = listGpus()
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).split("\n")[0]
    throw new GpuCountUnavailable(`cannot count the GPUs: nvidia-smi -L failed (${why}); list them instead, e.g. --device cuda:0,1`)
  }
  return listing.split("\n").filter((line) => /^GPU \d+:/.test(line)).length
}
