#!/usr/bin/env bash
# Issue 8 on a GPU host, in two device calls back to back on the same warm host (one call is limited to 600 s):
#
#   PHASE=A OUT=$OUT bash scripts/gpu/paged-serving.sh   # set-up, CUDA parity (paged path included), the
#                                                        # PagedAttention probe, the 8B checkpoint, PyTorch baseline
#   PHASE=C OUT=$OUT bash scripts/gpu/paged-serving.sh   # the paged layout alone: engine parity (with and without
#                                                        # CUDA graphs), decode attention time per block size, and
#                                                        # the sweep with the fastest block size
#   PHASE=B OUT=$OUT bash scripts/gpu/paged-serving.sh   # chorus serve --max-batch 256 (default context) measured by
#                                                        # chorus bench (1..256 streams) + prefix reuse; a pool that
#                                                        # cannot fit exits 1 with one line
#
# Phase B serves with --attention paged when phase A's paged parity passed, else with the row cache (fused), and says so.
set -uo pipefail
: "${OUT:?OUT must name the folder for the results}"
: "${PHASE:?PHASE must be A or B}"
source "$(dirname "${BASH_SOURCE[0]}")/phase-env.sh"
CKPT="$BENCH_DIR/llama3-8b-random"
mkdir -p "$OUT" "$BENCH_DIR"
exec > >(tee -a "$OUT/log-$PHASE") 2>&1

if [[ "$PHASE" == A ]]; then
  # Set-up and the CUDA parity tests (every device test: the row cache, the paged layout, graphs per bucket).
  STAGES="parity" DEADLINE_S=330 PARITY_TIMEOUT_S=300 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh
  if grep -q "PagedShard" "$OUT/run-all/log" && ! grep -qE "FAIL .*PagedShard|×.*paged" "$OUT/run-all/log"; then
    touch "$BENCH_DIR/paged-ok"
    say "paged parity passed"
  else
    rm -f "$BENCH_DIR/paged-ok"
    say "paged parity did not pass: phase B will serve the row cache"
  fi
  say "PagedAttention probe"
  timeout 120 "$NODE" native/probes/paged-attention.ts > "$OUT/probe.jsonl" 2>"$OUT/probe.err"; say "probe exit $?"
  cat "$OUT/probe.jsonl"
  say "8B checkpoint and the PyTorch baseline"
  timeout $((570 - (SECONDS - START))) "$NODE" tools/bench-gpu/run.ts --checkpoint "$CKPT" --out "$OUT/bench" --skip-chorus
  say "bench exit $?"
  cp -f "$OUT"/bench/torch.json "$BENCH_DIR/" 2>/dev/null
  say "done"
  exit 0
fi

if [[ "$PHASE" == D ]]; then
  # First start (conversion in parallel worker threads) and second start (from the cache) of chorus serve, timed to /ready.
  for start in first second; do
    timeout 200 "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/start-$start" --concurrency 1 --requests 2 \
      --prefix-history 0 --ready-timeout-s 180 --bench-timeout-s 60 --max-batch 64
    say "$start start: exit $?"; grep -h "ready after" "$OUT/start-$start/server-sweep.md" "$OUT/log-D" 2>/dev/null | tail -1
  done
  exit 0
fi

if [[ "$PHASE" == C ]]; then
  for graphs in 0 1; do
    CHORUS_TEST_ATTENTION=paged CHORUS_TEST_CUDA_GRAPHS=$graphs CHORUS_TEST_DEVICE=cuda timeout 120 "$NODE" node_modules/vitest/vitest.mjs run \
      --config vitest.device.config.ts test/device/DeviceParity.test.ts > "$OUT/parity-paged-graphs$graphs.log" 2>&1
    say "paged parity (CUDA graphs $graphs) exit $?"; grep -E "Tests |×" "$OUT/parity-paged-graphs$graphs.log" | head -12
  done
  best=16; best_ms=1e9
  for bs in 16 128 256; do
    timeout 60 "$NODE" native/probes/paged-attention.ts --block-size $bs --cases b,d > "$OUT/probe-bs$bs.jsonl" 2>/dev/null
    ms=$("$NODE" -e 'const l=require("fs").readFileSync(process.argv[1],"utf8").split("\n").filter((x)=>x.startsWith("{")).map(JSON.parse).find(r=>r.case==="d-paged-meta"); console.log(l?.ok ? l.ms : 1e9)' "$OUT/probe-bs$bs.jsonl")
    say "block size $bs: decode attention (batch 64, past 1000) $ms ms"; grep -h '"case":"b"' "$OUT/probe-bs$bs.jsonl" | cut -c1-160
    if "$NODE" -e 'process.exit(Number(process.argv[1]) < Number(process.argv[2]) ? 0 : 1)' "$ms" "$best_ms"; then best=$bs; best_ms=$ms; fi
  done
  say "serving paged with --block-size $best"
  timeout $((580 - (SECONDS - START))) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/server-paged-bs$best" \
    --max-batch 256 --attention paged --serve-arg=--block-size=$best --ready-timeout-s 240 --bench-timeout-s 200 --prefix-repeats 3
  say "sweep exit $?"
  exit 0
fi

say "CUDA parity through the engine, row cache, CUDA graphs per bucket (PARITY_ATTENTION=paged for the block pools)"
CHORUS_TEST_ATTENTION="${PARITY_ATTENTION:-fused}" CHORUS_TEST_CUDA_GRAPHS=1 CHORUS_TEST_DEVICE=cuda timeout 150 "$NODE" node_modules/vitest/vitest.mjs run \
  --config vitest.device.config.ts test/device/DeviceParity.test.ts > "$OUT/parity.log" 2>&1
say "parity exit $?"; grep -E "Tests |×" "$OUT/parity.log" | head -20
for attention in ${ATTENTION:-fused}; do
  say "serving with --attention $attention"
  timeout $((560 - (SECONDS - START) - 60)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/server-$attention" \
    --max-batch 256 --attention "$attention" --ready-timeout-s 300 --bench-timeout-s 300 --prefix-repeats 3
  say "sweep exit $?"
done
say "a KV pool that cannot fit: --gpu-memory-utilization 0.05"
timeout 60 "$NODE" src/cli/main.ts serve --model "$CKPT" --dtype float16 --device cuda --port 0 --gpu-memory-utilization 0.05 \
  > "$OUT/nofit.out" 2> "$OUT/nofit.err"
echo "exit $?" >> "$OUT/nofit.err"
cat "$OUT/nofit.err" | tail -5
say "done"
