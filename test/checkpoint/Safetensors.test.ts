// Safetensors reading and writing against the tiny Llama 3 fixtures in test/fixtures and checkpoints made in temp folders.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, describe, expect, it } from "vitest"
import type { CheckpointError } from "../../src/core/Errors.ts"
import {
  openCheckpoint,
  readSafetensorsHeader,
  type SafetensorsTensor,
  writeSafetensors
} from "../../src/checkpoint/Safetensors.ts"

const fixtures = fileURLToPath(new URL("../fixtures", import.meta.url))
const fixtureA = path.join(fixtures, "tiny-llama3-a")
const fixtureB = path.join(fixtures, "tiny-llama3-b")

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-safetensors-"))
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }))
let tmpCount = 0
const tmpDir = (): string => {
  const dir = path.join(tmpRoot, `d${tmpCount++}`)
  fs.mkdirSync(dir)
  return dir
}

const run = <A>(effect: Effect.Effect<A, CheckpointError>): Promise<A> => Effect.runPromise(effect)
const runError = <A>(effect: Effect.Effect<A, CheckpointError>): Promise<CheckpointError> =>
  Effect.runPromise(Effect.flip(effect))

/** Parses a safetensors file independently of the module under test: header JSON and raw data bytes. */
const rawFile = (file: string) => {
  const buf = fs.readFileSync(file)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<
    string,
    { dtype: string; shape: Array<number>; data_offsets: [number, number] }
  >
  const rawF32 = (name: string): Float32Array => {
    const [b, e] = header[name].data_offsets
    const bytes = buf.subarray(8 + n + b, 8 + n + e)
    return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength))
  }
  return { buf, headerLength: n, header, rawF32 }
}

const readAll = async (dir: string): Promise<Map<string, Float32Array>> => {
  const src = await run(openCheckpoint(dir))
  const out = new Map<string, Float32Array>()
  for (const name of src.names) out.set(name, await run(src.readFloat32(name)))
  return out
}

const copyFixture = (from: string): string => {
  const dir = tmpDir()
  fs.copyFileSync(path.join(from, "model.safetensors"), path.join(dir, "model.safetensors"))
  return dir
}

describe("openCheckpoint on the fixtures", () => {
  it("lists the tensors of tiny-llama3-a with their shapes and dtypes", async () => {
    const src = await run(openCheckpoint(fixtureA))
    expect(src.files).toEqual([path.join(fixtureA, "model.safetensors")])
    // 2 layers x 9 tensors + embeddings + final norm + untied lm_head
    expect(src.names.length).toBe(21)
    expect(src.info("model.embed_tokens.weight")).toEqual({
      name: "model.embed_tokens.weight",
      dtype: "F32",
      shape: [512, 64],
      file: path.join(fixtureA, "model.safetensors")
    })
    expect(src.info("lm_head.weight")?.shape).toEqual([512, 64])
    expect(src.info("model.layers.1.self_attn.k_proj.weight")?.shape).toEqual([32, 64])
    expect(src.info("model.layers.0.mlp.down_proj.weight")?.shape).toEqual([64, 176])
    expect(src.info("no.such.tensor")).toBeUndefined()
  })

  it("tiny-llama3-b has tied embeddings (no lm_head) and 3 layers", async () => {
    const src = await run(openCheckpoint(fixtureB))
    expect(src.names).not.toContain("lm_head.weight")
    expect(src.names).toContain("model.layers.2.self_attn.q_proj.weight")
    expect(src.info("model.layers.2.self_attn.q_proj.weight")?.shape).toEqual([96, 96])
    expect(src.info("model.embed_tokens.weight")?.shape).toEqual([640, 96])
  })

  it("readFloat32 returns exactly the float32 bytes stored in the file", async () => {
    for (const dir of [fixtureA, fixtureB]) {
      const src = await run(openCheckpoint(dir))
      const raw = rawFile(path.join(dir, "model.safetensors"))
      for (const name of ["model.norm.weight", "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"]) {
        const got = await run(src.readFloat32(name, raw.header[name].shape))
        expect(got).toEqual(raw.rawF32(name))
      }
    }
    const src = await run(openCheckpoint(fixtureA))
    const q = await run(src.readFloat32("model.layers.0.self_attn.q_proj.weight", [64, 64]))
    expect(q.length).toBe(64 * 64)
    expect(q.some((v) => v !== 0)).toBe(true)
  })

  it("readSafetensorsHeader reads offsets without tensor data", async () => {
    const header = await run(readSafetensorsHeader(path.join(fixtureA, "model.safetensors")))
    const raw = rawFile(path.join(fixtureA, "model.safetensors"))
    expect(header.dataStart).toBe(8 + raw.headerLength)
    expect(header.fileSize).toBe(raw.buf.length)
    expect(header.tensors.get("model.norm.weight")).toEqual({
      dtype: "F32",
      shape: [64],
      begin: raw.header["model.norm.weight"].data_offsets[0],
      end: raw.header["model.norm.weight"].data_offsets[1]
    })
    expect(header.tensors.has("__metadata__")).toBe(false)
  })
})

