/**
 * Content digests of checkpoint files, fast enough for a first start: each file is cut into 64 MiB pieces hashed
 * with sha256 in parallel worker threads, and the file's digest is the sha256 of its size and its pieces' digests (a
 * one-level hash tree). One thread hashes about 1.2 GB/s on a 2-core VM, so the flat sha256 of an 8B checkpoint
 * (16 GB) cost its first start 8-13 s before the conversion could begin; the pieces spread that over every core.
 *
 * The digest names content, not a path: two copies of a checkpoint share one conversion in the cache.
 */
import { Effect } from "effect"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import { Piscina } from "piscina"
import { moduleUrl } from "../core/ModuleUrl.ts"
import digestRange, { type DigestTask } from "./DigestWorker.ts"

const PIECE = 64 << 20
const scheme = (pieceBytes: number) => `sha256-tree-${pieceBytes}`
/** Names the scheme in every digest, so a memo written by another scheme is never mistaken for this one. */
export const DIGEST_SCHEME = scheme(PIECE)

/** One thread per core, at most 16: hashing is CPU-bound (the bytes usually come from the page cache). */
export const defaultDigestThreads = (): number => Math.min(16, Math.max(1, os.availableParallelism()))

const workerUrl = moduleUrl("./DigestWorker.ts", import.meta.url)

/**
 * `<scheme>:<hex>` of each file, in order. Inputs of one piece a file are hashed on the calling thread. `pieceBytes`
 * is for tests (it is part of the scheme's name).
 */
export const digestFiles = (
  files: ReadonlyArray<string>,
  options: { readonly threads?: number; readonly pieceBytes?: number } = {}
): Effect.Effect<Array<string>, Error> =>
  Effect.gen(function*() {
    const threads = options.threads ?? defaultDigestThreads()
    const piece = options.pieceBytes ?? PIECE
    const sizes = yield* Effect.tryPromise({
      try: () => Promise.all(files.map(async (f) => (await fs.promises.stat(f)).size)),
      catch: (e) => (e instanceof Error ? e : new Error(String(e)))
    })
    const tasks = files.map((file, i) => {
      const size = sizes[i]!
      const pieces: Array<DigestTask> = []
      for (let offset = 0; offset < size || offset === 0; offset += piece) pieces.push({ file, offset, length: Math.min(piece, size - offset) })
      return pieces
    })
    const total = tasks.reduce((n, t) => n + t.length, 0)
    const pieceDigests = total <= files.length || threads <= 1
      ? yield* Effect.try({ try: () => tasks.map((t) => t.map(digestRange)), catch: (e) => (e instanceof Error ? e : new Error(String(e))) })
      : yield* Effect.scoped(Effect.gen(function*() {
        const pool = yield* Effect.acquireRelease(
          Effect.sync(() => new Piscina({ filename: workerUrl.href, minThreads: 0, maxThreads: Math.min(threads, total), idleTimeout: 1000 })),
          (p) => Effect.promise(() => p.close({ force: true }))
        )
        return yield* Effect.tryPromise({
          try: () => Promise.all(tasks.map((t) => Promise.all(t.map((task) => pool.run(task) as Promise<string>)))),
          catch: (e) => (e instanceof Error ? e : new Error(String(e)))
        })
      }))
    return pieceDigests.map((pieces, i) => {
      const root = crypto.createHash("sha256").update(`${scheme(piece)}\n${sizes[i]}\n`)
      for (const d of pieces) root.update(d)
      return `${scheme(piece)}:${root.digest("hex")}`
    })
  })
