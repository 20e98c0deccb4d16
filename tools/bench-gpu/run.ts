/**
 * `npm run bench:gpu`: Chorus against PyTorch and the HBM roofline on one GPU, in one run.
 *
 *   node tools/bench-gpu/run.ts --checkpoint DIR --out DIR [--skip-weights] [--skip-torch] [--skip-chorus]
 *     [--batches 1,8,32,64,128] [--device cuda:0] [--python python3] [--eager-only] [--dry-run-cpu [--with-torch]]
 *
 * Stages, each a child process with its own time limit (one hang does not eat the lease):
 *   weights  make_weights.py makes a Llama-3-8B-shaped random float16 checkpoint in --checkpoint unless it is there
 *   check    check_torch_model.py proves the PyTorch baseline right on a fixture (skipped when no fixture is found)
 *   torch    torch_baseline.py: the workloads in PyTorch, eager and CUDA graphs, plus copy bandwidth and matmul rate
 *   chorus   this file with --stage chorus: the same workloads through the Chorus engine API
 *   int4     this file with --stage chorus --quant V, once per --int4 variant (default b32-zp): 4-bit weights
 *            (MatMulNBits) at single stream and --int4-batch sequences (default 64), in chorus-int4-V.json; the
 *            report adds a float16 vs int4 table. --skip-chorus reuses those files too, unless --int4 is given:
 *            `--skip-weights --skip-torch --skip-chorus --int4 b32-zp,b128-sym` runs only the int4 stages
 *   server   with --server-sweep: server-sweep.ts (the real `chorus serve` measured by `chorus bench`, and prefix
 *            reuse) into --out/server; its own table is in --out/server/server-sweep.md
 * then one markdown table on stdout and `bench-gpu.json`, `bench-gpu.md` in --out. Each stage writes its results
 * as it goes (torch.json, chorus.json in --out); --skip-torch / --skip-chorus reuse files an earlier run left there.
 * `--dry-run-cpu` runs Chorus on the CPU over the tiny fixture tiny-llama3-b (float32) with made-up PyTorch numbers
 * (or, with --with-torch, the real PyTorch script on the CPU), to test the orchestration without a GPU.
 * Exits 1 when a stage failed (the table still shows what was measured).
 */
