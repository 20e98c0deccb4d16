import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Device tests need the native addon and, for CUDA, a GPU: `npm run test:device`.
    exclude: ["test/device/**", "**/node_modules/**"],
    reporters: ["default", "./test/support/SummaryReporter.ts"],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // ORT sessions live in worker threads; forks keep one test file's native state away from another's.
    pool: "forks"
  }
})
