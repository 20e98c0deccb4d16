#!/usr/bin/env bash
# Everything a GPU host runs in one device call, after the packed build is unpacked (bash .gpu-parts/recv.sh .gpu-parts):
# CUDA provider set-up, nvidia-smi, the CUDA parity tests, then `npm run bench:gpu`. The host has no npm and no
# system Node: Node 24 comes from node_modules/node/bin/node and `npm run` is emulated below.
#
#   OUT=/path bash scripts/gpu/run-all.sh [extra bench:gpu flags, e.g. --batches 1,64]
#
# Environment (all optional but OUT):
#   OUT               where the log (OUT/log) and the results (OUT/bench/) go; required
#   STAGES            which of "parity torch chorus" to run (default all three); set-up always runs. The checkpoint
#                     is made when missing whatever STAGES says. Split a run over two calls on the same warm host,
#                     e.g. STAGES="parity torch" then STAGES="chorus": results of skipped stages are reused.
#   BENCH_DIR         checkpoint, converted-model cache and results kept between calls (default /tmp/chorus-gpu-bench)
#   DEADLINE_S        seconds this script may take in all (default 570, under the 600 s of one device call)
#   PARITY_TIMEOUT_S  limit of the parity tests (default 180)
#   WEIGHTS_TIMEOUT_S, TORCH_TIMEOUT_S, CHORUS_TIMEOUT_S  limits of the bench stages (defaults 300, 300, 480)
#   CUDA_TEST_CMD     the CUDA parity test command (default: npm run test:cuda if package.json has it, else
#                     CHORUS_TEST_DEVICE=cuda npm run test:device)
set -uo pipefail

: "${OUT:?OUT must name the folder for the log and the results}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 2
mkdir -p "$OUT/bench"
exec > >(tee -a "$OUT/log") 2>&1

START=$SECONDS
STAGES="${STAGES:-parity torch chorus}"
BENCH_DIR="${BENCH_DIR:-/tmp/chorus-gpu-bench}"
DEADLINE_S="${DEADLINE_S:-570}"
NODE="$REPO/node_modules/node/bin/node"
ORT_DIR="$REPO/node_modules/onnxruntime-node/bin/napi-v6/linux/x64"
FAILED=()

