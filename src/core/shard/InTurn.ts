/**
 * A shard worker's tasks one after another, in the order posted. The shard actor posts the next task while one runs
 * (so that a decode-ahead step starts as the step before it ends), and piscina may hand a worker two tasks in one
 * turn: without this, a task would start while another awaits (onnxruntime-node's `run`), a `release` could overtake
 * a step, and a synchronous step's answer would wait until the step after it had run. Each task starts in a
 * microtask after the one before has settled, so the answer before it is posted first.
 */
let busy: Promise<unknown> = Promise.resolve()

export const inTurn = <A>(task: () => A | Promise<A>): Promise<A> => {
  const run = busy.then(task, task)
  busy = run.catch(() => undefined)
  return run
}
