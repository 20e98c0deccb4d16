// deploy/: every YAML file parses; the compose services and Kubernetes containers run `chorus serve` / `chorus
// worker` with flags that the real CLI's --help lists (a value-taking flag followed by a value); every Kubernetes
// object is named; Services and PodDisruptionBudgets select pods that exist; the probes and health checks point at
// routes a real `chorus serve --no-local-model` answers with 200.
//
// YAML is parsed by the `yaml` package (a dev dependency), strictly: a document with an error fails its file.
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { parseAllDocuments } from "yaml"
import { repoRoot } from "../support/fixtures.ts"
import { type ServeProcess, startServeProcess } from "../support/serveProcess.ts"

type Obj = Record<string, unknown>
const isObj = (x: unknown): x is Obj => x !== null && typeof x === "object" && !Array.isArray(x)
const obj = (x: unknown): Obj => (isObj(x) ? x : {})
const arr = (x: unknown): Array<unknown> => (Array.isArray(x) ? x : [])

const deployDir = path.join(repoRoot, "deploy")
const yamlFiles = (dir: string): Array<string> =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? yamlFiles(path.join(dir, e.name)) : /\.ya?ml$/.test(e.name) ? [path.join(dir, e.name)] : []
  )

/** Every YAML document of every file, or the parser's first error per file. */
const parseYaml = (files: ReadonlyArray<string>): Record<string, { docs?: Array<unknown>; error?: string }> =>
  Object.fromEntries(files.map((f) => {
    // Merge keys (`<<: *anchor`) as Docker Compose reads them.
    const docs = parseAllDocuments(fs.readFileSync(f, "utf8"), { merge: true })
    const error = docs.flatMap((d) => d.errors)[0]
    return [f, error === undefined ? { docs: docs.map((d) => d.toJS() as unknown).filter((d) => d !== null && d !== undefined) } : { error: error.message }]
  }))

/** The flags `chorus <command> --help` lists, each with whether it takes a value (`--flag VALUE`, `N`, `A,B,C`). */
const helpFlags = (command: string): Map<string, boolean> => {
  const r = spawnSync(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), command, "--help"], { encoding: "utf8", timeout: 30_000 })
  expect(r.status, r.stderr).toBe(0)
  const flags = new Map<string, boolean>()
  for (const m of r.stdout.matchAll(/^ {2}--([a-z0-9-]+)( \S+)? {2,}/gm)) flags.set(m[1]!, m[2] !== undefined)
  return flags
}

/** What is wrong with `chorus ARGS` against the help's flags: unknown flags, values missing or given to a switch. */
const flagProblems = (args: ReadonlyArray<string>, flags: ReadonlyMap<string, boolean>): Array<string> => {
  const problems: Array<string> = []
  for (let i = 1; i < args.length; i++) {
    const arg = args[i]!
    if (!arg.startsWith("--")) {
      problems.push(`'${arg}' follows no flag`)
      continue
    }
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined]
    const takesValue = flags.get(name)
    if (takesValue === undefined) problems.push(`--${name} is not a flag of 'chorus ${args[0]}'`)
    else if (takesValue && inline === undefined) {
      const value = args[i + 1]
      if (value === undefined || value.startsWith("--")) problems.push(`--${name} needs a value`)
      else i++
    } else if (!takesValue && inline !== undefined) problems.push(`--${name} takes no value`)
  }
  return problems
}

const files = yamlFiles(deployDir)
const parsed = parseYaml(files)
const docsOf = (file: string) => parsed[path.join(deployDir, file)]?.docs ?? []
const k8sDocs = files.filter((f) => f.startsWith(path.join(deployDir, "k8s") + path.sep)).flatMap((f) => (parsed[f]?.docs ?? []).map((d) => ({ file: f, doc: obj(d) })))
const compose = obj(docsOf("compose.yaml")[0])
const composeServices = Object.entries(obj(compose["services"])).map(([name, s]) => ({ name, service: obj(s) }))

/** The chorus command lines of the compose services (`command:` as a list; the image's entrypoint is `chorus`). */
const composeCommands = composeServices
  .map(({ name, service }) => ({ where: `compose service ${name}`, args: arr(service["command"]).map(String) }))
  .filter((c) => c.args[0] === "serve" || c.args[0] === "worker")

interface Container {
  readonly where: string
  readonly podLabels: Obj
  readonly container: Obj
  readonly args: Array<string>
}

