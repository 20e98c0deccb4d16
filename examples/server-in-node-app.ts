/**
 * Embedding the server in a plain Node app: start it, use its OpenAI API, stop it. No Effect code needed.
 *
 *   node examples/server-in-node-app.ts
 */
import { startServer } from "chorus/http"
import { Llama3Adapter } from "chorus/adapters/llama3"

const server = await startServer({ adapter: Llama3Adapter, adapterOptions: {}, port: 0, apiKeys: ["my-secret"] })
console.log(`serving at ${server.url}`)

const response = await fetch(`${server.url}/v1/chat/completions`, {
  method: "POST",
  headers: { "content-type": "application/json", authorization: "Bearer my-secret" },
  body: JSON.stringify({ messages: [{ role: "user", content: "Hello!" }], max_tokens: 8, seed: 1 })
})
const answer = (await response.json()) as { choices: Array<{ message: { content: string } }>; usage: { completion_tokens: number } }
console.log(`answer: ${JSON.stringify(answer.choices[0]!.message.content)} (${answer.usage.completion_tokens} tokens)`)

await server.close()
console.log("stopped")