import { Effect } from "effect"
import { execFileSync, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { parseToolFlags, toolFail } from "../ToolFlags.ts"
import { parseDevice } from "../../src/core/shard/StepProtocol.ts"
import { parseQuantVariant } from "../../src/adapters/llama3/Quantization.ts"
import { runChorusBench } from "./ChorusBench.ts"
import { loadModelShape, type ModelShape } from "./Roofline.ts"
import {
  buildRows,
  ceilingsOf,
  type ChorusResults,
  type GpuBenchReport,
  renderReport,
  type StageStatus,
  type TorchResults,
  type Workloads
} from "./ResultTable.ts"

const here = path.dirname(fileURLToPath(import.meta.url))
const repoRoot = path.resolve(here, "../..")

const flagSpecs = {
  checkpoint: { kind: "string", description: "checkpoint folder (made here when missing)" },
  out: { kind: "string", description: "folder for torch.json, chorus.json, bench-gpu.json, bench-gpu.md" },
  "skip-weights": { kind: "boolean", description: "do not run make_weights.py" },
  "skip-torch": { kind: "boolean", description: "do not run PyTorch (reuse --out/torch.json when present)" },
  "skip-chorus": { kind: "boolean", description: "do not run Chorus (reuse --out/chorus.json when present)" },
  "eager-only": { kind: "boolean", description: "PyTorch without the CUDA-graph baseline" },
  batches: { kind: "list", description: "concurrencies (default 1,8,32,64,128)" },
  device: { kind: "string", description: "cuda or cuda:N (default cuda:0)" },
  python: { kind: "string", description: "Python with torch (default python3)" },
  "prompt-len": { kind: "integer", description: "prompt tokens per sequence (default 512)" },
  "gen-len": { kind: "integer", description: "generated tokens per sequence (default 256)" },
  context: { kind: "integer", description: "single-stream context (default 1024)" },
  "decode-steps": { kind: "integer", description: "single-stream timed decode steps (default 128)" },
  "ttft-repeats": { kind: "integer", description: "time-to-first-token samples (default 10)" },
  repeat: { kind: "integer", description: "measurements per row, median reported (default 2)" },
  "weights-timeout-s": { kind: "integer", description: "time limit of make_weights (default 600)" },
  "torch-timeout-s": { kind: "integer", description: "time limit of the PyTorch stage (default 600)" },
  "chorus-timeout-s": { kind: "integer", description: "time limit of the Chorus stage (default 1200)" },
  fixture: { kind: "string", description: "fixture for the PyTorch model check (default: test/fixtures/tiny-llama3-a)" },
  "dry-run-cpu": { kind: "boolean", description: "Chorus on the CPU over tiny-llama3-b with made-up PyTorch numbers" },
  "with-torch": { kind: "boolean", description: "with --dry-run-cpu: run the real PyTorch script on the CPU" },
  "server-sweep": { kind: "boolean", description: "then run server-sweep.ts (chorus serve + chorus bench + prefix reuse) into --out/server" },
  "sweep-arg": { kind: "string", repeatable: true, description: "with --server-sweep: one flag for server-sweep.ts, e.g. --sweep-arg=--max-batch=128" },
  "sweep-timeout-s": { kind: "integer", description: "time limit of the server sweep (default 3600)" },
  int4: { kind: "string", description: "int4 variants measured after float16 (default b32-zp; e.g. b32-zp,b128-sym; none: skip); see tools/bench-quant.ts" },
  "int4-batch": { kind: "integer", description: "concurrency of the int4 rows (default 64)" },
  "decode-attention": { kind: "string", description: "CUDA decode attention for Chorus's rows: xqa (default) | flash | chorus, as chorus serve's flag" },
  "linear-kernels": { kind: "string", description: "CUDA linears for Chorus's rows: auto (default) | ort | chorus, as chorus serve's flag" },
  quant: { kind: "string", description: "internal: with --stage chorus, the int4 variant" },
  stage: { kind: "string", description: "internal: run one stage in this process (chorus)" }
} as const

const tool = { name: "bench:gpu", run: "npm run bench:gpu --" }
// Annotated so that a call narrows like a `never` function declaration.
const fail: (message: string) => never = toolFail(tool)
const flags = parseToolFlags(tool, "--checkpoint DIR --out DIR [options]", flagSpecs)
const dry = flags["dry-run-cpu"] === true
const fixturesDir = [path.resolve(repoRoot, "test/fixtures")].find((d) => fs.existsSync(d))
const checkpoint = path.resolve(
  flags.checkpoint ?? (dry && fixturesDir !== undefined ? path.join(fixturesDir, "tiny-llama3-b") : fail("--checkpoint DIR is required"))
)
const out = path.resolve(flags.out ?? fail("--out DIR is required"))
const device = dry ? { kind: "cpu" as const } : parseDevice(flags.device ?? "cuda:0") ?? fail(`--device must be cuda or cuda:N, got '${flags.device}'`)
const dtype = dry ? "float32" : "float16"
const workloads: Workloads = {
  context: flags.context ?? 1024,
  decodeSteps: flags["decode-steps"] ?? 128,
  promptLen: flags["prompt-len"] ?? 512,
  genLen: flags["gen-len"] ?? 256,
  batches: flags.batches ?? [1, 8, 32, 64, 128]
}
const maxContext = 2048
const maxBatchedTokens = 8192
for (const [name, value] of Object.entries({ ...workloads, batches: Math.min(...workloads.batches) })) {
  if (!(value >= 1)) fail(`--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} must be at least 1, got ${value}`)
}
if (workloads.context + workloads.decodeSteps + 1 > maxContext || workloads.promptLen + workloads.genLen > maxContext) {
  fail(`--context + --decode-steps + 1 and --prompt-len + --gen-len must fit the ${maxContext}-token engine context`)
}
if (workloads.genLen < 2 || workloads.decodeSteps < 2) fail("--gen-len and --decode-steps must be at least 2 (decode steps are timed between tokens)")
const ttftRepeats = flags["ttft-repeats"] ?? 10
const repeat = flags.repeat ?? 2
const python = flags.python ?? "python3"
const torchFile = path.join(out, "torch.json")
const chorusFile = path.join(out, "chorus.json")
const int4Variants = (flags.int4 ?? "b32-zp").split(",").map((v) => v.trim()).filter((v) => v !== "" && v !== "none")
for (const v of int4Variants) if (parseQuantVariant(v) === undefined) fail(`--int4: '${v}' is not b32|b128 - zp|sym [-headfloat]`)
const int4Batch = flags["int4-batch"] ?? 64
if (!(int4Batch >= 1)) fail(`--int4-batch must be at least 1, got ${int4Batch}`)
const stageQuant = flags.quant === undefined ? undefined : parseQuantVariant(flags.quant) ?? fail(`--quant: '${flags.quant}' is not a variant`)
const int4File = (variant: string) => path.join(out, `chorus-int4-${variant}.json`)

const log = (line: string) => process.stdout.write(`[bench:gpu ${new Date().toISOString().slice(11, 19)}] ${line}\n`)

const writeJson = (file: string, value: unknown) => {
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(value, null, 2))
  fs.renameSync(`${file}.tmp`, file)
}

