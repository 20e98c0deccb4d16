/**
 * The package's version, read from its package.json at run time: `package.json` sits two folders above this module
 * both in the source tree (src/cli/) and in the built package (dist/cli/).
 */
import { Schema } from "effect"
import * as fs from "node:fs"

const PackageJson = Schema.Struct({ version: Schema.String })

export const packageVersion = (): string =>
  Schema.decodeUnknownSync(PackageJson)(JSON.parse(fs.readFileSync(new URL("../../package.json", import.meta.url), "utf8"))).version
