// The shard lifecycle machine on its own, with load actors that succeed or fail on demand: what it reports, when it
// restarts, when it gives up. Real xstate timers (delays of a few milliseconds).
import { describe, expect, it } from "vitest"
import { fromPromise } from "xstate"
import { type RestartPolicy, shardLifecycleMachine, type ShardState, startShardLifecycle } from "../../../src/core/shard/ShardLifecycle.ts"

/** A machine whose loads follow `outcomes` in order (true: loads; false: fails), recording each load's `restart` flag. */
const lifecycle = (outcomes: ReadonlyArray<boolean>, policy: RestartPolicy, now?: () => number) => {
  const loads: Array<boolean> = []
  const machine = shardLifecycleMachine.provide({
    actors: {
      load: fromPromise(async ({ input }) => {
        loads.push(input.restart)
        await new Promise((r) => setTimeout(r, 2))
        if (outcomes[loads.length - 1] === false) throw new Error(`load ${loads.length} failed`)
      })
    }
  })
  const shard = startShardLifecycle(machine, { index: 0, policy, ...(now === undefined ? {} : { now }) })
  const states: Array<ShardState> = []
  shard.watch((s) => {
    if (states[states.length - 1] !== s.state) states.push(s.state)
  })
  return { shard, loads, states }
}

const until = async (check: () => boolean, ms = 2000) => {
  const start = performance.now()
  while (!check()) {
    if (performance.now() - start > ms) throw new Error("condition not met")
    await new Promise((r) => setTimeout(r, 1))
  }
  return performance.now() - start
}

describe("shard lifecycle machine", () => {
  it("loads, then after a lost worker goes crashed -> restarting -> ready and counts the restart", async () => {
    const { shard, loads, states } = lifecycle([true, true], { restartDelayMs: 5 })
    expect(shard.state()).toBe("loading")
    await until(() => shard.state() === "ready")
    shard.lost("worker exited with code: 1")
    expect(shard.state()).toBe("crashed")
    await until(() => shard.state() === "ready")
    expect(states).toEqual(["loading", "ready", "crashed", "restarting", "ready"])
    expect(loads).toEqual([false, true])
    expect(shard.status()).toEqual({ index: 0, state: "ready", restarts: 1, lastError: "worker exited with code: 1" })
    shard.stop()
  })

  it("a first load that fails is final: failed, with the load's error", async () => {
    const { shard, states } = lifecycle([false], {})
    await until(() => shard.state() === "failed")
    expect(states).toEqual(["loading", "failed"])
    expect(shard.status().lastError).toBe("load 1 failed")
  })

  it("gives up after maxCrashes within the window; a lost event outside ready changes nothing", async () => {
    const { shard, states } = lifecycle([true, true, true], { maxCrashes: 2, windowMs: 60_000, restartDelayMs: 20 })
    await until(() => shard.state() === "ready")
    shard.lost("first")
    // Already crashed: another report of the same loss is not a second crash.
    shard.lost("echo")
    await until(() => shard.state() === "restarting")
    shard.lost("during restart")
    await until(() => shard.state() === "ready")
    expect(shard.status().lastError).toBe("first")
    shard.lost("second")
    expect(shard.state()).toBe("failed")
    expect(states).toEqual(["loading", "ready", "crashed", "restarting", "ready", "failed"])
    expect(shard.status()).toEqual({ index: 0, state: "failed", restarts: 1, lastError: "second" })
    shard.lost("after the end")
    expect(shard.state()).toBe("failed")
  })

  it("crashes older than the window do not count", async () => {
    let t = 0
    const { shard } = lifecycle([true, true, true], { maxCrashes: 2, windowMs: 1000, restartDelayMs: 1 }, () => t)
    await until(() => shard.state() === "ready")
    shard.lost("one")
    await until(() => shard.state() === "ready")
    t = 5000
    shard.lost("two, much later")
    expect(shard.state()).toBe("crashed")
    await until(() => shard.state() === "ready")
    expect(shard.status().restarts).toBe(2)
    shard.stop()
  })

  it("a fresh worker that cannot load counts as a crash: back to crashed, then failed when too many", async () => {
    const { shard, states, loads } = lifecycle([true, false, false], { maxCrashes: 3, restartDelayMs: 1 })
    await until(() => shard.state() === "ready")
    shard.lost("gone")
    await until(() => shard.state() === "failed")
    expect(states).toEqual(["loading", "ready", "crashed", "restarting", "crashed", "restarting", "failed"])
    expect(loads).toEqual([false, true, true])
    expect(shard.status().lastError).toBe("load 3 failed")
  })

  it("waits longer before each restart while crashes repeat (backoff doubles)", async () => {
    const { shard } = lifecycle([true, true, true], { maxCrashes: 10, restartDelayMs: 40 })
    await until(() => shard.state() === "ready")
    shard.lost("one")
    const first = await until(() => shard.state() === "restarting")
    await until(() => shard.state() === "ready")
    shard.lost("two")
    const second = await until(() => shard.state() === "restarting")
    expect(first).toBeGreaterThanOrEqual(35)
    expect(second).toBeGreaterThanOrEqual(75)
    shard.stop()
  })
})