describe("writeSafetensors round trips", () => {
  const values = Float32Array.from([0, 1, -2, 0.5, 3.140625, -65504, 1e-3, 123.456, 1e-8, -0.1, 7, 1 / 3])

  it("F32 is exact", async () => {
    const dir = tmpDir()
    await run(writeSafetensors(path.join(dir, "model.safetensors"), [{ name: "w", dtype: "F32", shape: [3, 4], data: values }]))
    const src = await run(openCheckpoint(dir))
    expect(src.info("w")).toMatchObject({ dtype: "F32", shape: [3, 4] })
    expect(await run(src.readFloat32("w", [3, 4]))).toEqual(values)
  })

  it("F16 matches Float16Array rounding and stores 2 bytes per value", async () => {
    const dir = tmpDir()
    const file = path.join(dir, "model.safetensors")
    await run(writeSafetensors(file, [{ name: "w", dtype: "F16", shape: [12], data: values }]))
    const raw = rawFile(file)
    expect(raw.header.w).toMatchObject({ dtype: "F16", data_offsets: [0, 24] })
    const src = await run(openCheckpoint(dir))
    const got = await run(src.readFloat32("w"))
    expect(Array.from(got)).toEqual(Array.from(Float16Array.from(values)))
    expect(got[1]).toBe(1)
    expect(got[5]).toBe(-65504)
    expect(got[4]).toBe(3.140625)
    expect(Math.abs(got[7] - 123.456)).toBeLessThan(0.05)
  })

  it("BF16 keeps the top 16 bits with round-to-nearest-even", async () => {
    const dir = tmpDir()
    const file = path.join(dir, "model.safetensors")
    const data = Float32Array.from([...values, NaN, Infinity, -Infinity])
    await run(writeSafetensors(file, [{ name: "w", dtype: "BF16", shape: [data.length], data }]))
    const raw = rawFile(file)
    expect(raw.header.w.data_offsets).toEqual([0, data.length * 2])
    const got = await run((await run(openCheckpoint(dir))).readFloat32("w"))
    // Values with at most 8 significant bits are exact.
    expect([got[0], got[1], got[2], got[3], got[4], got[10]]).toEqual([0, 1, -2, 0.5, 3.140625, 7])
    for (let i = 0; i < values.length; i++) {
      expect(Math.abs(got[i] - values[i])).toBeLessThanOrEqual(Math.abs(values[i]) / 256)
    }
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
    const tie = Float32Array.from([1 + 2 ** -8, 1 + 3 * 2 ** -8])
    await run(writeSafetensors(file, [{ name: "t", dtype: "BF16", shape: [2], data: tie }]))
    const tieGot = await run((await run(openCheckpoint(dir))).readFloat32("t"))
    expect(Array.from(tieGot)).toEqual([1, 1 + 2 ** -6])
    expect(Number.isNaN(got[12])).toBe(true)
    expect(got[13]).toBe(Infinity)
    expect(got[14]).toBe(-Infinity)
  })

  it("writes an 8-byte aligned data section and pt metadata", async () => {
    const file = path.join(tmpDir(), "x.safetensors")
    await run(writeSafetensors(file, [{ name: "a", dtype: "F32", shape: [1], data: Float32Array.of(2) }]))
    const raw = rawFile(file)
    expect((8 + raw.headerLength) % 8).toBe(0)
    expect((raw.header as unknown as { __metadata__: unknown }).__metadata__).toEqual({ format: "pt" })
  })

  it("refuses data whose length does not match the shape", async () => {
    const file = path.join(tmpDir(), "model.safetensors")
    const e = await runError(writeSafetensors(file, [{ name: "w", dtype: "F32", shape: [2, 3], data: new Float32Array(5) }]))
    expect(e.message).toContain("'w'")
    expect(e.message).toContain("[2,3]")
  })

  it("a single non-standard .safetensors file is found", async () => {
    const dir = tmpDir()
    await run(writeSafetensors(path.join(dir, "consolidated.safetensors"), [{ name: "w", dtype: "F32", shape: [2], data: Float32Array.of(1, 2) }]))
    const src = await run(openCheckpoint(dir))
    expect(src.files).toEqual([path.join(dir, "consolidated.safetensors")])
    expect(Array.from(await run(src.readFloat32("w")))).toEqual([1, 2])
  })
})

