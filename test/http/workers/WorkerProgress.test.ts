// The worker's batched progress: the jobs due in one turn of the event loop share one POST, at most one POST is in
// flight, acknowledged tokens are not resent, and a `canceled` item stops only its own job.
import { describe, expect, it } from "vitest"
import { makeProgressSender, type ProgressJob } from "../../../src/http/workers/WorkerProgress.ts"

type Item = { job_id: string; progress: number; progress_data: { chorus_tokens: { from: number; ids: Array<number> } } }

const job = (id: string, canceled: Array<string>): ProgressJob => ({
  id,
  ids: [],
  texts: [],
  text: "",
  promptTokens: 3,
  acked: 0,
  lastSent: 0,
  onCanceled: () => void canceled.push(id)
})

const token = (j: ProgressJob, tokenId: number) => {
  j.ids.push(tokenId)
  j.texts.push(` t${tokenId}`)
  j.text += ` t${tokenId}`
}

const turn = () => new Promise<void>((r) => setImmediate(r))

describe("makeProgressSender", () => {
  it("sends the tokens one step gave every job in one POST, then only what was not acknowledged", async () => {
    const posts: Array<Array<Item>> = []
    let answer: (items: Array<unknown>) => void = () => {}
    const sender = makeProgressSender({
      identity: { auth: "w#0_1xCPU", auth_key: "k", job_type: "llama3" },
      every: { tokens: 8, ms: 100 },
      post: (body) => {
        posts.push(body as Array<Item>)
        return new Promise((resolve) => (answer = (items) => resolve({ status: 200, body: items })))
      }
    })
    const canceled: Array<string> = []
    const a = job("a", canceled)
    const b = job("b", canceled)
    sender.add(a)
    sender.add(b)
    // One engine step: a token for each job (their first, so each is due at once).
    token(a, 1), sender.tokenArrived(a)
    token(b, 2), sender.tokenArrived(b)
    await turn()
    expect(posts).toHaveLength(1)
    expect(posts[0]!.map((i) => [i.job_id, i.progress_data.chorus_tokens.ids])).toEqual([["a", [1]], ["b", [2]]])

    // While that POST is in flight, 8 more tokens make `a` due again: nothing is sent until the answer comes.
    for (let t = 10; t < 18; t++) token(a, t), sender.tokenArrived(a)
    await turn()
    expect(posts).toHaveLength(1)
    answer([{ success: true }, { success: true }])
    await turn()
    await turn()
    expect(posts).toHaveLength(2)
    // `a` resends from its acknowledged token 1; `b` has nothing new and stays out.
    expect(posts[1]!.map((i) => [i.job_id, i.progress_data.chorus_tokens.from, i.progress])).toEqual([["a", 1, 9]])
    expect(a.acked).toBe(1)
    expect(b.acked).toBe(1)

    // The server says `a` was canceled: only `a` stops, and nothing is acknowledged for it.
    answer([{ success: true, canceled: true }])
    await turn()
    expect(canceled).toEqual(["a"])
    expect(a.acked).toBe(1)
  })

  it("sends nothing for a removed job, and a failed POST is retried from the last acknowledged token", async () => {
    const posts: Array<Array<Item>> = []
    let fail = true
    const sender = makeProgressSender({
      identity: {},
      every: { tokens: 1, ms: 100 },
      post: (body) => {
        posts.push(body as Array<Item>)
        return fail ? Promise.reject(new Error("server away")) : Promise.resolve({ status: 200, body: [{ success: true }] })
      }
    })
    const a = job("a", [])
    const gone = job("gone", [])
    sender.add(a)
    sender.add(gone)
    sender.remove(gone)
    token(gone, 5), sender.tokenArrived(gone)
    token(a, 1), sender.tokenArrived(a)
    await turn()
    await turn()
    expect(posts.map((p) => p.map((i) => i.job_id))).toEqual([["a"]])
    fail = false
    token(a, 2), sender.tokenArrived(a)
    await turn()
    await turn()
    expect(posts[1]!.map((i) => [i.progress_data.chorus_tokens.from, i.progress_data.chorus_tokens.ids])).toEqual([[0, [1, 2]]])
    expect(a.acked).toBe(2)
  })
})
