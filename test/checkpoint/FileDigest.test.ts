import { Effect } from "effect"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { DIGEST_SCHEME, digestFiles } from "../../src/checkpoint/FileDigest.ts"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-digest-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const write = (name: string, bytes: Uint8Array) => {
  const file = path.join(dir, name)
  fs.writeFileSync(file, bytes)
  return file
}
const sha = (b: Uint8Array | string) => crypto.createHash("sha256").update(b).digest("hex")

/** The scheme written out by hand: sha256 over the scheme, the size and the pieces' sha256 in hex. */
const expected = (bytes: Uint8Array, piece: number) => {
  const root = crypto.createHash("sha256").update(`sha256-tree-${piece}\n${bytes.length}\n`)
  for (let o = 0; o < bytes.length || o === 0; o += piece) root.update(sha(bytes.subarray(o, Math.min(bytes.length, o + piece))))
  return `sha256-tree-${piece}:${root.digest("hex")}`
}

describe("digestFiles", () => {
  const big = crypto.randomBytes(5 * 1024 * 1024 + 123) // 6 pieces of 1 MiB, the last one short
  const small = crypto.randomBytes(1000)
  const files = [write("big.bin", big), write("small.bin", small), write("empty.bin", new Uint8Array(0))]

  it("is a one-level sha256 tree over fixed pieces, the same on worker threads and on the calling thread", async () => {
    const want = [expected(big, 1 << 20), expected(small, 1 << 20), expected(new Uint8Array(0), 1 << 20)]
    expect(await Effect.runPromise(digestFiles(files, { pieceBytes: 1 << 20, threads: 4 }))).toEqual(want)
    expect(await Effect.runPromise(digestFiles(files, { pieceBytes: 1 << 20, threads: 1 }))).toEqual(want)
    // the default scheme (64 MiB pieces) names itself
    const [d] = await Effect.runPromise(digestFiles([files[1]!]))
    expect(d).toBe(expected(small, 64 << 20))
    expect(d!.startsWith(`${DIGEST_SCHEME}:`)).toBe(true)
  })

  it("changes with one byte of any piece, and with the length", async () => {
    const before = await Effect.runPromise(digestFiles([files[0]!], { pieceBytes: 1 << 20, threads: 3 }))
    const edited = Uint8Array.from(big)
    edited[3 * (1 << 20) + 17] ^= 1
    const after = await Effect.runPromise(digestFiles([write("edited.bin", edited)], { pieceBytes: 1 << 20, threads: 3 }))
    expect(after).not.toEqual(before)
    const longer = await Effect.runPromise(digestFiles([write("longer.bin", Buffer.concat([big, Buffer.from([0])]))], { pieceBytes: 1 << 20, threads: 3 }))
    expect(longer).not.toEqual(before)
  })

  it("fails with the file's name when it is missing", async () => {
    const error = await Effect.runPromise(Effect.flip(digestFiles([path.join(dir, "missing.bin")])))
    expect(error.message).toContain("missing.bin")
  })
})
