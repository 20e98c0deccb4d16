/**
 * `npm run build:native`: builds native/build/Release/chorus_ort.node, the IO-binding ONNX Runtime addon
 * (docs/native.md). One command, never part of `npm install` or `npm test`.
 *
 * `npm run build:cuda-ops` (`--cuda-ops`): builds native/build-cuda/libchorus_cuda_ops.so, Chorus's CUDA kernels
 * as an ORT custom-op library (native/cuda/, `--linear-kernels chorus`), with nvcc (`NVCC`, else `nvcc` on PATH, else
 * /usr/local/cuda/bin/nvcc) for Hopper and Ampere (sm_90, sm_80, and PTX for newer cards).
 *
 * Headers: `ORT_INCLUDE_DIR` (a folder holding onnxruntime_cxx_api.h, e.g. `include/` of an ORT release) when set,
 * else Debian trixie's libonnxruntime-dev (1.21, C API 21), fetched once with `apt-get download` into
 * node_modules/.cache/chorus-ort-headers without installing anything. The compiler is node-gyp as npm ships it;
 * Node's own headers come from /usr/include/node when present (N-API is ABI-stable, so an addon built against
 * Node 20's headers loads in Node 24), else node-gyp fetches those of the running Node.
 */
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const nativeDir = path.dirname(fileURLToPath(import.meta.url))
const repoRoot = path.dirname(nativeDir)
const ortLibDir = path.join(repoRoot, "node_modules/onnxruntime-node/bin/napi-v6/linux/x64")
const headerCache = path.join(repoRoot, "node_modules/.cache/chorus-ort-headers")
const HEADER = "onnxruntime_cxx_api.h"

const fail = (message: string): never => {
  console.error(`build:native: ${message}`)
  process.exit(1)
}

const fetchDebianHeaders = (): string => {
  const include = path.join(headerCache, "usr/include/onnxruntime")
  if (fs.existsSync(path.join(include, HEADER))) return include
  console.log("build:native: fetching ONNX Runtime headers (Debian trixie libonnxruntime-dev) with apt-get download")
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-ortdev-"))
  fs.mkdirSync(path.join(work, "lists/partial"), { recursive: true })
  fs.mkdirSync(path.join(work, "cache/archives/partial"), { recursive: true })
  fs.writeFileSync(path.join(work, "sources.list"), "deb http://deb.debian.org/debian trixie main\n")
  const o = [
    `Dir::Etc::SourceList=${work}/sources.list`,
    "Dir::Etc::SourceParts=/dev/null",
    `Dir::State::Lists=${work}/lists`,
    `Dir::Cache=${work}/cache`
  ].flatMap((x) => ["-o", x])
  const apt = (args: ReadonlyArray<string>) => {
    const r = spawnSync("apt-get", [...o, ...args], { cwd: work, stdio: ["ignore", "inherit", "inherit"] })
    if (r.error !== undefined || r.status !== 0) {
      fail(`apt-get ${args[0]} failed (${r.error?.message ?? `exit ${r.status}`}); set ORT_INCLUDE_DIR to a folder with ${HEADER} ` +
        "(include/ of an ONNX Runtime >= 1.21 release) instead")
    }
  }
  apt(["update"])
  apt(["download", "libonnxruntime-dev"])
  const deb = fs.readdirSync(work).find((f) => f.startsWith("libonnxruntime-dev_") && f.endsWith(".deb"))
  if (deb === undefined) return fail(`apt-get download left no libonnxruntime-dev_*.deb in ${work}`)
  fs.mkdirSync(headerCache, { recursive: true })
  execFileSync("dpkg", ["-x", path.join(work, deb), headerCache])
  fs.rmSync(work, { recursive: true, force: true })
  if (!fs.existsSync(path.join(include, HEADER))) fail(`${deb} holds no usr/include/onnxruntime/${HEADER}`)
  return include
}

const headers = (): string => {
  const given = process.env.ORT_INCLUDE_DIR
  if (given === undefined || given === "") return fetchDebianHeaders()
  const dir = path.resolve(given)
  for (const candidate of [dir, path.join(dir, "onnxruntime")]) if (fs.existsSync(path.join(candidate, HEADER))) return candidate
  return fail(`ORT_INCLUDE_DIR=${given} holds no ${HEADER}`)
}

