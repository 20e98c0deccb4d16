// A conversion cache of its own for every test of a file: CHORUS_CACHE points at a fresh folder under a temporary
// root before each test and is restored after; the root goes when the file's tests end.
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, afterEach, beforeEach } from "vitest"

export const cachePerTest = (prefix: string): { readonly root: string; readonly cache: () => string } => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
  const saved = process.env.CHORUS_CACHE
  let n = 0
  let cache = ""
  beforeEach(() => {
    cache = path.join(root, `cache-${n++}`)
    process.env.CHORUS_CACHE = cache
  })
  afterEach(() => {
    if (saved === undefined) delete process.env.CHORUS_CACHE
    else process.env.CHORUS_CACHE = saved
  })
  return { root, cache: () => cache }
}
