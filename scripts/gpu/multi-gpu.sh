#!/usr/bin/env bash
# Issue 11 on a host with 2 GPUs (nvidia-h200-x2), in device calls of at most 600 s on the same warm host, after the
# packed build is unpacked (bash .gpu-parts/recv.sh .gpu-parts), as scripts/gpu/serving-session.sh:
#
#   PHASE=P OUT=$OUT bash scripts/gpu/multi-gpu.sh   # set-up, CUDA parity of the fixtures over 2 and 3 shards on 2 GPUs
#                                                    # (row cache, then paged), the 8B checkpoint, then the 8B served
#                                                    # on 1 GPU and on 2 GPUs (2 shards), `chorus bench` at 1 and 128
#                                                    # streams (512 in / 256 out), 1 GPU again without CUDA graphs
#                                                    # (2 shards replay none), and the 2-GPU / 1-GPU ratios
#   PHASE=L OUT=$OUT bash scripts/gpu/multi-gpu.sh   # a Llama-3-70B-shaped float16 checkpoint at reduced depth
#                                                    # (L70 layers, default 20: 38.4 GB), each GPU's copy bandwidth,
#                                                    # the model served on 2 GPUs at 1 and 64 streams, and the
#                                                    # pipeline roofline with the measured rates as shares of it
#
# Every step keeps its result in $BENCH_DIR/multi-gpu/<step> and is skipped when that result exists (REDO=1 runs it
# again), so a phase cut short by the 600 s limit goes on where it stopped when called again. Everything is logged to
# log-$PHASE and packed with the results into $OUT/$PHASE.tgz. NO_GRAPHS=1 serves without CUDA graphs.
set -uo pipefail
: "${OUT:?OUT must name the folder for the results}"
: "${PHASE:?PHASE must be P or L}"
FINAL_OUT="$OUT"
OUT="${RES:-/tmp/chorus-results-$PHASE}"
rm -rf "$OUT"
source "$(dirname "${BASH_SOURCE[0]}")/phase-env.sh"
RESULTS="$BENCH_DIR/multi-gpu"
# Results of every call so far go back with each call (the checkpoints and the conversion cache stay).
trap 'cp -rf "$RESULTS"/. "$OUT/" 2>/dev/null; tar czf "$FINAL_OUT/$PHASE.tgz" -C "$OUT" . 2>/dev/null; cp -f "$OUT/log-$PHASE" "$FINAL_OUT/" 2>/dev/null' EXIT
CKPT8="$BENCH_DIR/llama3-8b-random"
mkdir -p "$OUT" "$RESULTS"
exec > >(tee -a "$OUT/log-$PHASE") 2>&1
GRAPHS=(); [[ "${NO_GRAPHS:-0}" == 1 ]] && GRAPHS=(--no-cuda-graphs)

