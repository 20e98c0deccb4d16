// The examples are part of the product: they must type-check (tsc includes examples/) and run as users run them;
// the `chorus-source` condition makes their `import "chorus"` load src/ rather than a possibly stale dist/.
import { spawnSync } from "node:child_process"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const run = (file: string) =>
  spawnSync(process.execPath, ["--conditions=chorus-source", path.join(repoRoot, "examples", file)], { cwd: repoRoot, encoding: "utf8", timeout: 120_000 })

describe("examples", () => {
  it("embed-engine.ts answers three users in shared decode steps", () => {
    const r = run("embed-engine.ts")
    expect(r.status).toBe(0)
    expect(r.stdout.match(/^Q: /gm)).toHaveLength(3)
    const [, steps, shared] = r.stdout.match(/tokens in (\d+) steps, (\d+) of them shared/)!
    expect(Number(shared)).toBeGreaterThan(0)
    expect(Number(shared)).toBeLessThanOrEqual(Number(steps))
  })

  it("server-in-node-app.ts starts the server, asks it, stops it", () => {
    const r = run("server-in-node-app.ts")
    expect(r.status).toBe(0)
    // The server's own start-up log (the KV pool line) may come first; the example's lines follow in order.
    const own = r.stdout.split("\n").filter((l) => !/^\S+ INFO /.test(l)).join("\n")
    expect(own).toMatch(/^serving at http:\/\/127\.0\.0\.1:\d+\nanswer: ".*" \(8 tokens\)\nstopped\n$/)
  })

  it("server-in-effect-app.ts runs the server as a layer of an Effect app", () => {
    const r = run("server-in-effect-app.ts")
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/chorus-bench at http:\/\/127\.0\.0\.1:\d+: ready=\{"status":"ready","shards":\[\{"index":0,"state":"ready","restarts":0\}\]\}; chorus:generation_tokens_total\{model_name="chorus-bench"\} 5/)
  })

  it("custom-adapter.ts runs the engine over a custom adapter", () => {
    const r = run("custom-adapter.ts")
    expect(r.status).toBe(0)
    expect(r.stdout).toMatch(/^chorus-default-llama3-plain: ".*"$/m)
  })
})