const readJson = <T>(file: string): T | undefined => {
  if (!fs.existsSync(file)) return undefined
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as T
  } catch (e) {
    log(`cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`)
    return undefined
  }
}

/** Runs a child process with inherited output; past `timeoutS` it gets SIGTERM, then SIGKILL 10 s later. */
const runStage = (name: string, command: string, args: ReadonlyArray<string>, timeoutS: number): Promise<StageStatus> =>
  new Promise((resolve) => {
    const t0 = performance.now()
    const seconds = () => (performance.now() - t0) / 1000
    log(`${name}: ${command} ${args.join(" ")} (limit ${timeoutS} s)`)
    let timedOut = false
    const child = spawn(command, args, { stdio: "inherit", cwd: repoRoot })
    const timer = setTimeout(() => {
      timedOut = true
      log(`${name}: still running after ${timeoutS} s; stopping it`)
      child.kill("SIGTERM")
      setTimeout(() => child.kill("SIGKILL"), 10_000).unref()
    }, timeoutS * 1000)
    const done = (ok: boolean, detail: string) => {
      clearTimeout(timer)
      log(`${name}: ${ok ? "done" : "FAILED"}: ${detail} (${seconds().toFixed(1)} s)`)
      resolve({ name, ok, detail, seconds: seconds() })
    }
    child.on("error", (e) => done(false, `cannot start ${command}: ${e.message}`))
    child.on("exit", (code, signal) =>
      done(
        code === 0 && !timedOut,
        timedOut ? `timed out after ${timeoutS} s` : code === 0 ? "exit 0" : `exit ${code ?? `by signal ${signal}`}`
      )
    )
  })

/** Made-up PyTorch results of the right shape, for --dry-run-cpu. */
const fakeTorch = (): TorchResults => ({
  device: "fake card (dry run)",
  torch: "none",
  dtype,
  date: new Date().toISOString(),
  implementation: "made-up numbers (--dry-run-cpu)",
  copyBandwidth: { bytesPerSecond: 2e10 },
  matmul: { flopsPerSecond: 1e11 },
  singleStream: { context: workloads.context, eager: { tokensPerSecond: 100, itlMeanMs: 10, itlP50Ms: 10, itlP99Ms: 12 }, graphs: { error: "dry run" } },
  batches: workloads.batches.map((batch) => ({ batch, prefillMs: 5 * batch, eager: { tokensPerSecond: 100 * batch }, graphs: { tokensPerSecond: 150 * batch } })),
  ttft: { eager: { promptLen: workloads.promptLen, medianMs: 20 } }
})