/** Splits a checkpoint's tensors over two shards with an index, as transformers saves large models. */
const shardFixture = async (from: string): Promise<{ dir: string; tensors: Array<SafetensorsTensor> }> => {
  const src = await run(openCheckpoint(from))
  const tensors: Array<SafetensorsTensor> = []
  for (const name of src.names) {
    const info = src.info(name)!
    tensors.push({ name, dtype: "F32", shape: info.shape, data: await run(src.readFloat32(name)) })
  }
  const dir = tmpDir()
  const half = Math.ceil(tensors.length / 2)
  const shards = [tensors.slice(0, half), tensors.slice(half)]
  const weightMap: Record<string, string> = {}
  for (let i = 0; i < shards.length; i++) {
    const file = `model-0000${i + 1}-of-00002.safetensors`
    await run(writeSafetensors(path.join(dir, file), shards[i]))
    for (const t of shards[i]) weightMap[t.name] = file
  }
  fs.writeFileSync(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }))
  return { dir, tensors }
}

describe("sharded checkpoints", () => {
  it("read identically to the single-file fixture", async () => {
    const { dir } = await shardFixture(fixtureB)
    const src = await run(openCheckpoint(dir))
    expect(src.files).toEqual([
      path.join(dir, "model-00001-of-00002.safetensors"),
      path.join(dir, "model-00002-of-00002.safetensors")
    ])
    expect(src.info("model.norm.weight")?.file).toBe(path.join(dir, "model-00002-of-00002.safetensors"))
    expect(src.info("model.embed_tokens.weight")?.file).toBe(path.join(dir, "model-00001-of-00002.safetensors"))
    const sharded = await readAll(dir)
    const single = await readAll(fixtureB)
    expect([...sharded.keys()].sort()).toEqual([...single.keys()].sort())
    for (const [name, data] of single) expect(sharded.get(name)).toEqual(data)
  })

  it("a tensor listed in the index but absent from its shard is an error naming both", async () => {
    const { dir } = await shardFixture(fixtureA)
    const indexFile = path.join(dir, "model.safetensors.index.json")
    const index = JSON.parse(fs.readFileSync(indexFile, "utf8")) as { weight_map: Record<string, string> }
    index.weight_map["model.layers.9.mlp.up_proj.weight"] = "model-00002-of-00002.safetensors"
    fs.writeFileSync(indexFile, JSON.stringify(index))
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toContain("'model.layers.9.mlp.up_proj.weight'")
    expect(e.message).toContain("model-00002-of-00002.safetensors")
  })

  it("an index naming a missing shard fails with that file", async () => {
    const { dir } = await shardFixture(fixtureA)
    fs.rmSync(path.join(dir, "model-00002-of-00002.safetensors"))
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toContain("model-00002-of-00002.safetensors")
  })
})

