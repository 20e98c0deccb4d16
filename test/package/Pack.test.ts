// The package as users get it: `npm pack` (which builds dist/ through the prepare script), `npm install` of the
// tarball into an empty project, then the three things a user does with it: `npx chorus --version`, `npx chorus
// serve` answering /health and a chat completion, and `import { Engine } from "chorus"` type-checked and run.
import { spawn, spawnSync, type SpawnSyncOptions } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

const work = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-pack-"))
const consumer = path.join(work, "consumer")
const version = JSON.parse(fs.readFileSync(path.join(repoRoot, "package.json"), "utf8")).version as string
// The consumer runs on this Node (24: the package's engines) first on its PATH, as it would with Node 24 installed.
const env = {
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CHORUS_") && !k.startsWith("npm_"))),
  PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH}`,
  // onnxruntime-node's postinstall fetches CUDA files from a host this machine cannot reach (README, "Embedding").
  ONNXRUNTIME_NODE_INSTALL: "skip"
}

const run = (command: string, args: ReadonlyArray<string>, options: SpawnSyncOptions = {}) => {
  const r = spawnSync(command, args, { env, encoding: "utf8", timeout: 240_000, ...options })
  return { code: r.status, stdout: String(r.stdout), stderr: String(r.stderr) }
}

const CONSUMER_TS = `import { Engine, type LoadedModel, type ModelAdapter, type PromptOptions, type ShardSpec, type TextCodec } from "chorus"
import { Llama3Adapter, type Llama3Options } from "chorus/adapters/llama3"
import { Effect, Stream } from "effect"

// The model-adapter contract is exported from the package root (it lives in core), and the Llama 3 adapter meets it.
export const contract: ModelAdapter<Llama3Options> = Llama3Adapter
export type ContractParts = readonly [LoadedModel, PromptOptions, ShardSpec, TextCodec]
// @ts-expect-error The contract's types are real: a number is not an adapter (this fails if ModelAdapter were any).
export const notAnAdapter: ModelAdapter<Llama3Options> = 1

const answer = Effect.gen(function*() {
  const engine = yield* Engine
  return yield* engine.generate({ input: { type: "chat", messages: [{ role: "user", content: "Hi" }] }, maxTokens: 4, sampling: { seed: 1 } }).pipe(
    Stream.runFold(() => "", (text, event) => (event._tag === "Token" || event._tag === "Finished" ? text + event.text : text))
  )
})

// @ts-expect-error The package's types are real: the Engine service is not a number (this fails if it were any).
export const notANumber: number = Engine

const text: string = await Effect.runPromise(answer.pipe(Effect.provide(Engine.layer(Llama3Adapter, {}, { maxNumSeqs: 1 }))))
console.log(\`answer: \${JSON.stringify(text)}\`)
`

let tarball = ""

beforeAll(() => {
  const packed = run("npm", ["pack", "--json", "--pack-destination", work], { cwd: repoRoot })
  expect(packed.code, packed.stderr).toBe(0)
  const [info] = JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>
  tarball = path.join(work, info!.filename)
  const files = info!.files.map((f) => f.path)
  // Compiled JavaScript, declarations and the web page; no sources, tests, fixtures or benchmark results.
  expect(files).toEqual(expect.arrayContaining(["dist/index.js", "dist/index.d.ts", "dist/cli/main.js", "dist/http/static/index.html", "dist/core/shard/ShardWorker.js"]))
  expect(files.filter((f) => !/^(dist\/|README\.md$|package\.json$|docs\/[a-z]+\.md$)/.test(f))).toEqual([])
  expect(files.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))).toEqual([])

  fs.mkdirSync(consumer)
  fs.writeFileSync(path.join(consumer, "package.json"), JSON.stringify({ name: "chorus-consumer", private: true, type: "module" }))
  const installed = run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", tarball], { cwd: consumer })
  expect(installed.code, installed.stderr).toBe(0)
}, 300_000)

afterAll(() => fs.rmSync(work, { recursive: true, force: true }))

describe("the npm package", () => {
  it("npx chorus --version", () => {
    expect(run("npx", ["chorus", "--version"], { cwd: consumer })).toMatchObject({ code: 0, stdout: `chorus ${version}\n` })
  })

  it("npx chorus serve: /health and a chat completion on the default model", async () => {
    // Its own process group, so that the whole npx -> chorus chain can be stopped.
    const child = spawn("npx", ["chorus", "serve", "--port", "0"], { cwd: consumer, env, detached: true, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout.on("data", (d) => (out += d))
    child.stderr.on("data", (d) => (err += d))
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve))
    try {
      const started = Date.now()
      while (!/serving chorus-default-llama3 at (http:\/\/[^/]+)\//.test(out)) {
        if (child.exitCode !== null || Date.now() - started > 120_000) throw new Error(`chorus serve did not start:\n${out}${err}`)
        await new Promise((r) => setTimeout(r, 50))
      }
      const url = out.match(/at (http:\/\/[^/]+)\//)![1]!
      expect((await fetch(`${url}/health`)).status).toBe(200)
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none" })
      const completion = await client.chat.completions.create({
        model: "chorus-default-llama3",
        messages: [{ role: "user", content: "Hello" }],
        max_tokens: 4,
        seed: 1
      })
      expect(completion.choices[0]!.message.content).toEqual(expect.any(String))
      expect(completion.usage!.completion_tokens).toBeGreaterThan(0)
    } finally {
      process.kill(-child.pid!, "SIGTERM")
      await exited
    }
    expect(err).toBe("")
  })

  it("import { Engine } from \"chorus\": type-checked by tsc in the consumer, then run", () => {
    fs.writeFileSync(path.join(consumer, "consumer.ts"), CONSUMER_TS)
    fs.writeFileSync(
      path.join(consumer, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: { target: "es2024", module: "nodenext", moduleResolution: "nodenext", strict: true, noEmit: true, skipLibCheck: true, lib: ["es2024", "dom"], types: [] },
        files: ["consumer.ts"]
      })
    )
    const tsc = run(process.execPath, [path.join(repoRoot, "node_modules/typescript/bin/tsc"), "-p", consumer], { cwd: consumer })
    expect(tsc.stdout + tsc.stderr).toBe("")
    expect(tsc.code).toBe(0)
    const ran = run(process.execPath, ["consumer.ts"], { cwd: consumer })
    expect(ran.stderr).toBe("")
    expect(ran.stdout).toMatch(/^answer: ".*"\n$/s)
    expect(ran.code).toBe(0)
  })
})
