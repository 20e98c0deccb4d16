/**
 * The digest worker: sha256 of one byte range of a file, in a piscina thread (`FileDigest.ts` runs the pool). Blocking
 * reads are fine here: they hold only this thread.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"

export interface DigestTask {
  readonly file: string
  readonly offset: number
  readonly length: number
}

const READ = 8 << 20
// One read buffer per thread, made on first use: a task never overlaps another in the same thread.
let buffer: Buffer | undefined

export default function digestRange(task: DigestTask): string {
  buffer ??= Buffer.allocUnsafe(READ)
  const hash = crypto.createHash("sha256")
  const fd = fs.openSync(task.file, "r")
  try {
    let done = 0
    while (done < task.length) {
      const n = fs.readSync(fd, buffer, 0, Math.min(READ, task.length - done), task.offset + done)
      if (n === 0) throw new Error(`${task.file} ended at ${task.offset + done} bytes while hashing (it changed during the read?)`)
      hash.update(buffer.subarray(0, n))
      done += n
    }
  } finally {
    fs.closeSync(fd)
  }
  return hash.digest("hex")
}
