/**
 * The bench adapter's public surface: a model with no model math, for measuring the serving path itself.
 *
 * @since 0.1.0
 */
export { BenchAdapter, type BenchOptions } from "./BenchAdapter.ts"
export { BENCH_WORD_IDS } from "./BenchWorker.ts"