/** node-gyp from the npm that runs this script (or the npm on PATH): npm always bundles it. */
const nodeGyp = (): string => {
  const candidates: Array<string> = []
  const execPath = process.env.npm_execpath
  if (execPath !== undefined) candidates.push(path.resolve(path.dirname(execPath), "../node_modules/node-gyp/bin/node-gyp.js"))
  try {
    const npm = fs.realpathSync(execFileSync("sh", ["-c", "command -v npm"], { encoding: "utf8" }).trim())
    candidates.push(path.resolve(path.dirname(npm), "../node_modules/node-gyp/bin/node-gyp.js"))
  } catch { /* no npm on PATH */ }
  candidates.push(path.join(repoRoot, "node_modules/node-gyp/bin/node-gyp.js"))
  const found = candidates.find((c) => fs.existsSync(c))
  return found ?? fail(`node-gyp not found (looked at ${candidates.join(", ")}); install npm or \`npm install -g node-gyp\``)
}

if (process.platform !== "linux" || process.arch !== "x64") fail(`linux x64 only, found ${process.platform} ${process.arch}`)
if (!fs.existsSync(path.join(ortLibDir, "libonnxruntime.so.1"))) fail(`${ortLibDir}/libonnxruntime.so.1 is missing: run npm install first`)
if (!fs.existsSync(path.join(repoRoot, "node_modules/node-addon-api"))) fail("node-addon-api is missing: run npm install first")

const include = headers()

if (process.argv.includes("--cuda-ops")) {
  const nvcc = process.env.NVCC ?? ["nvcc", "/usr/local/cuda/bin/nvcc"].find((c) => spawnSync(c, ["--version"]).status === 0)
  if (nvcc === undefined) fail("nvcc not found: install the CUDA toolkit or set NVCC")
  // Its own folder: node-gyp rebuild (build:native) empties native/build.
  const out = path.join(nativeDir, "build-cuda/libchorus_cuda_ops.so")
  fs.mkdirSync(path.dirname(out), { recursive: true })
  const args = [
    "-O3", "-std=c++17",
    // Marlin (third_party/marlin) calls a constexpr host function from device code, as PyTorch's extension flags allow.
    "--expt-relaxed-constexpr",
    "-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=compute_90",
    // One CUDA runtime in the process: the provider's libcudart.so.13, not a static copy.
    "-cudart", "shared", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden",
    `-I${include}`, path.join(nativeDir, "cuda/chorus_cuda_ops.cu"), "-o", out, "-ldl"
  ]
  console.log(`build:cuda-ops: ${nvcc} ${args.join(" ")}`)
  const r = spawnSync(nvcc!, args, { stdio: "inherit" })
  if (r.status !== 0) fail(`nvcc failed (${r.error?.message ?? `exit ${r.status}`})`)
  console.log(`build:cuda-ops: ${out}`)
  process.exit(0)
}

const args = [nodeGyp(), "rebuild"]
if (process.env.npm_config_nodedir === undefined && fs.existsSync("/usr/include/node/node_api.h")) args.push("--nodedir=/usr")
console.log(`build:native: headers ${include}`)
const built = spawnSync(process.execPath, args, {
  cwd: nativeDir,
  stdio: "inherit",
  // gyp runs `node` for node-addon-api's include path: the Node running this script.
  env: { ...process.env, ORT_INCLUDE_DIR: include, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ""}` }
})
if (built.status !== 0) fail(`node-gyp failed (${built.error?.message ?? `exit ${built.status}`})`)

// Load it once here so a broken link shows now rather than in a worker thread later.
const addonPath = path.join(nativeDir, "build/Release/chorus_ort.node")
const check = spawnSync(process.execPath, ["-e", `const a = require(${JSON.stringify(addonPath)}); console.log("ONNX Runtime " + a.ortVersion + ", C API " + a.apiVersion)`], { encoding: "utf8" })
if (check.status !== 0) fail(`built ${addonPath} but it does not load: ${check.stderr.trim()}`)
console.log(`build:native: ${addonPath} (${check.stdout.trim()})`)