say() { printf '\n=== [run-all %s, %ss] %s\n' "$(date -u +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
die() { say "FATAL: $*"; exit 2; }
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
left() { echo $((DEADLINE_S - (SECONDS - START))); }
# Runs a stage under a time limit (capped by what is left of DEADLINE_S); a failure is recorded, the run goes on.
stage() {
  local name="$1" limit="$2"
  shift 2
  local cap=$(($(left) - 20))
  ((limit > cap)) && limit=$cap
  if ((cap < 10)); then
    say "$name: SKIPPED, only $(left) s left of DEADLINE_S=$DEADLINE_S"
    FAILED+=("$name (no time left)")
    return
  fi
  say "$name (limit ${limit} s): $*"
  timeout -k 15 "$limit" "$@"
  local rc=$?
  if ((rc == 124 || rc == 137)); then
    say "$name: TIMED OUT after ${limit} s"
    FAILED+=("$name (timed out)")
  elif ((rc != 0)); then
    say "$name: FAILED with exit code $rc"
    FAILED+=("$name (exit $rc)")
  else
    say "$name: ok"
  fi
}

# `npm run NAME [-- ARGS]` without npm: the script from package.json, run by bash with node_modules/.bin (Node 24
# as `node`, vitest) first on PATH. Exported, so scripts that call `npm run` themselves work too.
npm() {
  if [[ "${1:-}" != run || -z "${2:-}" ]]; then
    echo "npm stand-in: only 'npm run NAME' works on this host, got: npm $*" >&2
    return 2
  fi
  local name="$2" cmd
  shift 2
  [[ "${1:-}" == "--" ]] && shift
  # shellcheck disable=SC2016 # JavaScript, not shell
  cmd="$("$NODE" -e 'const s = JSON.parse(require("fs").readFileSync("package.json", "utf8")).scripts ?? {}
    if (!(process.argv[1] in s)) { console.error(`package.json has no script "${process.argv[1]}"`); process.exit(3) }
    process.stdout.write(s[process.argv[1]])' "$name")" || return $?
  PATH="$REPO/node_modules/.bin:$PATH" bash -c "$cmd \"\$@\"" "npm run $name" "$@"
}
has_script() { "$NODE" -e 'process.exit(process.argv[1] in (JSON.parse(require("fs").readFileSync("package.json", "utf8")).scripts ?? {}) ? 0 : 1)' "$1"; }
export -f npm
export NODE REPO

# Results of stages skipped in this call come from an earlier call on this host; every result goes back to BENCH_DIR.
save_results() { mkdir -p "$BENCH_DIR/results" && cp -f "$OUT"/bench/*.json "$BENCH_DIR/results/" 2>/dev/null; true; }
trap save_results EXIT

# ------------------------------------------------------------------------------------------------------------ set-up
say "set-up: $REPO, stages: $STAGES, bench dir: $BENCH_DIR, deadline ${DEADLINE_S} s"
[[ -x "$NODE" ]] || die "no Node at $NODE: the packed build must include node_modules (with the 'node' package)"
"$NODE" --version || die "$NODE does not run"
[[ -f "$ORT_DIR/libonnxruntime.so.1" ]] || die "no $ORT_DIR/libonnxruntime.so.1: node_modules lacks onnxruntime-node's Linux x64 binary"
for lib in libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so; do
  if [[ -f "vendor/ort-cuda/$lib" ]]; then
    cp -f "vendor/ort-cuda/$lib" "$ORT_DIR/" || die "cannot copy vendor/ort-cuda/$lib to $ORT_DIR"
  elif [[ ! -f "$ORT_DIR/$lib" ]]; then
    die "no vendor/ort-cuda/$lib and none in $ORT_DIR: run scripts/gpu/fetch-ort-cuda.sh on the development machine and pack vendor/ with the build"
  fi
done
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing="$(ldd "$ORT_DIR/libonnxruntime_providers_cuda.so" | grep 'not found')"
[[ -z "$missing" ]] || say "WARNING: the CUDA provider lacks libraries: $missing"
timeout 30 nvidia-smi || say "WARNING: nvidia-smi failed"
timeout 120 python3 -c 'import torch, safetensors; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())' ||
  say "WARNING: python3 cannot import torch and safetensors: the PyTorch stages will fail"
export CHORUS_CACHE="$BENCH_DIR/chorus-cache"
mkdir -p "$BENCH_DIR/results" "$CHORUS_CACHE"
df -h "$BENCH_DIR" | tail -1

# ------------------------------------------------------------------------------------------------------------ parity
if has_stage parity; then
  # HOOK: the CUDA parity tests. CUDA_TEST_CMD overrides; else the package.json script test:cuda, else test:device
  # with CHORUS_TEST_DEVICE=cuda.
  if [[ -n "${CUDA_TEST_CMD:-}" ]]; then
    stage parity "${PARITY_TIMEOUT_S:-180}" bash -c "$CUDA_TEST_CMD"
  elif has_script test:cuda; then
    stage parity "${PARITY_TIMEOUT_S:-180}" bash -c 'npm run test:cuda'
  elif has_script test:device; then
    stage parity "${PARITY_TIMEOUT_S:-180}" env CHORUS_TEST_DEVICE=cuda bash -c 'npm run test:device'
  else
    say "parity: NOT RUN: no CUDA_TEST_CMD and package.json has neither test:cuda nor test:device"
    FAILED+=("parity (no test command)")
  fi
fi

# ------------------------------------------------------------------------------------------------------------- bench
if has_stage torch || has_stage chorus; then
  cp -f "$BENCH_DIR"/results/{torch,chorus,chorus-int4-*}.json "$OUT/bench/" 2>/dev/null
  flags=(--checkpoint "$BENCH_DIR/llama3-8b-random" --out "$OUT/bench"
    --weights-timeout-s "${WEIGHTS_TIMEOUT_S:-300}" --torch-timeout-s "${TORCH_TIMEOUT_S:-300}" --chorus-timeout-s "${CHORUS_TIMEOUT_S:-480}")
  has_stage torch || flags+=(--skip-torch)
  has_stage chorus || flags+=(--skip-chorus)
  # 30 s stay in reserve to print the table from whatever the stages left if the bench is cut short.
  stage bench $(($(left) - 30)) "$NODE" tools/bench-gpu/run.ts "${flags[@]}" "$@"
  if [[ ! -f "$OUT/bench/bench-gpu.md" ]]; then
    stage table 30 "$NODE" tools/bench-gpu/run.ts "${flags[@]}" --skip-weights --skip-torch --skip-chorus "$@"
  fi
fi

say "done in $((SECONDS - START)) s; results in $OUT/bench, log in $OUT/log"
if ((${#FAILED[@]} > 0)); then
  say "FAILED: ${FAILED[*]}"
  exit 1
fi
