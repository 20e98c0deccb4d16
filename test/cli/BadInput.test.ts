// The CLI's answer to bad input: one line naming the problem, exit code 2, and nothing half-written in the cache.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { fixtureDir, repoRoot } from "../support/fixtures.ts"

const cache = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-badinput-cache-"))
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-badinput-"))

const chorus = (...args: Array<string>) => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), ...args], {
    // CHORUS_CUDA_OPS names a library that is not there: `--linear-kernels chorus` must say how to build it.
    env: { ...process.env, CHORUS_CACHE: cache, CHORUS_DEBUG: "", CHORUS_CUDA_OPS: path.join(cache, "no-such-libchorus_cuda_ops.so") },
    encoding: "utf8",
    timeout: 120_000
  })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** Every folder under the cache, recursively: a failed run must leave no partial conversion behind. */
const cacheEntries = (): Array<string> => {
  const out: Array<string> = []
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name)
      out.push(path.relative(cache, p))
      if (e.isDirectory()) walk(p)
    }
  }
  walk(cache)
  return out.filter((p) => !p.startsWith("hashes.json"))
}

const copyFixture = (name: string, edit: (dir: string) => void) => {
  const dir = path.join(scratch, name)
  fs.cpSync(fixtureDir("tiny-llama3-a"), dir, { recursive: true })
  edit(dir)
  return dir
}

const truncated = copyFixture("truncated", (dir) => {
  const file = path.join(dir, "model.safetensors")
  fs.truncateSync(file, Math.floor(fs.statSync(file).size / 2))
})
const gpt2 = copyFixture("gpt2", (dir) => {
  const file = path.join(dir, "config.json")
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, "utf8")), model_type: "gpt2" }))
})
const model = fixtureDir("tiny-llama3-a")
const prompt20 = Array.from({ length: 20 }, (_, i) => i + 1).join(",")

describe("chorus generate with bad input", () => {
  it.each([
    ["a missing model folder", ["--model", path.join(scratch, "nope"), "--token-ids", "1,2"], /model folder not found: .*nope/],
    ["a truncated safetensors file", ["--model", truncated, "--token-ids", "1,2"], /model\.safetensors is truncated/],
    ["an unknown model_type", ["--model", gpt2, "--token-ids", "1,2"], /unknown model_type 'gpt2'/],
    ["a prompt longer than the context", ["--model", model, "--token-ids", prompt20, "--context-length", "16"], /prompt has 20 tokens but the context holds 16/],
    ["top_p 1.5", ["--model", model, "--token-ids", "1,2", "--top-p", "1.5"], /top_p must be greater than 0 and at most 1, got 1\.5/],
    ["a negative temperature", ["--model", model, "--token-ids", "1,2", "--temperature", "-1"], /temperature must be at least 0 and at most 100, got -1/],
    ["a non-numeric flag", ["--model", model, "--token-ids", "1,x"], /--token-ids expects a number, got 'x'/],
    ["an unknown flag", ["--model", model, "--token-ids", "1", "--bogus", "1"], /unknown option --bogus/],
    ["an unknown device", ["--model", model, "--token-ids", "1,2", "--device", "tpu"], /--device must be cpu, cuda, cuda:N, cuda:A,B,... or cuda:all, got 'tpu'/],
    ["a CUDA option without a CUDA device", ["--model", model, "--token-ids", "1,2", "--cuda-option", "use_tf32=0"], /--cuda-option needs --device cuda/],
    ["an attention layout without a CUDA device", ["--model", model, "--token-ids", "1,2", "--attention", "paged"], /--attention needs --device cuda/],
    ["an unknown attention layout", ["--model", model, "--token-ids", "1,2", "--device", "cuda", "--attention", "flash"], /--attention must be paged or fused, got 'flash'/],
    ["a decode kernel without a CUDA device", ["--model", model, "--token-ids", "1,2", "--decode-attention", "xqa"], /--decode-attention needs --device cuda/],
    ["an unknown decode kernel", ["--model", model, "--token-ids", "1,2", "--device", "cuda", "--decode-attention", "lean"], /--decode-attention must be xqa, flash or chorus, got 'lean'/],
    ["Chorus's attention in float32", ["--model", model, "--token-ids", "1,2", "--device", "cuda", "--decode-attention", "chorus"], /--decode-attention chorus needs --dtype float16/],
    ["Chorus's attention not built", ["--model", model, "--token-ids", "1,2", "--device", "cuda", "--dtype", "float16", "--decode-attention", "chorus"], /--decode-attention chorus needs .*no-such-libchorus_cuda_ops\.so: build it with npm run build:cuda-ops/],
    ["linear kernels without a CUDA device", ["--model", model, "--token-ids", "1,2", "--linear-kernels", "chorus"], /--linear-kernels needs --device cuda/],
    ["unknown linear kernels", ["--model", model, "--token-ids", "1,2", "--device", "cuda", "--linear-kernels", "fast"], /--linear-kernels must be auto, ort or chorus, got 'fast'/],
    ["Chorus's kernels in float32", ["--model", model, "--token-ids", "1,2", "--device", "cuda", "--linear-kernels", "chorus"], /--linear-kernels chorus needs --dtype float16/],
    ["Chorus's kernels not built", ["--model", model, "--token-ids", "1,2", "--device", "cuda", "--dtype", "float16", "--linear-kernels", "chorus"], /--linear-kernels chorus needs .*no-such-libchorus_cuda_ops\.so: build it with npm run build:cuda-ops/],
    ["paged attention in float32", ["--model", model, "--token-ids", "1,2", "--device", "cuda", "--attention", "paged"], /--attention paged needs --dtype float16 or bfloat16/],
    ["a token id outside the vocabulary", ["--model", model, "--token-ids", "1,99999"], /token id 99999 is outside the vocabulary \[0, 512\)/]
  ])("%s: one line, exit 2", (_, args, message) => {
    const before = cacheEntries().filter((e) => e.startsWith("converted"))
    const r = chorus("generate", ...args, "--max-tokens", "2")
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(message)
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
    expect(r.stderr).toMatch(/^chorus: /)
    expect(r.stdout).toBe("")
    const after = cacheEntries().filter((e) => e.startsWith("converted"))
    // No temp or partial folders: whatever is in the cache now is a complete conversion with its manifest.
    for (const entry of after.filter((e) => !before.includes(e) && e.split(path.sep).length === 2)) {
      expect(fs.existsSync(path.join(cache, entry, "chorus-model.json"))).toBe(true)
    }
    expect(after.filter((e) => /tmp|partial/.test(e))).toEqual([])
  })

  it("an unknown command is one line, exit 2", () => {
    const r = chorus("frobnicate")
    expect(r.code).toBe(2)
    expect(r.stderr.trim()).toBe("chorus: unknown command 'frobnicate' (commands: serve, generate, chat, convert, worker, bench)")
  })
})
