import { defineConfig } from "vitest/config"

// The device tests (npm run test:device): the native addon on a GPU (CHORUS_TEST_DEVICE=cuda) or on the CPU.
export default defineConfig({
  test: {
    include: ["test/device/**/*.test.ts"],
    reporters: ["default", "./test/support/SummaryReporter.ts"],
    testTimeout: 300_000,
    hookTimeout: 600_000,
    pool: "forks"
  }
})
