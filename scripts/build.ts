/**
 * `npm run build` (also the `prepare` script, so `npm pack`, `npm publish` and `npm install <git url>` build): the
 * package's JavaScript and declarations in dist/ (tsconfig.build.json), plus the files the runtime reads beside its
 * modules (the web chat page). dist/ is rebuilt from nothing so a renamed module leaves no stale file behind.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const dist = path.join(root, "dist")

/** Non-TypeScript files under src/ that modules read at run time, relative to src/. */
const ASSETS = ["http/static"]

fs.rmSync(dist, { recursive: true, force: true })
const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc")
execFileSync(process.execPath, [tsc, "-p", path.join(root, "tsconfig.build.json")], { stdio: "inherit" })
for (const asset of ASSETS) fs.cpSync(path.join(root, "src", asset), path.join(dist, asset), { recursive: true })