const containers: Array<Container> = k8sDocs.flatMap(({ file, doc }) => {
  const template = obj(obj(doc["spec"])["template"])
  return arr(obj(template["spec"])["containers"]).map((c) => ({
    where: `${path.relative(repoRoot, file)} ${String(doc["kind"])}/${String(obj(doc["metadata"])["name"])} container ${String(obj(c)["name"])}`,
    podLabels: obj(obj(template["metadata"])["labels"]),
    container: obj(c),
    args: arr(obj(c)["args"]).map(String)
  }))
})
const chorusContainers = containers.filter((c) => c.args[0] === "serve" || c.args[0] === "worker")

describe("deploy/ manifests", () => {
  it("every YAML file in deploy/ parses, with at least one document", () => {
    expect(files.length).toBeGreaterThanOrEqual(5)
    for (const f of files) {
      expect(parsed[f]?.error, f).toBeUndefined()
      expect(parsed[f]?.docs?.length ?? 0, f).toBeGreaterThan(0)
    }
  })

  it("the compose file has Redis, two API replicas on it, a load balancer and GPU workers, with flags chorus knows", () => {
    const serve = helpFlags("serve")
    const worker = helpFlags("worker")
    const names = new Set(composeServices.map((s) => s.name))
    expect(names.has("redis")).toBe(true)
    const apis = composeCommands.filter((c) => c.args[0] === "serve")
    const workers = composeCommands.filter((c) => c.args[0] === "worker")
    expect(apis.length).toBeGreaterThanOrEqual(2)
    expect(workers.length).toBeGreaterThanOrEqual(1)
    for (const c of composeCommands) expect(flagProblems(c.args, c.args[0] === "serve" ? serve : worker), c.where).toEqual([])
    for (const c of apis) {
      expect(c.args, c.where).toContain("--no-local-model")
      expect(c.args[c.args.indexOf("--queue") + 1], c.where).toBe("redis://redis:6379")
    }
    // The workers' --api-server is a service of this file, and the GPU reservation is NVIDIA's.
    for (const { name, service } of composeServices.filter((s) => arr(s.service["command"])[0] === "worker")) {
      const args = arr(service["command"]).map(String)
      const host = new URL(args[args.indexOf("--api-server") + 1]!).hostname
      expect(names.has(host), `${name}: --api-server names ${host}`).toBe(true)
      const devices = arr(obj(obj(obj(service["deploy"])["resources"])["reservations"])["devices"]).map(obj)
      expect(devices.some((d) => d["driver"] === "nvidia" && arr(d["capabilities"]).includes("gpu")), name).toBe(true)
    }
    // The API replicas build the Dockerfile's CUDA-free stage, the workers its CUDA stage; both stages exist.
    const stages = [...fs.readFileSync(path.join(deployDir, "Dockerfile"), "utf8").matchAll(/^FROM \S+ AS (\S+)$/gm)].map((m) => m[1])
    for (const { name, service } of composeServices.filter((s) => ["serve", "worker"].includes(String(arr(s.service["command"])[0])))) {
      const build = obj(service["build"])
      const wanted = arr(service["command"])[0] === "serve" ? "api" : "worker"
      expect([build["dockerfile"], build["target"]], name).toEqual(["deploy/Dockerfile", wanted])
      expect(stages, name).toContain(wanted)
    }
    // nginx balances over exactly the services that run chorus serve.
    const nginx = fs.readFileSync(path.join(deployDir, "nginx.conf"), "utf8")
    const upstreams = [...nginx.matchAll(/^\s*server\s+([\w-]+):8080\b/gm)].map((m) => m[1]!)
    const apiServices = composeServices.filter((s) => arr(s.service["command"])[0] === "serve").map((s) => s.name)
    expect(upstreams.sort()).toEqual(apiServices.sort())
  })

  it("every Kubernetes object has apiVersion, kind and metadata.name; selectors match pods that exist", () => {
    expect(k8sDocs.length).toBeGreaterThan(0)
    for (const { file, doc } of k8sDocs) {
      const where = `${path.relative(repoRoot, file)}: ${JSON.stringify(doc).slice(0, 80)}`
      expect(typeof doc["apiVersion"] === "string" && doc["apiVersion"] !== "", where).toBe(true)
      expect(typeof doc["kind"] === "string" && doc["kind"] !== "", where).toBe(true)
      expect(typeof obj(doc["metadata"])["name"] === "string" && obj(doc["metadata"])["name"] !== "", where).toBe(true)
    }
    const matches = (selector: Obj) => containers.some((c) => Object.entries(selector).every(([k, v]) => c.podLabels[k] === v))
    for (const { doc } of k8sDocs) {
      const spec = obj(doc["spec"])
      const name = `${String(doc["kind"])}/${String(obj(doc["metadata"])["name"])}`
      if (doc["kind"] === "Service") expect(matches(obj(spec["selector"])), name).toBe(true)
      if (doc["kind"] === "PodDisruptionBudget" || doc["kind"] === "Deployment") {
        expect(matches(obj(obj(spec["selector"])["matchLabels"])), name).toBe(true)
      }
    }
    // Every Secret key a container reads is in a Secret of these manifests.
    const secrets = new Map(k8sDocs.filter((d) => d.doc["kind"] === "Secret").map((d) => [String(obj(d.doc["metadata"])["name"]), obj(d.doc["stringData"])]))
    for (const c of containers) {
      for (const env of arr(c.container["env"]).map(obj)) {
        const ref = obj(obj(env["valueFrom"])["secretKeyRef"])
        if (ref["name"] === undefined) continue
        expect(secrets.get(String(ref["name"]))?.[String(ref["key"])], `${c.where} env ${String(env["name"])}`).toBeDefined()
      }
    }
  })

  it("the Kubernetes containers run chorus serve / chorus worker with flags chorus knows; workers ask for a GPU", () => {
    const serve = helpFlags("serve")
    const worker = helpFlags("worker")
    expect(chorusContainers.some((c) => c.args[0] === "serve")).toBe(true)
    const workers = chorusContainers.filter((c) => c.args[0] === "worker")
    expect(workers.length).toBeGreaterThanOrEqual(2)
    for (const c of chorusContainers) expect(flagProblems(c.args, c.args[0] === "serve" ? serve : worker), c.where).toEqual([])
    for (const c of workers) {
      expect(obj(obj(c.container["resources"])["limits"])["nvidia.com/gpu"], c.where).toBe(1)
    }
  })

  describe("probes against a real chorus serve --no-local-model", () => {
    let server: ServeProcess
    beforeAll(async () => {
      server = await startServeProcess(["--no-local-model", "--worker-key", "manifest-test-key"])
    }, 60_000)
    afterAll(async () => {
      await server?.stop()
    })

    it("every probe and health check of the API answers 200 on the port the server listens on", async () => {
      const probes: Array<{ where: string; path: string }> = []
      for (const c of chorusContainers.filter((x) => x.args[0] === "serve")) {
        const ports = new Map(arr(c.container["ports"]).map(obj).map((p) => [String(p["name"]), Number(p["containerPort"])]))
        const env = new Map(arr(c.container["env"]).map(obj).map((e) => [String(e["name"]), e["value"]]))
        const listens = Number(c.args.includes("--port") ? c.args[c.args.indexOf("--port") + 1] : env.get("CHORUS_PORT") ?? 8080)
        for (const kind of ["readinessProbe", "livenessProbe"]) {
          const get = obj(obj(c.container[kind])["httpGet"])
          expect(get["path"], `${c.where} ${kind}`).toBeTypeOf("string")
          const port = typeof get["port"] === "number" ? get["port"] : ports.get(String(get["port"]))
          expect(port, `${c.where} ${kind} port`).toBe(listens)
          probes.push({ where: `${c.where} ${kind}`, path: String(get["path"]) })
        }
      }
      expect(probes.map((p) => p.path)).toEqual(expect.arrayContaining(["/ready", "/health"]))
      for (const { name, service } of composeServices.filter((s) => arr(s.service["command"])[0] === "serve")) {
        const test = arr(obj(service["healthcheck"])["test"]).join(" ")
        const m = /http:\/\/127\.0\.0\.1:8080(\/[\w/-]*)/.exec(test)
        expect(m, `compose service ${name} healthcheck`).not.toBeNull()
        probes.push({ where: `compose service ${name} healthcheck`, path: m![1]! })
      }
      for (const p of probes) {
        const r = await fetch(new URL(p.path, server.url))
        expect(r.status, p.where).toBe(200)
        // /health: {"status": "ok"}; /ready with no local model: {"status": "ready", "shards": []} (docs/api.md).
        const body = (await r.json()) as Obj
        expect(body["status"], p.where).toBe(p.path === "/ready" ? "ready" : "ok")
      }
    })
  })
})