# should_run STEP SECONDS: true (run the step) unless its result exists; exits the phase when fewer than SECONDS are left.
# ONLY="step ..." runs those steps alone.
should_run() {
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $1 "* ]]; then say "$1: not in ONLY"; return 1; fi
  if [[ -e "$RESULTS/$1/done" && "${REDO:-0}" != 1 ]]; then say "$1: done in an earlier call (REDO=1 runs it again)"; return 1; fi
  if (($(left) < $2)); then say "$1: NOT RUN: $(left) s left, it needs about $2 s; call PHASE=$PHASE again on the same warm host"; exit 0; fi
  mkdir -p "$RESULTS/$1"
}
mark_done() { touch "$RESULTS/$1/done"; }
# sweep STEP CKPT EXTRA...: server-sweep without the prefix check, within the time left.
sweep() {
  local step=$1 ckpt=$2; shift 2
  timeout $(($(left) - 10)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$ckpt" --out "$RESULTS/$step" --skip-weights \
    --prefix-history 0 --ready-timeout-s $(($(left) - 60)) --bench-timeout-s $(($(left) - 30)) "${GRAPHS[@]}" "$@"
  local rc=$?
  say "$step exit $rc"; [[ -f "$RESULTS/$step/server-sweep.md" ]] && cat "$RESULTS/$step/server-sweep.md"
  grep -m3 -iE "illegal|error|out of memory" "$RESULTS/$step/server.log" 2>/dev/null | cut -c1-250
  finish "$step" "$rc"
}
# finish STEP RC: a step that ended by itself, passed or failed, is a result (REDO=1 runs it again); one cut by its
# time limit (124, 137) runs again on the next call.
finish() {
  echo "$2" > "$RESULTS/$1/rc"
  if (($2 == 124 || $2 == 137)); then say "$1: cut by its time limit; call PHASE=$PHASE again"; else mark_done "$1"; fi
  return "$2"
}

nproc; free -g | head -2; df -h "$BENCH_DIR" | tail -1
timeout 20 nvidia-smi -L
GPUS="$(timeout 20 nvidia-smi -L | grep -c '^GPU ')"
((GPUS >= 1)) || { say "this host lists no GPU"; exit 1; }
if ((GPUS >= 2)); then
  # How the GPUs reach each other (NVLink or PCIe): shard hand-offs go through host memory today (docs/multi-gpu.md).
  timeout 20 nvidia-smi topo -m
  TWO=(--device cuda:0,1 --serve-arg=--shards=2); TWO_NAME=2gpu; TWO_LABEL="2 GPUs"; TEST_DEVICE=cuda:0,1; GPU_LIST=(0 1)
else
  # One GPU (issue 11's fallback while no multi-GPU host is lent): both shards on GPU 0, so the figures show what the
  # split and the hand-offs cost, not what a second GPU adds.
  say "one GPU: the 2-shard runs put both shards on GPU 0"
  TWO=(--device cuda:0 --serve-arg=--shards=2); TWO_NAME=2shards-1gpu; TWO_LABEL="2 shards, 1 GPU"; TEST_DEVICE=cuda; GPU_LIST=(0)
fi
# 20 layers (38.4 GB) on 2 GPUs; 12 (24.7 GB) on one, whose host has 64 GiB of disk for the checkpoint and its conversion.
L70="${L70:-$( ((GPUS >= 2)) && echo 20 || echo 12)}"
CKPT70="$BENCH_DIR/llama3-70b-random-L$L70"

if [[ "$PHASE" == P ]]; then
  if should_run parity 200; then
    # Set-up (the CUDA provider next to onnxruntime-node), then the fixtures' parity over 2 and 3 shards on 2 GPUs:
    # the row cache (fused attention), then the paged block pool.
    VITEST="node_modules/node/bin/node node_modules/vitest/vitest.mjs run --config vitest.device.config.ts test/device/DeviceParity.test.ts -t 'over [23] shard'"
    CUDA_TEST_CMD="CHORUS_TEST_DEVICE=$TEST_DEVICE $VITEST; a=\$?; CHORUS_TEST_ATTENTION=paged CHORUS_TEST_DEVICE=$TEST_DEVICE $VITEST; b=\$?; exit \$((a || b))" \
      STAGES="parity" DEADLINE_S=190 PARITY_TIMEOUT_S=170 OUT="$RESULTS/parity/run-all" bash scripts/gpu/run-all.sh
    rc=$?; say "parity exit $rc"; grep -E "Tests |×|FAIL" "$RESULTS/parity/run-all/log" | head -30
    finish parity "$rc"
  fi
  if [[ ! -f "$CKPT8/model.safetensors.index.json" ]]; then
    should_run weights-8b 150 && { timeout 200 python3 tools/bench-gpu/make_weights.py "$CKPT8"; say "8B weights exit $?"; }
  fi
  should_run 8b-1gpu 200 && sweep 8b-1gpu "$CKPT8" --device cuda:0 --max-batch 256 --concurrency 1,128
  # Two micro-batches in flight (the default pipeline depth of 2 shards), then one step at a time as before.
  should_run "8b-$TWO_NAME" 230 && sweep "8b-$TWO_NAME" "$CKPT8" "${TWO[@]}" --max-batch 256 --concurrency 1,128
  should_run "8b-$TWO_NAME-depth1" 230 && sweep "8b-$TWO_NAME-depth1" "$CKPT8" "${TWO[@]}" --serve-arg=--pipeline-depth=1 --max-batch 256 --concurrency 1,128
  # A model of several shards replays no CUDA graphs (DeviceShardWorker captures one-shard models only): 1 GPU without
  # them too, so that the hand-off's cost shows apart from the graphs'.
  # (The last sweep of this phase: GRAPHS stays so.)
  GRAPHS=(--no-cuda-graphs)
  should_run 8b-1gpu-nographs 200 && sweep 8b-1gpu-nographs "$CKPT8" --device cuda:0 --max-batch 256 --concurrency 1,128
  say "8B: $TWO_LABEL (2 shards) against 1 GPU, output tok/s (targets, for 2 GPUs: >= 0.9x at 1 stream, >= 1.7x at 128)"
  # Output tok/s of two sweeps at 1 and 128 streams, the second over the first, against the targets.
  RATIO_JS='
    const fs = require("fs")
    const rate = (dir, c) => {
      try { return JSON.parse(fs.readFileSync(`${dir}/server-sweep.json`, "utf8")).levels.find((l) => l.concurrency === c && l.completed > 0)?.output_throughput }
      catch { return undefined }
    }
    const lines = [`| streams | ${process.argv[4] ?? "1 shard"} tok/s | ${process.argv[3]} tok/s | ratio | target (2 GPUs) |`, "|--:|--:|--:|--:|--:|"]
    for (const [c, target] of [[1, 0.9], [128, 1.7]]) {
      const one = rate(process.argv[1], c), two = rate(process.argv[2], c)
      const ratio = one && two ? two / one : undefined
      lines.push(`| ${c} | ${one?.toFixed(1) ?? "not measured"} | ${two?.toFixed(1) ?? "not measured"} | ${ratio?.toFixed(2) ?? "-"} | >= ${target}${ratio === undefined ? "" : ratio >= target ? " met" : " MISSED"} |`)
    }
    console.log(lines.join("\n"))'
  "$NODE" -e "$RATIO_JS" "$RESULTS/8b-1gpu" "$RESULTS/8b-$TWO_NAME" "$TWO_LABEL" | tee "$RESULTS/8b-ratio.md"
  say "2 shards: two micro-batches in flight against one step at a time"
  "$NODE" -e "$RATIO_JS" "$RESULTS/8b-$TWO_NAME-depth1" "$RESULTS/8b-$TWO_NAME" "depth 2" "depth 1" | tee "$RESULTS/8b-depth-ratio.md"
  say "the same against 1 GPU without CUDA graphs (the 2-shard server replays none): the hand-off alone"
  "$NODE" -e "$RATIO_JS" "$RESULTS/8b-1gpu-nographs" "$RESULTS/8b-$TWO_NAME" "$TWO_LABEL" | tee "$RESULTS/8b-ratio-nographs.md"
  exit 0
fi

if [[ "$PHASE" == L ]]; then
  if [[ ! -f "$CKPT70/model.safetensors.index.json" ]]; then
    # The checkpoint and its conversion (a copy of the weights) both need disk: drop the 8B conversions if short.
    python3 tools/bench-gpu/make_weights.py "$CKPT70" --shape 70b --layers "$L70" --dry-run | tail -1
    need=$((2 * $(python3 tools/bench-gpu/make_weights.py "$CKPT70" --shape 70b --layers "$L70" --dry-run | sed -n 's/.*(\([0-9]*\) bytes).*/\1/p')))
    free=$(($(df -B1 --output=avail "$BENCH_DIR" | tail -1)))
    if ((free < need)); then say "need $((need / 1000000000)) GB (checkpoint + conversion), $((free / 1000000000)) GB free: removing $CHORUS_CACHE/converted"; rm -rf "$CHORUS_CACHE/converted"; fi
    free=$(($(df -B1 --output=avail "$BENCH_DIR" | tail -1)))
    if ((free < need)); then say "still $((free / 1000000000)) GB free: removing the 8B checkpoint"; rm -rf "$CKPT8"; fi
    should_run weights-70b 120 && { timeout $(($(left) - 10)) python3 tools/bench-gpu/make_weights.py "$CKPT70" --shape 70b --layers "$L70"; say "70B-shaped weights exit $?"; }
    [[ -f "$CKPT70/model.safetensors.index.json" ]] || { say "no 70B-shaped checkpoint yet: call PHASE=L again"; exit 0; }
  fi
  if should_run bandwidth 60; then
    # One GPU's streaming rate: a 4 GiB device-to-device copy, bytes read + written per second (torch_baseline.py's).
    for gpu in "${GPU_LIST[@]}"; do
      timeout 50 python3 -c '
import json, sys, torch
sys.path.insert(0, "tools/bench-gpu")
from torch_baseline import Clock, copy_bandwidth
d = torch.device(f"cuda:{sys.argv[1]}")
torch.cuda.set_device(d)
print(json.dumps(copy_bandwidth(d, Clock(d), 4)))' "$gpu" > "$RESULTS/bandwidth/gpu$gpu.json"
      say "GPU $gpu copy bandwidth exit $?: $(cat "$RESULTS/bandwidth/gpu$gpu.json")"
    done
    mark_done bandwidth
  fi
  # One GPU: the realistic configuration first (one shard, CUDA graphs unless NO_GRAPHS), then 2 shards on it.
  ((GPUS == 1)) && should_run 70b-1gpu 200 && sweep 70b-1gpu "$CKPT70" --device cuda:0 --max-batch 64 --concurrency 1,64
  should_run "70b-$TWO_NAME" 300 && sweep "70b-$TWO_NAME" "$CKPT70" "${TWO[@]}" --max-batch 64 --concurrency 1,64
  gbs="$("$NODE" -e '
    const fs = require("fs")
    const rates = process.argv.slice(2).map((g) => JSON.parse(fs.readFileSync(`${process.argv[1]}/gpu${g}.json`, "utf8")).bytesPerSecond)
    console.log((Math.min(...rates) / 1e9).toFixed(0))' "$RESULTS/bandwidth" "${GPU_LIST[@]}" 2>/dev/null)"
  if [[ -n "$gbs" ]]; then
    say "pipeline roofline at $gbs GB/s per GPU (the slower GPU's copy rate); target: 1 stream >= 60% of the in-sequence floor"
    measured=()
    for step in 70b-1gpu "70b-$TWO_NAME"; do [[ -f "$RESULTS/$step/server-sweep.json" ]] && measured+=(--sweep "$RESULTS/$step/server-sweep.json"); done
    # On one GPU the stages run in sequence on the same GPU: its floor is one GPU's (--shards 1).
    "$NODE" tools/bench-gpu/pipeline-roofline.ts --checkpoint "$CKPT70" --shards "${#GPU_LIST[@]}" --bandwidth-gbs "$gbs" --concurrency 1,64 \
      "${measured[@]}" | tee "$RESULTS/70b-roofline.md"
  else
    say "no bandwidth measured: no roofline"
  fi
  exit 0
fi
echo "PHASE must be P or L" >&2
exit 2