describe("errors", () => {
  it("missing folder", async () => {
    const dir = path.join(tmpRoot, "does-not-exist")
    const e = await runError(openCheckpoint(dir))
    expect(e._tag).toBe("CheckpointError")
    expect(e.message).toBe(`model folder not found: ${dir}`)
    expect(e.path).toBe(dir)
  })

  it("a folder without safetensors files", async () => {
    const dir = tmpDir()
    fs.writeFileSync(path.join(dir, "config.json"), "{}")
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toContain(dir)
    expect(e.message).toContain("model.safetensors")
  })

  it("a truncated file names the file and both sizes", async () => {
    const dir = copyFixture(fixtureA)
    const file = path.join(dir, "model.safetensors")
    const raw = rawFile(file)
    const dataBytes = raw.buf.length - 8 - raw.headerLength
    fs.truncateSync(file, raw.buf.length - 1000)
    const e = await runError(openCheckpoint(dir))
    expect(e.path).toBe(file)
    expect(e.message).toBe(
      `model.safetensors is truncated: header says ${dataBytes} bytes of tensor data, file has ${dataBytes - 1000}`
    )
  })

  it("a file truncated after opening fails the read, not with garbage", async () => {
    const dir = copyFixture(fixtureA)
    const src = await run(openCheckpoint(dir))
    const file = path.join(dir, "model.safetensors")
    fs.truncateSync(file, fs.statSync(file).size - 100)
    const raw = rawFile(path.join(fixtureA, "model.safetensors"))
    const last = Object.entries(raw.header)
      .filter(([k]) => k !== "__metadata__")
      .sort((a, b) => b[1].data_offsets[1] - a[1].data_offsets[1])[0][0]
    const e = await runError(src.readFloat32(last))
    expect(e.message).toContain("truncated")
    expect(e.message).toContain("model.safetensors")
  })

  it("a garbage header length", async () => {
    const dir = copyFixture(fixtureA)
    const file = path.join(dir, "model.safetensors")
    const buf = fs.readFileSync(file)
    buf.writeBigUInt64LE(0xdeadbeefcafen, 0)
    fs.writeFileSync(file, buf)
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toContain("model.safetensors")
    expect(e.message).toContain("header length")
  })

  it("a header that is not JSON", async () => {
    const dir = copyFixture(fixtureA)
    const file = path.join(dir, "model.safetensors")
    const buf = fs.readFileSync(file)
    buf.write("#!garbage", 8, "latin1")
    fs.writeFileSync(file, buf)
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toContain("model.safetensors has a corrupt header: invalid JSON")
  })

  it("a file shorter than 8 bytes", async () => {
    const dir = tmpDir()
    fs.writeFileSync(path.join(dir, "model.safetensors"), Buffer.from([1, 2, 3]))
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toContain("model.safetensors is not a safetensors file")
  })

  /** Writes a file with a hand-made header (to express what the writer refuses to produce). */
  const writeRaw = (file: string, header: unknown, dataBytes: number): void => {
    const json = Buffer.from(JSON.stringify(header), "utf8")
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(json.length))
    fs.writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(dataBytes)]))
  }

  it("an unsupported dtype names the tensor and the dtype", async () => {
    const dir = tmpDir()
    writeRaw(path.join(dir, "model.safetensors"), { ids: { dtype: "I64", shape: [2], data_offsets: [0, 16] } }, 16)
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toBe("tensor 'ids' in model.safetensors has dtype I64, expected one of F32, F16, BF16, I32")
  })

  it("an I32 tensor (AWQ / GPTQ packed words) opens and locates, but is not read as float", async () => {
    const dir = tmpDir()
    writeRaw(path.join(dir, "model.safetensors"), { qweight: { dtype: "I32", shape: [2, 3], data_offsets: [0, 24] } }, 24)
    const source = await run(openCheckpoint(dir))
    expect(source.info("qweight")?.dtype).toBe("I32")
    expect(source.locate("qweight")).toMatchObject({ dtype: "I32", shape: [2, 3], byteLength: 24 })
    const e = await runError(source.readFloat32("qweight"))
    expect(e.message).toBe("tensor 'qweight' in model.safetensors is I32, not a float tensor")
  })

  it("data_offsets inconsistent with shape x dtype size", async () => {
    const dir = tmpDir()
    writeRaw(path.join(dir, "model.safetensors"), { w: { dtype: "F16", shape: [2, 3], data_offsets: [0, 24] } }, 24)
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toContain("'w'")
    expect(e.message).toContain("expected 12 bytes for F16 [2,3]")
  })

  it("a missing tensor names the folder and its files", async () => {
    const src = await run(openCheckpoint(fixtureA))
    const e = await runError(src.readFloat32("model.layers.7.mlp.up_proj.weight"))
    expect(e.message).toBe(`tensor 'model.layers.7.mlp.up_proj.weight' not found in ${fixtureA} (files: model.safetensors)`)
  })

  it("a wrong shape names the file, the found and the expected shape", async () => {
    const src = await run(openCheckpoint(fixtureA))
    const e = await runError(src.readFloat32("model.layers.0.mlp.down_proj.weight", [176, 64]))
    expect(e.message).toBe("tensor 'model.layers.0.mlp.down_proj.weight' in model.safetensors has shape [64,176], expected [176,64]")
    expect(e.path).toBe(path.join(fixtureA, "model.safetensors"))
    const e2 = await runError(src.readFloat32("model.norm.weight", [64, 1]))
    expect(e2.message).toContain("has shape [64], expected [64,1]")
  })

  it("several .safetensors files without an index", async () => {
    const dir = tmpDir()
    for (const f of ["a.safetensors", "b.safetensors"]) {
      await run(writeSafetensors(path.join(dir, f), [{ name: f, dtype: "F32", shape: [1], data: Float32Array.of(1) }]))
    }
    const e = await runError(openCheckpoint(dir))
    expect(e.message).toContain("a.safetensors, b.safetensors")
    expect(e.message).toContain("model.safetensors.index.json")
  })
})