const chorusStage = async () => {
  const file = flags.quant === undefined ? chorusFile : int4File(flags.quant)
  const results = await runChorusBench({
    modelDir: checkpoint,
    dtype,
    device,
    maxContext,
    maxBatchedTokens,
    batches: workloads.batches,
    promptLen: workloads.promptLen,
    genLen: workloads.genLen,
    context: workloads.context,
    decodeSteps: workloads.decodeSteps,
    ttftRepeats,
    repeat,
    quantize: stageQuant,
    decodeAttention,
    linearKernels,
    log: (line) => log(`chorus: ${line}`),
    onProgress: (r) => writeJson(file, r)
  })
  writeJson(file, results)
}

const cardName = (torch: TorchResults | undefined): string => {
  if (dry) return `CPU dry run (${torch?.device ?? "no PyTorch"})`
  if (torch !== undefined) return torch.device
  try {
    return execFileSync("nvidia-smi", ["--query-gpu=name", "--format=csv,noheader", `--id=${device.kind === "cuda" ? device.id : 0}`], { encoding: "utf8" }).trim()
  } catch {
    return "unknown card"
  }
}

// One of `choices`, or undefined when the flag is absent; anything else ends the tool with a one-line message.
const oneOf = <C extends string>(flag: string, value: string | undefined, choices: ReadonlyArray<C>): C | undefined =>
  value === undefined ? undefined : choices.find((c) => c === value) ?? fail(`${flag} must be ${choices.join(", ")}, got '${value}'`)
const decodeAttention = oneOf("--decode-attention", flags["decode-attention"], ["xqa", "flash", "chorus"] as const)
const linearKernels = oneOf("--linear-kernels", flags["linear-kernels"], ["auto", "ort", "chorus"] as const)
// Both pick CUDA kernels; on the CPU (--dry-run-cpu) the engine would ignore them and the table would say otherwise.
if ((decodeAttention !== undefined || linearKernels !== undefined) && device.kind !== "cuda") {
  fail(`${decodeAttention !== undefined ? "--decode-attention" : "--linear-kernels"} needs a CUDA device`)
}
const sizeArgs = [
  ...(decodeAttention === undefined ? [] : [`--decode-attention=${decodeAttention}`]),
  ...(linearKernels === undefined ? [] : [`--linear-kernels=${linearKernels}`]),
  `--batches=${workloads.batches.join(",")}`,
  `--prompt-len=${workloads.promptLen}`,
  `--gen-len=${workloads.genLen}`,
  `--context=${workloads.context}`,
  `--decode-steps=${workloads.decodeSteps}`,
  `--ttft-repeats=${ttftRepeats}`,
  `--repeat=${repeat}`
]

