/**
 * The AIME-compatible target, driven as AIME's own benchmark does: `POST /<ep>` with `wait_for_result: false` and
 * the chat as a `chat_context` JSON string, greedy (`top_k: 1, top_p: 1`, and `temperature` 0 by default where
 * AIME's benchmark leaves the endpoint's 0.8: same tokens, but a server may skip sampling at 0), then `POST /<ep>/progress` every poll
 * interval after each answer until `job_result` arrives. Tokens arrive in bundles, one per poll: the first poll
 * that shows generated tokens is the first output (TTFT, at poll resolution), and each later bundle of k tokens
 * after a gap g adds k inter-token gaps of g/k. Counts come from `num_generated_tokens` and `prompt_length`
 * (else `current_context_length` minus generated). An in-band `error`, a lapsed job or a refusal fails the request.
 */
import { setTimeout as sleep } from "node:timers/promises"
import { errorText, exchangeJson, type LoadClient, makeTransport, networkReason, probe, type Transport } from "./LoadClient.ts"
import type { RequestOutcome, Samples } from "./Metrics.ts"
import type { Prompt } from "./Prompts.ts"

export interface AimeTarget {
  readonly url: URL
  readonly endpoint: string
  readonly apiKey: string | undefined
  readonly pollIntervalMs: number
  /** Sent with top_k 1 (greedy either way); 0 lets a server take its argmax fast path, as on the OpenAI route. */
  readonly temperature: number
  readonly maxSockets: number
  readonly timeoutMs: number
}

interface ProgressBody {
  readonly success?: boolean
  readonly job_state?: string
  readonly job_result?: {
    readonly num_generated_tokens?: number
    readonly prompt_length?: number
    readonly current_context_length?: number
    readonly error?: string
  }
  readonly progress?: { readonly progress?: number; readonly progress_data?: { readonly num_generated_tokens?: number } }
}

const generatedSoFar = (body: ProgressBody): number => body.progress?.progress_data?.num_generated_tokens ?? body.progress?.progress ?? 0

const runJob = async (t: Transport, target: AimeTarget, prompt: Prompt, o: RequestOutcome, itl: Samples): Promise<void> => {
  const key = target.apiKey === undefined ? {} : { key: target.apiKey }
  const deadline = performance.now() + t.timeoutMs
  let seen = 0
  let last = 0
  /** Records the tokens a poll brought, answered at `at`. */
  const arrived = (tokens: number, at: number) => {
    const k = tokens - seen
    if (k <= 0) return
    if (o.outputs === 0) o.firstMs = at
    else for (let i = 0; i < k; i++) itl.push((at - last) / k)
    o.outputs++
    seen = tokens
    last = at
  }
  o.startMs = performance.now()
  try {
    const submitted = await exchangeJson(t, "POST", target.endpoint, {
      chat_context: JSON.stringify(prompt.messages),
      max_gen_tokens: prompt.maxTokens,
      top_k: 1,
      top_p: 1,
      temperature: target.temperature,
      wait_for_result: false,
      ...key
    }, {})
    const jobId = (submitted.body as { success?: boolean; job_id?: unknown } | undefined)
    if (submitted.status !== 200 || jobId?.success !== true || typeof jobId.job_id !== "string") {
      o.fail(`HTTP ${submitted.status}: ${errorText(submitted)}`)
      return
    }
    for (;;) {
      await sleep(target.pollIntervalMs)
      if (performance.now() > deadline) {
        o.fail(`timeout after ${t.timeoutMs / 1000} s`)
        return
      }
      const answer = await exchangeJson(t, "POST", `${target.endpoint}/progress`, { job_id: jobId.job_id, ...key }, {})
      const at = performance.now()
      const body = answer.body as ProgressBody | undefined
      if (answer.status !== 200 || body?.success !== true) {
        o.fail(`HTTP ${answer.status}: ${errorText(answer)}`)
        return
      }
      const result = body.job_result
      if (result !== undefined) {
        o.endMs = at
        if (typeof result.error === "string" && result.error !== "") {
          o.fail(`job error: ${result.error.replace(/\s+/g, " ").slice(0, 160)}`)
          return
        }
        const generated = result.num_generated_tokens ?? seen
        arrived(generated, at)
        o.outputTokens = generated
        o.fromServer = result.num_generated_tokens !== undefined
        const promptLength = result.prompt_length ?? (result.current_context_length === undefined ? undefined : result.current_context_length - generated)
        if (promptLength !== undefined) o.promptTokens = promptLength
        o.ok = true
        return
      }
      if (body.job_state === "done" || body.job_state === "canceled") {
        o.fail(`job ${body.job_state} without a result`)
        return
      }
      arrived(generatedSoFar(body), at)
    }
  } catch (e) {
    o.fail(o.outputs > 0 ? `connection lost mid-job (${networkReason(e)})` : `connection failed (${networkReason(e)})`)
  } finally {
    if (Number.isNaN(o.endMs)) o.endMs = performance.now()
    if (!o.fromServer) o.outputTokens = seen
  }
}

/** Checks that the endpoint answers and learns its model; throws ValidationError if the server cannot be reached. */
export const aimeClient = async (target: AimeTarget): Promise<LoadClient> => {
  const t = makeTransport(target.url, target.maxSockets, target.timeoutMs)
  const details = await probe(t, `api/endpoints/${target.endpoint}`, {})
  const label = (details.body as { workers?: Array<{ model?: { label?: unknown } }> } | undefined)?.workers?.[0]?.model?.label
  return {
    model: typeof label === "string" && label !== "Unknown" ? label : undefined,
    send: (prompt, outcome, itl) => runJob(t, target, prompt, outcome, itl),
    close: () => t.agent.destroy()
  }
}
