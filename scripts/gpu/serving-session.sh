#!/usr/bin/env bash
# The serving path and the first start on a GPU host, in two device calls back to back on the same warm host (one
# call is limited to 600 s), after the packed build is unpacked (bash .gpu-parts/recv.sh .gpu-parts):
#
#   PHASE=S OUT=$OUT bash scripts/gpu/serving-session.sh   # set-up, CUDA parity (row cache, CUDA graphs per bucket,
#                                                          # row reuse), the 8B checkpoint, then `chorus serve` from
#                                                          # nothing (first start: conversion included) measured by
#                                                          # `chorus bench` 1..256 streams + the second-turn check,
#                                                          # then a second start from the conversion cache
#   PHASE=Q OUT=$OUT bash scripts/gpu/serving-session.sh   # `npm run bench:gpu`: PyTorch, Chorus float16 and int4 in
#                                                          # one run; then the token budget against ITL at 64 streams
#
# Everything is logged to log-$PHASE and packed with the results into $OUT/$PHASE.tgz; the checkpoint and the conversion cache stay in $BENCH_DIR between calls.
set -uo pipefail
: "${OUT:?OUT must name the folder for the results}"
# A device call brings back at most 8 files: everything is written to $RES and packed into $OUT/$PHASE.tgz at exit.
FINAL_OUT="$OUT"
OUT="${RES:-/tmp/chorus-results-$PHASE}"
rm -rf "$OUT"
trap 'tar czf "$FINAL_OUT/$PHASE.tgz" -C "$OUT" . 2>/dev/null; cp -f "$OUT/log-$PHASE" "$FINAL_OUT/" 2>/dev/null' EXIT
: "${PHASE:?PHASE must be S or Q}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 2
export BENCH_DIR="${BENCH_DIR:-/tmp/chorus-gpu-bench}"
export CHORUS_CACHE="$BENCH_DIR/chorus-cache"
NODE="$REPO/node_modules/node/bin/node"
CKPT="$BENCH_DIR/llama3-8b-random"
mkdir -p "$OUT" "$BENCH_DIR"
exec > >(tee -a "$OUT/log-$PHASE") 2>&1
START=$SECONDS
say() { printf '\n=== [%s %ss] %s\n' "$PHASE" "$((SECONDS - START))" "$*"; }
left() { echo $((${DEADLINE_S:-575} - (SECONDS - START))); }
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$REPO/node_modules/.bin:$PATH"
nproc; free -g | head -2; df -h "$BENCH_DIR" | tail -1

if [[ "$PHASE" == S ]]; then
  # Set-up (the CUDA provider copied next to onnxruntime-node) and every device test, with CUDA graphs per bucket.
  CUDA_TEST_CMD='CHORUS_TEST_CUDA_GRAPHS=1 CHORUS_TEST_DEVICE=cuda npm run test:device' STAGES="parity" DEADLINE_S=200 \
    PARITY_TIMEOUT_S=170 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh
  say "parity exit $?"; grep -E "Tests |×|✓ .*second turn" "$OUT/run-all/log" | head -20
  if [[ ! -f "$CKPT/model.safetensors.index.json" ]]; then
    say "8B checkpoint"
    timeout 200 python3 tools/bench-gpu/make_weights.py "$CKPT"; say "weights exit $?"
  fi
  rm -rf "$CHORUS_CACHE/converted"
  say "first start (conversion included) and the sweep, --max-batch 256, default context"
  timeout $(($(left) - 60)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/server" --skip-weights \
    --max-batch 256 --ready-timeout-s 240 --bench-timeout-s 120 --prefix-repeats 3
  say "sweep exit $?"
  say "second start (from the conversion cache)"
  timeout $(($(left) - 5)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/second-start" --skip-weights \
    --max-batch 256 --concurrency 1 --requests 2 --prefix-history 0 --ready-timeout-s 120 --bench-timeout-s 30
  say "second start exit $?"; grep -h "ready after" "$OUT/log-S" | tail -2
  exit 0
fi

if [[ "$PHASE" == Q ]]; then
  say "bench:gpu: PyTorch, Chorus float16 and int4, same run (${BENCH_GPU_FLAGS:-defaults})"
  # shellcheck disable=SC2086 # BENCH_GPU_FLAGS is a list of flags
  STAGES="torch chorus" DEADLINE_S=$(($(left) - 150)) OUT="$OUT/run-all" bash scripts/gpu/run-all.sh ${BENCH_GPU_FLAGS:-}
  say "bench:gpu exit $?"
  for budget in ${BUDGETS:-2048}; do
    say "token budget $budget at 64 streams"
    timeout $(($(left) - 5)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/budget-$budget" --skip-weights \
      --max-batch 256 --concurrency 64 --prefix-history 0 --ready-timeout-s 90 --bench-timeout-s 90 \
      --serve-arg=--max-num-batched-tokens=$budget
    say "budget $budget exit $?"
  done
  exit 0
fi
echo "PHASE must be S or Q" >&2
exit 2
