/**
 * The web chat page: the files of `src/http/static/` served as they are (no build step), `/` being `index.html`.
 * Read once at start-up; they are small.
 */
import { Effect } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const STATIC_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), "static")

const TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon"
}

export const StaticRoutes = HttpRouter.use(Effect.fn(function*(router) {
  const files = fs.existsSync(STATIC_DIR) ? fs.readdirSync(STATIC_DIR).filter((f) => TYPES[path.extname(f)] !== undefined) : []
  for (const file of files) {
    const body = fs.readFileSync(path.join(STATIC_DIR, file))
    const response = HttpServerResponse.uint8Array(body, { contentType: TYPES[path.extname(file)]!, headers: { "cache-control": "no-cache" } })
    yield* router.add("GET", `/${file}`, Effect.succeed(response))
    if (file === "index.html") yield* router.add("GET", "/", Effect.succeed(response))
  }
}))
