/**
 * The web chat page: the files of `src/http/static/` served as they are (no build step), `/` being `index.html`,
 * and the browser builds of the libraries it imports (Markdown, sanitizing) from node_modules under `/vendor/`,
 * so the page needs nothing from outside the server. Read once at start-up; they are small.
 */
import { Effect } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const STATIC_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), "static")

/** `/vendor/<name>` -> the package whose ESM entry is that file (both entries are self-contained browser builds). */
const VENDOR: Readonly<Record<string, string>> = {
  "marked.esm.js": "marked",
  "purify.es.mjs": "dompurify"
}

const TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
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
  for (const [name, pkg] of Object.entries(VENDOR)) {
    const file = fileURLToPath(import.meta.resolve(pkg))
    if (path.basename(file) !== name) throw new Error(`${pkg}'s entry is ${file}, not the browser build ${name}`)
    const body = fs.readFileSync(file)
    // Versioned by the lockfile, not the URL: let the browser revalidate like the page's own files.
    const response = HttpServerResponse.uint8Array(body, { contentType: TYPES[path.extname(name)]!, headers: { "cache-control": "no-cache" } })
    yield* router.add("GET", `/vendor/${name}`, Effect.succeed(response))
  }
}))
