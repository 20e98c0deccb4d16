// Starts a real Chorus server on localhost inside the test process, through the same `startServer` that plain Node
// apps use (so tests can also reach the engine, e.g. to inject a shard crash).
import { type RunningServer, type ServerOptions, startServer as start } from "../../src/http/Server.ts"

export type TestServer = RunningServer

export const startServer = <O>(options: Omit<ServerOptions<O>, "port" | "host">): Promise<TestServer> =>
  start({ ...options, port: 0, host: "127.0.0.1" })

/** Reads an SSE response body into its `data:` payloads, in arrival order, with arrival times. */
export const readSse = async (response: Response): Promise<Array<{ readonly data: string; readonly at: number }>> => {
  const out: Array<{ data: string; at: number }> = []
  const reader = response.body!.getReader()
  const decoder = new TextDecoder()
  let buffer = ""
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    buffer += decoder.decode(value, { stream: true })
    let i: number
    while ((i = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, i)
      buffer = buffer.slice(i + 2)
      for (const line of frame.split("\n")) if (line.startsWith("data: ")) out.push({ data: line.slice(6), at: performance.now() })
    }
  }
  return out
}
