/**
 * Checkpoint conversion speed: writes a random Llama-shaped checkpoint (float16 by default, about 1 GB with the
 * defaults), converts it with the sequential path (`threads: 0`, the float32 round trip on the main thread) and
 * with the parallel one (worker threads, positional writes, raw 16-bit transposes), checks that both wrote the
 * same bytes, and prints seconds and MB/s (bytes of the .data files over wall time).
 *
 *   node tools/bench-convert.ts [--hidden 2048] [--intermediate 5632] [--layers 8] [--vocab 32000]
 *     [--source F16] [--dtype float16] [--shards 1] [--threads 2] [--repeats 1] [--dir /tmp/x] [--quant b32-sym]
 *
 * The checkpoint was just written, so it is read from the page cache, and the .data files go to the page cache too
 * (neither path syncs; the bench syncs before each run, untimed): this measures the conversion's own cost and the
 * page cache's, not the disk's.
 */
import { Effect } from "effect"
import { execSync } from "node:child_process"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"
import { defaultConvertThreads } from "../src/adapters/llama3/ConvertPool.ts"
import { convertCheckpoint } from "../src/adapters/llama3/Converter.ts"
import { describeQuant, parseQuantVariant } from "../src/adapters/llama3/Quantization.ts"

const { values } = parseArgs({
  options: {
    hidden: { type: "string", default: "2048" },
    intermediate: { type: "string", default: "5632" },
    layers: { type: "string", default: "8" },
    vocab: { type: "string", default: "32000" },
    source: { type: "string", default: "F16" },
    dtype: { type: "string", default: "float16" },
    shards: { type: "string", default: "1" },
    threads: { type: "string", default: String(defaultConvertThreads()) },
    repeats: { type: "string", default: "1" },
    dir: { type: "string" },
    quant: { type: "string" }
  }
})
const H = Number(values.hidden), I = Number(values.intermediate), L = Number(values.layers), V = Number(values.vocab)
const source = values.source as "F16" | "BF16" | "F32"
const dtype = values.dtype as "float32" | "float16" | "bfloat16"
// `--quant b32-sym` (the tools' variant names): 4-bit weights, which the quantizer's speed decides.
const quantize = values.quant === undefined ? undefined : parseQuantVariant(values.quant)
if (values.quant !== undefined && quantize === undefined) {
  console.error(`bench-convert: --quant must be a variant such as b32-zp or b128-sym, got '${values.quant}'`)
  process.exit(2)
}
const headDim = 128
const heads = H / headDim
const kvHeads = Math.max(1, heads / 4)

const root = values.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "chorus-bench-convert-"))
const modelDir = path.join(root, "model")
fs.mkdirSync(modelDir, { recursive: true })

// ------------------------------------------------------------------ a random checkpoint, written tensor by tensor
const shapes: Array<[string, Array<number>]> = [["model.embed_tokens.weight", [V, H]]]
for (let i = 0; i < L; i++) {
  const p = `model.layers.${i}`
  shapes.push(
    [`${p}.input_layernorm.weight`, [H]],
    [`${p}.self_attn.q_proj.weight`, [heads * headDim, H]],
    [`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, H]],
    [`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, H]],
    [`${p}.self_attn.o_proj.weight`, [H, heads * headDim]],
    [`${p}.post_attention_layernorm.weight`, [H]],
    [`${p}.mlp.gate_proj.weight`, [I, H]],
    [`${p}.mlp.up_proj.weight`, [I, H]],
    [`${p}.mlp.down_proj.weight`, [H, I]]
  )
}
shapes.push(["model.norm.weight", [H]], ["lm_head.weight", [V, H]])
const width = source === "F32" ? 4 : 2

/** Random finite values (no NaN or infinity): random mantissa and sign, exponent in a small range. */
const randomBytes = (bytes: number): Uint8Array => {
  const out = crypto.randomFillSync(new Uint8Array(bytes))
  if (width === 4) {
    const w = new Uint32Array(out.buffer)
    for (let i = 0; i < w.length; i++) w[i] = (w[i] & 0x807fffff) | ((0x78 + ((w[i] >>> 23) & 7)) << 23)
  } else {
    const w = new Uint16Array(out.buffer)
    const [mask, shift, base] = source === "F16" ? [0x83ff, 10, 0x8] : [0x807f, 7, 0x78]
    for (let i = 0; i < w.length; i++) w[i] = (w[i] & mask) | ((base + ((w[i] >>> shift) & 7)) << shift)
  }
  return out
}

