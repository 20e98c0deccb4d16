// A fixture whose int4-quantized weights are replaced by their round trip, in float32: the float model an int4 model
// must compute exactly. Shared by the CPU int4 tests and the device ones.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { dequantizeInt4, quantizeInt4, scaleRounder } from "../../src/adapters/llama3/MatMulNBitsPacking.ts"
import type { Int4Settings } from "../../src/adapters/llama3/Quantization.ts"
import { openCheckpoint, type SafetensorsTensor, writeSafetensors } from "../../src/checkpoint/Safetensors.ts"
import { fixtureDir } from "./fixtures.ts"

const LINEAR = /\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$/

/**
 * A float32 copy of fixture `name` in a new folder under `root` whose linear weights are replaced by their int4 round
 * trip (the LM head too when `q.lmHead`; a tied head becomes an explicit `lm_head.weight`, since the int4 model keeps
 * the embedding float), with the scales rounded as `scaleDtype` stores them. `importance` (by the graph's weight name:
 * `layers.{i}.qkv`, `.o_proj`, `.gate_up`, `.down`, `lm_head`) gives each linear the activation-weighted clip search.
 */
export const dequantizedFixture = async (
  root: string,
  name: string,
  q: Int4Settings,
  scaleDtype: "float32" | "float16",
  importance?: ReadonlyMap<string, Float32Array>
): Promise<string> => {
  const from = fixtureDir(name)
  const dir = fs.mkdtempSync(path.join(root, `${name}-${scaleDtype}-dequantized-`))
  const config = JSON.parse(fs.readFileSync(path.join(from, "config.json"), "utf8")) as Record<string, unknown>
  const tied = config.tie_word_embeddings === true
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...config, tie_word_embeddings: false }))
  fs.copyFileSync(path.join(from, "generation_config.json"), path.join(dir, "generation_config.json"))
  const source = await Effect.runPromise(openCheckpoint(from))
  // rows are quantized independently, so q, k and v (gate and up) alone are their stacked weight's rows
  const weightOf = (tensor: string): string => {
    const m = /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)_proj\.weight$/.exec(tensor)
    if (m === null) return "lm_head"
    const kind = { q: "qkv", k: "qkv", v: "qkv", o: "o_proj", gate: "gate_up", up: "gate_up", down: "down" }[m[2]] ?? m[2]
    return `layers.${m[1]}.${kind}`
  }
  const roundTrip = (data: Float32Array, shape: ReadonlyArray<number>, tensor: string) => {
    const l = { n: shape[0], k: shape[1], blockSize: q.blockSize, symmetric: q.symmetric }
    const imp = importance?.get(weightOf(tensor))
    if (importance !== undefined && imp === undefined) throw new Error(`no importance for ${tensor} (${weightOf(tensor)})`)
    return dequantizeInt4(quantizeInt4(data, l, scaleRounder(scaleDtype), imp), l)
  }
  const tensors: Array<SafetensorsTensor> = []
  for (const tensor of source.names) {
    const info = source.info(tensor)!
    const data = await Effect.runPromise(source.readFloat32(tensor))
    const quantized = LINEAR.test(tensor) || (tensor === "lm_head.weight" && q.lmHead)
    tensors.push({ name: tensor, dtype: "F32", shape: info.shape, data: quantized ? roundTrip(data, info.shape, tensor) : data })
    if (tied && tensor === "model.embed_tokens.weight") {
      tensors.push({ name: "lm_head.weight", dtype: "F32", shape: info.shape, data: q.lmHead ? roundTrip(data, info.shape, "lm_head.weight") : data })
    }
  }
  await Effect.runPromise(writeSafetensors(path.join(dir, "model.safetensors"), tensors))
  return dir
}