const main = async () => {
  fs.mkdirSync(out, { recursive: true })
  const stages: Array<StageStatus> = []
  const script = (name: string) => path.join(here, name)

  if (!dry && flags["skip-weights"] !== true) {
    stages.push(await runStage("weights", python, [script("make_weights.py"), checkpoint], flags["weights-timeout-s"] ?? 600))
  }

  let torch: TorchResults | undefined
  if (flags["skip-torch"] === true) {
    torch = readJson<TorchResults>(torchFile)
    log(torch === undefined ? `PyTorch skipped; no ${torchFile}` : `PyTorch skipped; reusing ${torchFile} (${torch.date})`)
  } else if (dry && flags["with-torch"] !== true) {
    torch = fakeTorch()
    writeJson(torchFile, torch)
  } else {
    const fixture = flags.fixture ?? (fixturesDir === undefined ? undefined : path.join(fixturesDir, "tiny-llama3-a"))
    const torchDevice = dry ? ["--device", "cpu"] : ["--device", device.kind === "cuda" ? `cuda:${device.id}` : "cpu"]
    if (fixture !== undefined && fs.existsSync(fixture)) {
      stages.push(await runStage("check", python, [script("check_torch_model.py"), fixture, ...torchDevice], 300))
    } else log("check: no fixture found (test/fixtures/tiny-llama3-a or --fixture); the PyTorch model is not checked")
    const extra = dry
      ? ["--dtype", "float32", "--copy-gib", "0.01", "--matmul-n", "256"]
      : flags["eager-only"] === true ? [] : ["--cuda-graphs"]
    fs.rmSync(torchFile, { force: true })
    stages.push(await runStage("torch", python, [script("torch_baseline.py"), checkpoint, torchFile, ...torchDevice, ...extra, ...sizeArgs], flags["torch-timeout-s"] ?? 600))
    torch = readJson<TorchResults>(torchFile)
  }

  let chorus: ChorusResults | undefined
  if (flags["skip-chorus"] === true) {
    chorus = readJson<ChorusResults>(chorusFile)
    log(chorus === undefined ? `Chorus skipped; no ${chorusFile}` : `Chorus skipped; reusing ${chorusFile}`)
  } else {
    fs.rmSync(chorusFile, { force: true })
    const args = [fileURLToPath(import.meta.url), "--stage", "chorus", "--checkpoint", checkpoint, "--out", out, ...sizeArgs]
    if (dry) args.push("--dry-run-cpu")
    else args.push("--device", device.kind === "cuda" ? `cuda:${device.id}` : "cpu")
    stages.push(await runStage("chorus", process.execPath, args, flags["chorus-timeout-s"] ?? 1200))
    chorus = readJson<ChorusResults>(chorusFile)
  }

  // 4-bit weights: the same engine workloads at single stream and one concurrency, each variant its own process.
  const quantized: Array<ChorusResults> = []
  for (const variant of int4Variants) {
    const file = int4File(variant)
    if (flags["skip-chorus"] !== true || flags.int4 !== undefined) {
      fs.rmSync(file, { force: true })
      const sizes = sizeArgs.map((a) => (a.startsWith("--batches=") ? `--batches=${int4Batch}` : a))
      const args = [fileURLToPath(import.meta.url), "--stage", "chorus", "--quant", variant, "--checkpoint", checkpoint, "--out", out, ...sizes]
      if (dry) args.push("--dry-run-cpu")
      else args.push("--device", device.kind === "cuda" ? `cuda:${device.id}` : "cpu")
      stages.push(await runStage(`int4 ${variant}`, process.execPath, args, flags["chorus-timeout-s"] ?? 1200))
    }
    const r = readJson<ChorusResults>(file)
    if (r !== undefined) quantized.push(r)
  }

  if (flags["server-sweep"] === true && !dry) {
    const args = [
      script("server-sweep.ts"), "--checkpoint", checkpoint, "--out", path.join(out, "server"), "--skip-weights",
      "--device", device.kind === "cuda" ? `cuda:${device.id}` : "cpu", ...(flags["sweep-arg"] ?? [])
    ]
    stages.push(await runStage("server", process.execPath, args, flags["sweep-timeout-s"] ?? 3600))
  }

  let shape: ModelShape | undefined
  try {
    shape = await Effect.runPromise(loadModelShape(checkpoint, dtype === "float16" ? 2 : 4))
  } catch (e) {
    log(`roofline: cannot read ${checkpoint}: ${e instanceof Error ? e.message : String(e)}`)
  }
  const ceilings = ceilingsOf(torch)
  const report: GpuBenchReport = {
    card: cardName(torch),
    date: new Date().toISOString().slice(0, 10),
    checkpoint,
    workloads,
    shape,
    ceilings,
    rows: buildRows(workloads, shape, ceilings, chorus, torch),
    stages,
    torch,
    chorus,
    quantized,
    quantBatch: int4Batch
  }
  writeJson(path.join(out, "bench-gpu.json"), report)
  const markdown = renderReport(report)
  fs.writeFileSync(path.join(out, "bench-gpu.md"), markdown)
  process.stdout.write(`\n${markdown}\n`)
  const failed = stages.filter((s) => !s.ok)
  if (failed.length > 0) {
    process.stderr.write(`bench:gpu: ${failed.length} stage(s) failed: ${failed.map((s) => `${s.name} (${s.detail})`).join(", ")}\n`)
    process.exitCode = 1
  }
}

if (flags.stage === "chorus") {
  await chorusStage().catch((e: unknown) => {
    process.stderr.write(`bench:gpu: chorus: ${e instanceof Error ? e.message : String(e)}\n`)
    process.exit(1)
  })
}
else if (flags.stage !== undefined) fail(`--stage must be chorus, got '${flags.stage}'`)
else await main()