const writeCheckpoint = () => {
  const config = {
    architectures: ["LlamaForCausalLM"], bos_token_id: 128000, eos_token_id: 128001, head_dim: headDim, hidden_act: "silu",
    hidden_size: H, intermediate_size: I, max_position_embeddings: 8192, model_type: "llama", num_attention_heads: heads,
    num_hidden_layers: L, num_key_value_heads: kvHeads, rms_norm_eps: 1e-5, rope_theta: 500000.0, tie_word_embeddings: false,
    torch_dtype: source === "F32" ? "float32" : source === "F16" ? "float16" : "bfloat16", vocab_size: V
  }
  fs.writeFileSync(path.join(modelDir, "config.json"), JSON.stringify(config, null, 2))
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } }
  let offset = 0
  for (const [name, shape] of shapes) {
    const bytes = shape.reduce((a, b) => a * b, 1) * width
    header[name] = { dtype: source, shape, data_offsets: [offset, offset + bytes] }
    offset += bytes
  }
  let json = JSON.stringify(header)
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8)
  const prefix = Buffer.alloc(8)
  prefix.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  const fd = fs.openSync(path.join(modelDir, "model.safetensors"), "w")
  fs.writeSync(fd, prefix)
  fs.writeSync(fd, json)
  for (const [, shape] of shapes) fs.writeSync(fd, randomBytes(shape.reduce((a, b) => a * b, 1) * width))
  fs.closeSync(fd)
  return offset
}

const checkpointBytes = fs.existsSync(path.join(modelDir, "model.safetensors"))
  ? fs.statSync(path.join(modelDir, "model.safetensors")).size
  : writeCheckpoint()

const dataBytes = (dir: string) =>
  fs.readdirSync(dir).filter((f) => f.endsWith(".data")).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0)

const run = async (threads: number, outDir: string) => {
  fs.rmSync(outDir, { recursive: true, force: true })
  // Flush the previous run's dirty pages first, so that its writeback does not throttle this run's writes.
  execSync("sync")
  const t0 = performance.now()
  await Effect.runPromise(convertCheckpoint({
    modelDir, outDir, dtype, shards: Number(values.shards), maxContext: 8192, threads, ...(quantize === undefined ? {} : { quantize })
  }))
  const s = (performance.now() - t0) / 1000
  return { s, mbps: dataBytes(outDir) / 1e6 / s, inMbps: checkpointBytes / 1e6 / s }
}

const threads = Number(values.threads)
console.log(
  `checkpoint: ${source} hidden ${H}, intermediate ${I}, ${L} layers, vocab ${V}: ${(checkpointBytes / 1e6).toFixed(0)} MB -> ${dtype}${quantize === undefined ? "" : `, ${describeQuant(quantize)}`}, ` +
    `${values.shards} shard(s); ${os.availableParallelism()} cores, ${threads} threads`
)
const seq = path.join(root, "out-sequential")
const par = path.join(root, "out-parallel")
for (let r = 0; r < Number(values.repeats); r++) {
  const a = await run(0, seq)
  const b = await run(threads, par)
  console.log(
    `sequential ${a.s.toFixed(2)} s (${a.mbps.toFixed(0)} MB/s written, ${a.inMbps.toFixed(0)} MB/s of checkpoint)   ` +
      `parallel ${b.s.toFixed(2)} s (${b.mbps.toFixed(0)} MB/s written, ${b.inMbps.toFixed(0)} MB/s of checkpoint)   x${(a.s / b.s).toFixed(1)}`
  )
}
for (const f of fs.readdirSync(seq)) {
  if (f === "chorus-model.json") continue
  const same = Buffer.compare(fs.readFileSync(path.join(seq, f)), fs.readFileSync(path.join(par, f))) === 0
  if (!same) {
    console.error(`MISMATCH: ${f} differs between the sequential and the parallel path`)
    process.exitCode = 1
  }
}
if (process.exitCode !== 1) console.log("outputs byte-identical")
if (values.dir === undefined) fs.rmSync(root, { recursive: true, force: true })
