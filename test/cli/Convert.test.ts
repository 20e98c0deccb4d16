// `chorus convert` as a user runs it: a checkpoint in, ONNX shards and a manifest out.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { fixtureDir, repoRoot } from "../support/fixtures.ts"

describe("chorus convert", () => {
  it("writes two shards and a manifest that generate can use", () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "chorus-convert-")), "onnx")
    const r = spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "convert", "--model", fixtureDir("tiny-llama3-b"), "--out", out, "--shards", "2"], {
      encoding: "utf8",
      timeout: 120_000
    })
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/^converted .*tiny-llama3-b -> .*onnx \(2 shard\(s\), float32, [\d.]+ s\)\n$/)
    const manifest = JSON.parse(fs.readFileSync(path.join(out, "chorus-model.json"), "utf8"))
    expect(manifest.shards.map((s: { layers: Array<number> }) => s.layers)).toEqual([[0, 2], [2, 3]])
    for (const s of manifest.shards) {
      expect(fs.statSync(path.join(out, s.file)).size).toBeGreaterThan(0)
      expect(fs.statSync(path.join(out, `${s.file}.data`)).size).toBeGreaterThan(0)
    }
  })

  it("refuses a missing --out with one line and exit 2", () => {
    const r = spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "convert", "--model", fixtureDir("tiny-llama3-b")], { encoding: "utf8" })
    expect(r.status).toBe(2)
    expect(r.stderr).toBe("chorus: --out DIR is required\n")
  })
})
