/**
 * The on-disk cache (`$CHORUS_CACHE`, else `~/.cache/chorus`) and the one way anything is written into it: built in a
 * temporary sibling, then renamed into place. A reader never sees half an entry, a crash leaves only a `.tmp-*`
 * folder, and concurrent builders of the same entry settle on one (the first complete rename wins).
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { ConversionError } from "../core/Errors.ts"

/** `$CHORUS_CACHE`, else `~/.cache/chorus`. */
export const chorusCacheDir = (): string => {
  const env = process.env["CHORUS_CACHE"]
  return env !== undefined && env !== "" ? path.resolve(env) : path.join(os.homedir(), ".cache", "chorus")
}

const failure = (what: string) => (cause: unknown) =>
  new ConversionError({ message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}` })

/**
 * Writes the folder `finalDir` atomically: `build` fills a temporary sibling, which is then renamed. When another
 * process finished the same entry first (`isComplete(finalDir)`), theirs is kept; a stale incomplete entry is
 * replaced. The temporary folder is removed on failure or interruption.
 */
export const writeCacheFolder = <E>(
  finalDir: string,
  isComplete: (dir: string) => boolean,
  build: (tmp: string) => Effect.Effect<void, E>
): Effect.Effect<void, E | ConversionError> =>
  Effect.asVoid(writeCacheFolderNamedBy(path.dirname(finalDir), path.basename(finalDir), isComplete, (tmp) => Effect.as(build(tmp), finalDir)))

/**
 * As `writeCacheFolder`, for an entry whose name is known only once it is built: `build` fills a temporary folder in
 * `parent` and returns the entry's final path there (a conversion named by a content digest computed meanwhile).
 */
export const writeCacheFolderNamedBy = <E>(
  parent: string,
  hint: string,
  isComplete: (dir: string) => boolean,
  build: (tmp: string) => Effect.Effect<string, E>
): Effect.Effect<string, E | ConversionError> =>
  Effect.acquireUseRelease(
    Effect.tryPromise({
      try: async () => {
        await fs.promises.mkdir(parent, { recursive: true })
        return fs.promises.mkdtemp(path.join(parent, `.tmp-${hint.slice(0, 24)}-`))
      },
      catch: failure(`cannot create a temporary folder in ${parent}`)
    }),
    (tmp) =>
      build(tmp).pipe(
        Effect.tap((finalDir) =>
          Effect.uninterruptible(Effect.tryPromise({
            try: async () => {
              try {
                await fs.promises.rename(tmp, finalDir)
              } catch (cause) {
                const code = (cause as { code?: unknown }).code
                if (code !== "ENOTEMPTY" && code !== "EEXIST") throw cause
                if (isComplete(finalDir)) return
                await fs.promises.rm(finalDir, { recursive: true, force: true })
                await fs.promises.rename(tmp, finalDir)
              }
            },
            catch: failure(`cannot move the new cache entry into ${finalDir}`)
          }))
        )
      ),
    // After a successful rename the temporary folder is gone and this does nothing.
    (tmp) => Effect.promise(() => fs.promises.rm(tmp, { recursive: true, force: true }).catch(() => undefined))
  )

/** Replaces `file` atomically with `data` (a unique temporary file in the same folder, then a rename). */
export const writeCacheFile = async (file: string, data: string | Uint8Array): Promise<void> => {
  await fs.promises.mkdir(path.dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString("hex")}.tmp`
  try {
    await fs.promises.writeFile(tmp, data)
    await fs.promises.rename(tmp, file)
  } catch (cause) {
    await fs.promises.rm(tmp, { force: true }).catch(() => undefined)
    throw cause
  }
}
