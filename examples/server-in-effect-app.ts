/**
 * Embedding the server in an Effect app: the server is a layer next to your own services; it shares the app's
 * lifetime and its scope closes the model's worker threads on shutdown. This app serves the bench adapter (no model
 * time) on a free port, reads its own /ready and /metrics, and exits.
 *
 *   node examples/server-in-effect-app.ts
 */
import { Effect } from "effect"
import { HttpServer } from "effect/http"
import { BenchAdapter } from "chorus/adapters/bench"
import { Serving, serverLayer } from "chorus/http"

const program = Effect.gen(function*() {
  const serving = yield* Serving
  const engine = yield* serving.ready
  const url = HttpServer.formatAddress((yield* HttpServer.HttpServer).address)
  const ready = yield* Effect.promise(() => fetch(`${url}/ready`).then((r) => r.json()))
  yield* Effect.promise(() =>
    fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "Hi", max_tokens: 5 }) })
  )
  const metrics = yield* Effect.promise(() => fetch(`${url}/metrics`).then((r) => r.text()))
  const generated = metrics.split("\n").find((l) => l.startsWith("chorus:generation_tokens_total{"))
  yield* Effect.log(`${engine.model.id} at ${url}: ready=${JSON.stringify(ready)}; ${generated}`)
})

Effect.runPromise(program.pipe(Effect.provide(serverLayer({ adapter: BenchAdapter, adapterOptions: {}, port: 0 }))))
