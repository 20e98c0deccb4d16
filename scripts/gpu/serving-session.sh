#!/usr/bin/env bash
# The serving path and the first start on a GPU host, in two device calls back to back on the same warm host (one
# call is limited to 600 s), after the packed build is unpacked (bash .gpu-parts/recv.sh .gpu-parts):
#
#   PHASE=S OUT=$OUT bash scripts/gpu/serving-session.sh   # set-up, CUDA parity (row cache, CUDA graphs per bucket,
#                                                          # row reuse), the 8B checkpoint, then `chorus serve` from
#                                                          # nothing (first start: conversion included) measured by
#                                                          # `chorus bench` 1..256 streams + the second-turn check,
#                                                          # then a second start from the conversion cache
#   PHASE=Q1 OUT=$OUT bash scripts/gpu/serving-session.sh  # `npm run bench:gpu`: PyTorch, Chorus float16 and int4 in
#                                                          # one run (1 and 64 sequences)
#   PHASE=Q2 OUT=$OUT bash scripts/gpu/serving-session.sh  # int4 error on the 8B, the token budget against ITL at 64
#                                                          # streams, the second turn with row reuse (no CUDA graphs),
#                                                          # and CUDA graphs beside chunked prompts
#   PHASE=F OUT=$OUT bash scripts/gpu/serving-session.sh   # set-up and the 8B checkpoint, then the first start as a
#                                                          # user meets it (no conversion, no hash memo), the second
#                                                          # start, and a first start with the page cache dropped
#   PHASE=X OUT=$OUT bash scripts/gpu/serving-session.sh   # decode attention by backend (flash decoding, XQA): the
#                                                          # GQA probe, the device tests with XQA, and the 8B served
#                                                          # at 1 and 64 streams with and without it
#   PHASE=Q3 OUT=$OUT bash scripts/gpu/serving-session.sh  # chorus serve float16 vs --quantize int4 (zp, sym) through
#                                                          # chorus bench, 1 and 64 streams
#   PHASE=C OUT=$OUT bash scripts/gpu/serving-session.sh   # Chorus's 4-bit kernels: probe, device test, 8B int4
#                                                          # served with Chorus's kernels, float16, int4 with ORT's
#                                                          # (C_RUNS: which of int4-chorus
#                                                          # int4-chorus-r256 float16 int4-ort; C_PROBE: the probe's
#                                                          # variants; C_SKIP_TEST=1: no device test)
#   PHASE=N OUT=$OUT bash scripts/gpu/serving-session.sh   # where chorus.Int4Linear's time goes: its kernel times by
#                                                          # shape (CHORUS_INT4_TIMING), then ncu where the host has it
#   PHASE=A OUT=$OUT bash scripts/gpu/serving-session.sh   # chorus.DecodeAttention: equal to GroupQueryAttention,
#                                                          # its time a layer against XQA's (32 layers, CUDA graph),
#                                                          # the device test, the 8B served with each
#   PHASE=AN OUT=$OUT bash scripts/gpu/serving-session.sh  # chorus.DecodeAttention against XQA at 64 x 1k: cache row
#                                                          # length (--slot), then ncu on each kernel
#   PHASE=G OUT=$OUT bash scripts/gpu/serving-session.sh   # chorus.Linear's float16 GEMV against cuBLAS (MLP probe),
#                                                          # its SASS, the device test, the 8B served with each
#   PHASE=H OUT=$OUT bash scripts/gpu/serving-session.sh   # chorus.Linear (one resident wave) and the one-launch
#                                                          # decode attention: probes, device tests, 8B served
#   PHASE=B OUT=$OUT bash scripts/gpu/serving-session.sh   # bench:gpu with ORT's kernels and with Chorus's
#   PHASE=MA OUT=$OUT bash scripts/gpu/serving-session.sh  # Marlin (CHORUS_INT4_KERNEL=marlin): device test, MLP probe at
#                                                          # block 128, the 8B int4 served (MA_RUNS), bench:gpu (MA_BENCH=1)
#   PHASE=T OUT=$OUT bash scripts/gpu/serving-session.sh   # kernel timelines of decode steps (nsys), f16 and int4 at
#                                                          # 1 and 64 streams, after marlin-check and its device test
#   PHASE=D OUT=$OUT bash scripts/gpu/serving-session.sh   # decode ahead (CHORUS_DECODE_AHEAD=1 / 0): device tests,
#                                                          # step overhead and the 8B served, alternating; bench:gpu
#   PHASE=O OUT=$OUT bash scripts/gpu/serving-session.sh   # a one-stream decode step's time outside ORT's run, and
#                                                          # V8 CPU profiles of it (native/probes/step-overhead.ts)
#   PHASE=U OUT=$OUT bash scripts/gpu/serving-session.sh   # the SwiGLU fold into chorus.Linear (CHORUS_FOLD_SWIGLU):
#                                                          # probe, device test, bench:gpu and served, with and without
#   PHASE=W OUT=$OUT bash scripts/gpu/serving-session.sh   # chorus.Int4Linear at one row: the probe (W_PROBE), warp
#                                                          # stalls and instruction mix by ncu (W_NCU), the SASS
#   PHASE=K OUT=$OUT bash scripts/gpu/serving-session.sh   # kernel times: XQA decode attention at 8 / 32 layers and
#                                                          # from a CUDA graph, the int4 MLP through fpA_intB
#   PHASE=I OUT=$OUT bash scripts/gpu/serving-session.sh   # int4 through ORT's CUTLASS weight-only kernels
#                                                          # (ORT_FPA_INTB_GEMM=1): the int4 device tests with them,
#                                                          # then bench:gpu float16 and int4 b32-sym without the
#                                                          # switch, int4 b32-sym and b32-zp with it
#   PHASE=M OUT=$OUT bash scripts/gpu/serving-session.sh   # the MLP's fused-SwiGLU options (native/probes/mlp-fusion.ts:
#                                                          # today's graph, QuickGelu, one-expert MoE), then the same
#                                                          # with ORT's per-node profile at M 1 and at M 64
#
# Everything is logged to log-$PHASE and packed with the results into $OUT/$PHASE.tgz; the checkpoint and the conversion cache stay in $BENCH_DIR between calls.
set -uo pipefail
: "${OUT:?OUT must name the folder for the results}"
# A device call brings back at most 8 files: everything is written to $RES and packed into $OUT/$PHASE.tgz at exit.
FINAL_OUT="$OUT"
OUT="${RES:-/tmp/chorus-results-$PHASE}"
rm -rf "$OUT"
trap 'tar czf "$FINAL_OUT/$PHASE.tgz" -C "$OUT" . 2>/dev/null; cp -f "$OUT/log-$PHASE" "$FINAL_OUT/" 2>/dev/null' EXIT
: "${PHASE:?PHASE must be S, Q1, Q2, Q3, V, F, X, I, M, K, C, N, W, A, AN, G, H, B, U, O, D, MA or T}"
source "$(dirname "${BASH_SOURCE[0]}")/phase-env.sh"
CKPT="$BENCH_DIR/llama3-8b-random"
mkdir -p "$OUT" "$BENCH_DIR"
exec > >(tee -a "$OUT/log-$PHASE") 2>&1
nproc; free -g | head -2; df -h "$BENCH_DIR" | tail -1

# The random 8B checkpoint, made once a host (it stays in $BENCH_DIR between calls).
ensure_weights() {
  [[ -f "$CKPT/model.safetensors.index.json" ]] || { timeout 200 python3 tools/bench-gpu/make_weights.py "$CKPT"; say "weights exit $?"; }
}
# Device tests through run-all.sh's parity stage, logged in $OUT/$1, within $2 s: $3 is their environment (e.g.
# CHORUS_TEST_CUDA_GRAPHS=1, or "" for none), the rest vitest's arguments (test files, -t NAME).
device_test() {
  local name=$1 limit=$2 env=$3; shift 3
  CUDA_TEST_CMD="$env CHORUS_TEST_DEVICE=cuda node_modules/node/bin/node node_modules/vitest/vitest.mjs run --config vitest.device.config.ts $*" \
    STAGES="parity" DEADLINE_S=$limit PARITY_TIMEOUT_S=$((limit - 10)) OUT="$OUT/$name" bash scripts/gpu/run-all.sh >/dev/null 2>&1
  say "device tests exit $?"; grep -E "Test Files|Tests |×|Error|expected" "$OUT/$name/log" | head -20
}
# test/device/ChorusOpsDevice.test.ts with CUDA graphs on, only the tests named like $2 when given; logged in $OUT/$1.
chorus_ops_device_test() { device_test "$1" 120 CHORUS_TEST_CUDA_GRAPHS=1 test/device/ChorusOpsDevice.test.ts ${2:+-t $2}; }
# The 8B served with `chorus serve --cuda-graphs --max-batch 256` and measured by `chorus bench` at 1 and 64 streams
# into $OUT/$1; the arguments after it go to server-sweep.ts (--serve-arg=... for chorus serve).
serve_8b() {
  local name=$1; shift
  timeout $(($(left) - 5)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/$name" --skip-weights \
    --max-batch 256 --concurrency 1,64 --prefix-history 0 --ready-timeout-s 150 --bench-timeout-s 90 "$@"
  say "exit $?"; grep -E "^\| (1|64) \||ready after" "$OUT/$name/server-sweep.md"
}
# The 8B float16 served (what a user measures) once per value of --$1 (the other arguments) into $OUT/served-VALUE,
# while time is left.
serve_8b_by() {
  local flag=$1; shift
  ensure_weights
  for value in "$@"; do
    (( $(left) > 100 )) || { say "no time left for --$flag $value"; continue; }
    say "8B float16 served, --$flag $value"
    serve_8b "served-$value" --serve-arg=--$flag=$value
  done
}

if [[ "$PHASE" == S ]]; then
  # Set-up (the CUDA provider copied next to onnxruntime-node) and the device tests this work touches, CUDA graphs on.
  CUDA_TEST_CMD='CHORUS_TEST_CUDA_GRAPHS=1 CHORUS_TEST_DEVICE=cuda node_modules/node/bin/node node_modules/vitest/vitest.mjs run --config vitest.device.config.ts test/device/Int4Device.test.ts test/device/DeviceParity.test.ts -t "int4|Int4|second turn|pattern of load|tiny-llama3-a over 1"' \
    STAGES="parity" DEADLINE_S=150 PARITY_TIMEOUT_S=130 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh
  say "parity exit $?"; grep -E "Tests |×" "$OUT/run-all/log" | head -20
  if [[ ! -f "$CKPT/model.safetensors.index.json" ]]; then
    say "8B checkpoint"
    timeout 200 python3 tools/bench-gpu/make_weights.py "$CKPT"; say "weights exit $?"
  fi
  rm -rf "$CHORUS_CACHE/converted"
  say "first start (conversion included) and the sweep, --max-batch 256, default context"
  timeout $(($(left) - 40)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/server" --skip-weights \
    --max-batch 256 --ready-timeout-s 240 --bench-timeout-s 120 --prefix-repeats 3
  say "sweep exit $?"
  say "second start (from the conversion cache)"
  timeout $(($(left) - 5)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/second-start" --skip-weights \
    --max-batch 256 --concurrency 1 --requests 2 --prefix-history 0 --ready-timeout-s 120 --bench-timeout-s 30
  say "second start exit $?"; grep -h "ready after" "$OUT/log-S" | tail -2
  exit 0
fi

if [[ "$PHASE" == Q1 ]]; then
  say "bench:gpu: PyTorch, Chorus float16 and int4 (b32-zp), same run"
  CHORUS_CUDA_GRAPHS=1 STAGES="torch chorus" DEADLINE_S=$(($(left) - 10)) OUT="$OUT/run-all" bash scripts/gpu/run-all.sh --batches 1,64 --int4 b32-zp
  say "bench:gpu exit $?"
  cp -f "$OUT"/run-all/bench/*.md "$OUT/" 2>/dev/null
  exit 0
fi

if [[ "$PHASE" == Q2 ]]; then
  say "int4 error on the random 8B against float16"
  timeout 200 "$NODE" tools/bench-quant.ts --device cuda:0 --dtype float16 --model "$CKPT" --variants b32-zp > "$OUT/quant-8b.md" 2>&1
  say "bench-quant exit $?"; tail -15 "$OUT/quant-8b.md"
  say "token budget 2048 at 64 streams"
  timeout 100 "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/budget-2048" --skip-weights \
    --max-batch 256 --concurrency 64 --prefix-history 0 --ready-timeout-s 60 --bench-timeout-s 60 --serve-arg=--max-num-batched-tokens=2048
  say "budget exit $?"
  say "second turn with row reuse (no CUDA graphs)"
  timeout 80 "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/reuse-nographs" --skip-weights --no-cuda-graphs \
    --max-batch 256 --concurrency 1 --requests 2 --prefix-repeats 3 --ready-timeout-s 60 --bench-timeout-s 30
  say "reuse exit $?"
  say "diagnosis: CUDA graphs with chunked prompts (budget 256, no reuse)"
  timeout $(($(left) - 5)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/graphs-chunked" --skip-weights \
    --max-batch 256 --concurrency 1,16 --requests 16 --prefix-history 0 --ready-timeout-s 60 --bench-timeout-s 60 \
    --serve-arg=--max-num-batched-tokens=256
  say "chunked exit $?"; grep -m2 -E "illegal|disabled" "$OUT/graphs-chunked/server.log" | cut -c1-250
  exit 0
fi
if [[ "$PHASE" == F ]]; then
  # Set-up only (the CUDA provider; STAGES names no stage), then the checkpoint.
  STAGES="none" DEADLINE_S=60 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh >/dev/null 2>&1; say "set-up exit $?"
  ensure_weights
  start() { # start NAME: time to /ready (server-sweep's), and the server's own digest and conversion lines
    timeout $(($(left) - 5)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/$1" --skip-weights \
      --max-batch 256 --concurrency 1 --requests 2 --prefix-history 0 --ready-timeout-s 150 --bench-timeout-s 30
    say "$1 exit $?: $(grep -h -m1 -o 'load [0-9.]* s to /ready' "$OUT/$1/server-sweep.md")"
    grep -h -E "content digests|converted " "$OUT/$1/server.log" | cut -c1-250
  }
  rm -rf "$CHORUS_CACHE/converted" "$CHORUS_CACHE/hashes.json"
  say "first start, checkpoint in the page cache (it was just written), no conversion and no hash memo"
  start first-start
  say "second start (conversion cache and hash memo)"
  start second-start
  rm -rf "$CHORUS_CACHE/converted" "$CHORUS_CACHE/hashes.json"
  if sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
    say "first start with the page cache dropped (the checkpoint read from disk)"
    start first-start-cold
  else
    say "cannot drop the page cache here: no cold first start"
  fi
  exit 0
fi
if [[ "$PHASE" == X ]]; then
  STAGES="none" DEADLINE_S=60 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh >/dev/null 2>&1; say "set-up exit $?"
  for setting in "" "ORT_ENABLE_XQA=1" "ORT_DISABLE_FLASH_DECODE=1"; do
    say "GQA probe ${setting:-(default)}"
    timeout 90 env $setting "$NODE" native/probes/gqa-backends.ts 2>&1 | grep -v "^$" | tee -a "$OUT/gqa-backends.txt"
  done
  say "device tests with XQA (row cache, CUDA graphs)"
  CUDA_TEST_CMD='ORT_ENABLE_XQA=1 CHORUS_TEST_CUDA_GRAPHS=1 CHORUS_TEST_DEVICE=cuda node_modules/node/bin/node node_modules/vitest/vitest.mjs run --config vitest.device.config.ts test/device/DeviceParity.test.ts test/device/QuantizedCheckpointDevice.test.ts' \
    STAGES="parity" DEADLINE_S=110 PARITY_TIMEOUT_S=100 OUT="$OUT/run-all-xqa" bash scripts/gpu/run-all.sh >/dev/null 2>&1
  say "device tests exit $?"; grep -E "Test Files|Tests |×" "$OUT/run-all-xqa/log" | head -20
  ensure_weights
  for setting in "ORT_ENABLE_XQA=0" "ORT_ENABLE_XQA=1"; do
    say "8B served, $setting"
    timeout $(($(left) - 5)) env $setting "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/serve-$setting" --skip-weights \
      --max-batch 256 --concurrency 1,64 --prefix-history 0 --ready-timeout-s 120 --bench-timeout-s 90
    say "exit $?"; grep -E "^\| (1|64) \|" "$OUT/serve-$setting/server-sweep.md"
  done
  exit 0
fi
if [[ "$PHASE" == I ]]; then
  # ORT 1.29's provider holds TensorRT-LLM's fpA_intB kernels behind ORT_FPA_INTB_GEMM (its strings; ORT's docs: fp16
  # or bf16, 4 or 8 bits, blocks of 32/64/128, N % 64 == 0, constant weights; a compact build takes scale-only
  # blocks of 32). Without it MatMulNBits dequantizes every weight at batch > 1: int4 ran at 0.57x float16 at 64.
  STAGES="none" DEADLINE_S=60 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh >/dev/null 2>&1; say "set-up exit $?"
  ensure_weights
  say "int4 device tests with ORT_FPA_INTB_GEMM=1 (CUDA graphs on)"
  CUDA_TEST_CMD='ORT_FPA_INTB_GEMM=1 CHORUS_TEST_CUDA_GRAPHS=1 CHORUS_TEST_DEVICE=cuda node_modules/node/bin/node node_modules/vitest/vitest.mjs run --config vitest.device.config.ts test/device/Int4Device.test.ts test/device/QuantizedCheckpointDevice.test.ts' \
    STAGES="parity" DEADLINE_S=100 PARITY_TIMEOUT_S=90 OUT="$OUT/run-all-fpa" bash scripts/gpu/run-all.sh >/dev/null 2>&1
  say "device tests exit $?"; grep -E "Test Files|Tests |×" "$OUT/run-all-fpa/log" | head -20
  # The int4 conversions do not depend on the switch (it is read when a session is made), so the second run reuses
  # the first one's b32-sym conversion; b32-zp (zero points: outside a compact build's contract) comes last.
  say "bench:gpu float16 and int4 b32-sym without the switch"
  CHORUS_CUDA_GRAPHS=1 STAGES="chorus" DEADLINE_S=$(( ($(left) - 20) / 2 )) OUT="$OUT/bench-default" bash scripts/gpu/run-all.sh --batches 1,64 --int4 b32-sym
  say "bench:gpu int4 with ORT_FPA_INTB_GEMM=1"
  ORT_FPA_INTB_GEMM=1 CHORUS_CUDA_GRAPHS=1 STAGES="chorus" DEADLINE_S=$(($(left) - 10)) OUT="$OUT/bench-fpa" bash scripts/gpu/run-all.sh --batches 1,64 --skip-chorus --int4 b32-sym,b32-zp
  for d in bench-default bench-fpa; do [[ -f "$OUT/$d/bench/bench-gpu.md" ]] && { say "$d"; grep -A12 -i "int4" "$OUT/$d/bench/bench-gpu.md" | head -16; }; done
  exit 0
fi
if [[ "$PHASE" == M ]]; then
  # Issue item 1: gate|up, SwiGLU and down as fewer kernels. Set-up only (the CUDA provider), then the probe (about
  # 30 s: 1.2 GB of random weights written to /tmp/mlp-fusion, seven sessions of 8 layers), then its profiles.
  STAGES="none" DEADLINE_S=60 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh >/dev/null 2>&1; say "set-up exit $?"
  say "MLP fusion probe"
  timeout 180 "$NODE" native/probes/mlp-fusion.ts 2>&1 | tee "$OUT/mlp-fusion.txt"; say "probe exit ${PIPESTATUS[0]}"
  say "the int4 MLP through TensorRT-LLM's fpA_intB kernels (ORT_FPA_INTB_GEMM=1)"
  ORT_FPA_INTB_GEMM=1 timeout 120 "$NODE" native/probes/mlp-fusion.ts --only q-sym,q-zp 2>&1 | tee "$OUT/mlp-fusion-fpa.txt"; say "fpA exit ${PIPESTATUS[0]}"
  for M in 1 64; do
    say "MLP fusion probe with ORT's per-node profile, M $M"
    timeout 100 "$NODE" native/probes/mlp-fusion.ts --profile --batches "$M" --runs 30 --only b,c-inter+keep,c-gate/up+keep,q-sym 2>&1 | tee "$OUT/mlp-fusion-profile-m$M.txt"
    say "profile exit ${PIPESTATUS[0]}"
  done
  rm -rf /tmp/mlp-fusion
  exit 0
fi
if [[ "$PHASE" == K ]]; then
  # Kernel times for the closing figures: decode attention (XQA) at 8 and 32 layers a session, and 32 replayed from a
  # CUDA graph as the server runs them; the int4 MLP through the fpA_intB kernels.
  STAGES="none" DEADLINE_S=60 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh >/dev/null 2>&1; say "set-up exit $?"
  for args in "--layers 8" "--layers 32" "--layers 32 --graph"; do
    say "GQA probe, XQA, $args"
    ORT_ENABLE_XQA=1 timeout 120 "$NODE" native/probes/gqa-backends.ts $args 2>&1 | grep -v "^$" | tee -a "$OUT/gqa-xqa.txt"
  done
  say "the int4 MLP through TensorRT-LLM's fpA_intB kernels (ORT_FPA_INTB_GEMM=1)"
  ORT_FPA_INTB_GEMM=1 timeout 150 "$NODE" native/probes/mlp-fusion.ts --only q-sym,q-zp 2>&1 | tee "$OUT/mlp-fusion-fpa.txt"; say "fpA exit ${PIPESTATUS[0]}"
  rm -rf /tmp/mlp-fusion
  exit 0
fi
if [[ "$PHASE" == Q3 ]]; then
  # What a user measures: `chorus serve` float16 and `--quantize int4` (default block 32 with zero points, and block
  # 32 symmetric) through `chorus bench`, 1 and 64 streams, back to back on one host.
  STAGES="none" DEADLINE_S=60 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh >/dev/null 2>&1; say "set-up exit $?"
  ensure_weights
  serve() { # serve NAME [serve args...]
    local name=$1; shift
    local extra=(); for a in "$@"; do extra+=("--serve-arg=$a"); done
    timeout $(($(left) - 5)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/$name" --skip-weights \
      --max-batch 256 --concurrency 1,64 --prefix-history 0 --ready-timeout-s 150 --bench-timeout-s 90 "${extra[@]}"
    say "$name exit $?"; grep -E "^\| (1|64) \||ready after" "$OUT/$name/server-sweep.md"
  }
  serve float16
  serve int4-b32-zp --quantize=int4
  serve int4-b32-sym --quantize=int4 --quant-symmetric
  exit 0
fi
# Set-up (the CUDA provider) and Chorus's custom-op library: as packed, or built here with the host's nvcc when it
# does not link here (PHASE=C and N).
cuda_ops_setup() {
  STAGES="none" DEADLINE_S=60 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh >/dev/null 2>&1; say "set-up exit $?"
  local lib=native/build-cuda/libchorus_cuda_ops.so
  if [[ ! -f $lib ]] || ldd $lib | grep -q "not found"; then
    say "building $lib here"; PATH="/usr/local/cuda/bin:$PATH" "$NODE" native/build.ts --cuda-ops 2>&1 | tail -3
  fi
  ldd $lib | grep -E "cudart|not found"
}

# Marlin outside ORT (native/probes/marlin-check.cu, built here with the host's nvcc) on 8B's QKV, gate|up and down
# shapes, each row count checked 20 times (its wrong elements come and go from run to run), into $OUT/marlin-check.txt.
marlin_check() {
  say "marlin-check (built here with the host's nvcc), 20 runs a row count"
  if PATH="/usr/local/cuda/bin:/usr/local/cuda-13.0/bin:$PATH" nvcc -O3 -std=c++17 --expt-relaxed-constexpr -arch=sm_90 native/probes/marlin-check.cu -o /tmp/marlin-check >/dev/null 2>&1; then
    for shape in "4096 6144" "4096 28672" "14336 4096"; do
      timeout 60 /tmp/marlin-check $shape 1,16,64,128,200,512 16 20 2>&1 | tee -a "$OUT/marlin-check.txt"
    done
  else
    say "marlin-check: nvcc failed or missing"
  fi
}

# native/probes/gemv-bandwidth.cu built with the host's nvcc into /tmp/gemv-bandwidth (PHASE=H).
build_gemv_probe() {
  PATH="/usr/local/cuda/bin:$PATH" nvcc -O3 -std=c++17 -arch=sm_90 native/probes/gemv-bandwidth.cu -ldl -o /tmp/gemv-bandwidth 2>&1 | tail -3
}

if [[ "$PHASE" == C ]]; then
  # Chorus's 4-bit kernels (native/cuda, --linear-kernels chorus): the MLP probe against MatMulNBits (every variant);
  # the device test (CUDA graphs on); then the 8B served at 1 and 64 streams as each of C_RUNS.
  cuda_ops_setup
  say "MLP probe: MatMulNBits against chorus.Int4Linear"
  timeout 150 "$NODE" native/probes/mlp-fusion.ts --batches 1,4,16,64,128,192,256 --only ${C_PROBE:-a,q-sym,q-zp,q-sym-chorus,q-zp-chorus,q-sym-w2,q-sym-w4,q-zp-w4,q-sym-floor,q-sym-w4-floor,q-sym-r256,q-sym-r256-floor} 2>&1 | tee "$OUT/mlp-chorus.txt" | grep -E "^\||REFUSED|FAILED|MISMATCH"
  rm -rf /tmp/mlp-fusion
  if [[ -z "${C_SKIP_TEST:-}" ]]; then
    say "device test: chorus.Int4Linear against MatMulNBits (CUDA graphs on)"
    chorus_ops_device_test run-all-chorus
  fi
  ensure_weights
  # int4 with Chorus's kernels, float16 (the ratio's base, same host), then int4 with ORT's, while time is left.
  for run in ${C_RUNS:-int4-chorus float16 int4-ort}; do
    [[ $run == none ]] && continue  # C_RUNS=none: the probe and the device test alone
    (( $(left) > 100 )) || { say "no time left for $run"; continue; }
    args=(); [[ $run == int4-* ]] && args=(--serve-arg=--quantize=int4 --serve-arg=--quant-symmetric)
    case $run in
      int4-chorus) args+=(--serve-arg=--linear-kernels=chorus) ;;
      int4-chorus-r256) args+=(--serve-arg=--linear-kernels=chorus --serve-arg=--max-num-batched-tokens=256) ;;
      int4-ort) args+=(--serve-arg=--linear-kernels=ort) ;;
    esac
    say "8B served: $run"
    [[ $run == int4-chorus-r256 ]] && export CHORUS_INT4_MMA_ROWS=256 || unset CHORUS_INT4_MMA_ROWS
    serve_8b "$run" "${args[@]}"
    grep -m3 -E "Int4Linear|error|Error" "$OUT/$run/server.log" | cut -c1-300
  done
  exit 0
fi
if [[ "$PHASE" == N ]]; then
  # Where chorus.Int4Linear's time goes: its own per-call kernel times by path, shape and rows (gate|up and down
  # apart, split-K sum included) for each variant, then Nsight Compute on its kernels where the host has ncu (DRAM
  # bytes and rate, occupancy, warp stalls), MatMulNBits' and cuBLAS's kernels beside them.
  cuda_ops_setup
  say "chorus.Int4Linear's own kernel times (CHORUS_INT4_TIMING=1: CUDA events around each call's launches)"
  CHORUS_INT4_TIMING=1 timeout 150 "$NODE" native/probes/mlp-fusion.ts --batches 1,4,64,128,192 --runs 20 \
    --only ${N_PROBE:-q-sym-chorus,q-zp-chorus,q-sym-w2,q-sym-w4,q-sym-floor,q-sym-w4-floor,q-sym-r256,q-sym-r256-floor} 2>&1 \
    | tee "$OUT/kernel-times.txt" | sed -n '/kernel times (CHORUS_INT4_TIMING)/,$p' | head -80
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [[ -z "$NCU" ]]; then say "no ncu on this host"; exit 0; fi
  for M in 1 64; do
    say "ncu, M $M"
    timeout $(( ($(left) - 10) / 2 )) "$NCU" --target-processes all -k "regex:int4|Int4|MatMulFloat|Dequantize|gemm|gemv|xmma" \
      --launch-skip 60 --launch-count 16 --section SpeedOfLight --section Occupancy --section WarpStateStats \
      --section MemoryWorkloadAnalysis --csv --page details "$NODE" native/probes/mlp-fusion.ts --batches "$M" --runs 4 \
      --warmup 2 --layers 2 --only ${N_PROBE:-q-sym,q-sym-chorus,q-sym-w4} > "$OUT/ncu-m$M.csv" 2>&1
    say "ncu exit $?"; grep -E '"Duration"|"DRAM Throughput"|"Achieved Occupancy"' "$OUT/ncu-m$M.csv" | cut -c1-220 | head -30
  done
  rm -rf /tmp/mlp-fusion
  exit 0
fi
if [[ "$PHASE" == A ]]; then
  # chorus.DecodeAttention (native/cuda/decode_attention.cuh): equal to GroupQueryAttention (the check), then its time
  # a layer against XQA's, 32 layers replayed from a CUDA graph as the server's decode steps run them.
  cuda_ops_setup
  say "chorus.DecodeAttention against GroupQueryAttention"
  timeout 120 "$NODE" native/probes/decode-attention-check.ts 2>&1 | tee "$OUT/decode-attention-check.txt"; say "check exit ${PIPESTATUS[0]}"
  for op in "--op chorus" ""; do
    say "GQA probe ${op:-XQA}, 32 layers, CUDA graph"
    ORT_ENABLE_XQA=1 timeout 120 "$NODE" native/probes/gqa-backends.ts --layers 32 --graph $op 2>&1 | grep -v "^$" | tee -a "$OUT/decode-attention-time.txt"
  done
  say "device test: --decode-attention chorus on the fixtures against transformers (CUDA graphs on)"
  chorus_ops_device_test run-all-attention DecodeAttention
  serve_8b_by decode-attention chorus xqa
  exit 0
fi
if [[ "$PHASE" == AN ]]; then
  # Why chorus.DecodeAttention streams 64 rows of 1k tokens at 2.5 TB/s where XQA reaches 2.9-3.1: the probe with a
  # cache row as long as what it holds (--slot 1024: fewer pages touched) against the server's longer rows, and with
  # each block's tiles from a place of its own (CHORUS_ATTN_ROTATE=1: the blocks' rows start 1 MB apart and walked the
  # same offsets in step), then Nsight Compute on each kernel at 64 x 1k (speed of light, memory workload, warp
  # states, occupancy).
  cuda_ops_setup
  say "chorus.DecodeAttention with CHORUS_ATTN_ROTATE=1 against GroupQueryAttention"
  CHORUS_ATTN_ROTATE=1 timeout 120 "$NODE" native/probes/decode-attention-check.ts 2>&1 | tail -1 | tee "$OUT/check-rotate.txt"
  for slot in 4096 1024; do
    for run in chorus chorus-rotate xqa; do
      op=(); [[ $run == chorus* ]] && op=(--op chorus)
      say "GQA probe $run, 64 x 1k, --slot $slot"
      CHORUS_ATTN_ROTATE=$([[ $run == chorus-rotate ]] && echo 1 || echo 0) ORT_ENABLE_XQA=1 timeout 60 "$NODE" native/probes/gqa-backends.ts \
        --layers 32 --graph --batches 1,64 --cached $([[ $slot == 4096 ]] && echo 1024,4001 || echo 1024) --slot $slot "${op[@]}" 2>&1 | grep "us per layer" | sed "s/^/$run: /" | tee -a "$OUT/slots.txt"
    done
  done
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  [[ -n "$NCU" ]] || { say "no ncu on this host"; exit 0; }
  for op in chorus xqa; do
    (( $(left) > 60 )) || { say "no time left for ncu $op"; break; }
    args=(); [[ $op == chorus ]] && args=(--op chorus)
    ORT_ENABLE_XQA=1 timeout $(( ($(left) - 10) / 2 )) "$NCU" --target-processes all --launch-skip 200 --launch-count 12 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
      --csv --page details "$NODE" native/probes/gqa-backends.ts --layers 32 --graph --batches 64 --cached 1024 "${args[@]}" > "$OUT/ncu-$op.csv" 2>&1
    say "ncu $op exit $?"; grep -E '"Duration"|"DRAM Throughput"|"Achieved Occupancy"|"Registers Per Thread"' "$OUT/ncu-$op.csv" | cut -c1-200 | head -24
  done
  exit 0
fi
if [[ "$PHASE" == G ]]; then
  # chorus.Linear's float16 GEMV (f16_gemv.cuh) against cuBLAS through ORT's MatMul: Llama 3 8B's MLP (gate|up N 28672
  # K 4096, down N 4096 K 14336), 1-4 rows on the GEMV and 8-64 on cuBLAS behind the same op; its SASS (are the
  # unrolled weight loads all in flight?); the device test; the 8B float16 served with --linear-kernels chorus and ort.
  cuda_ops_setup
  say "MLP probe: MatMul against chorus.Linear"
  timeout 150 "$NODE" native/probes/mlp-fusion.ts --batches 1,2,3,4,8,64 --only ${G_PROBE:-a,a-chorus} 2>&1 | tee "$OUT/mlp-linear.txt" | grep -E "^\||M=|REFUSED|FAILED|MISMATCH"
  rm -rf /tmp/mlp-fusion
  CUOBJDUMP=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
  if [[ -n "$CUOBJDUMP" ]]; then
    "$CUOBJDUMP" -sass native/build-cuda/libchorus_cuda_ops.so | awk '/Function : .*f16Gemv/{p=1} /Function : /&&!/f16Gemv/{p=0} p' > "$OUT/sass-f16gemv.txt" 2>&1
    say "SASS: $(grep -c LDG "$OUT/sass-f16gemv.txt") LDG in $(wc -l < "$OUT/sass-f16gemv.txt") lines"
  fi
  say "device test: --linear-kernels chorus on float16 fixtures against transformers (CUDA graphs on)"
  chorus_ops_device_test run-all-linear chorus.Linear
  serve_8b_by linear-kernels chorus ort
  exit 0
fi
if [[ "$PHASE" == H ]]; then
  # chorus.Linear with one resident wave of split-K blocks and its slices summed by the last one, and
  # chorus.DecodeAttention's decode step as one launch (rotary, append and merge inside): the GEMV probe by layout
  # (native/probes/gemv-bandwidth.cu, built here), the attention check and its time a layer against XQA, both device
  # tests, then the 8B served as H_RUNS (default, linear = --linear-kernels chorus, both = and --decode-attention chorus;
  # H_SERVED_ONLY=1: only these).
  cuda_ops_setup
  if [[ -z "${H_SERVED_ONLY:-}" ]]; then
  say "GEMV probe (one row)"
  build_gemv_probe
  timeout 60 /tmp/gemv-bandwidth 1 > "$OUT/gemv-m1.txt" 2>&1; say "probe exit $?"
  grep -E "read|kn-256-last|cublas \(|nk R1" "$OUT/gemv-m1.txt" | head -40
  say "chorus.DecodeAttention against GroupQueryAttention"
  timeout 120 "$NODE" native/probes/decode-attention-check.ts > "$OUT/decode-attention-check.txt" 2>&1; say "check exit $?"; tail -3 "$OUT/decode-attention-check.txt"
  for op in "--op chorus" ""; do
    ORT_ENABLE_XQA=1 timeout 60 "$NODE" native/probes/gqa-backends.ts --layers 32 --graph --batches 1,16,64 $op 2>&1 | grep "us per layer" | tee -a "$OUT/decode-attention-time.txt"
  done
  say "device tests (CUDA graphs on)"
  chorus_ops_device_test run-all-linear chorus.Linear
  chorus_ops_device_test run-all-attention DecodeAttention
  fi
  ensure_weights
  for run in ${H_RUNS:-default linear both}; do
    (( $(left) > 90 )) || { say "no time left for $run"; continue; }
    args=()
    case $run in
      linear) args=(--serve-arg=--linear-kernels=chorus) ;;
      both) args=(--serve-arg=--linear-kernels=chorus --serve-arg=--decode-attention=chorus) ;;
    esac
    say "8B float16 served: $run"
    serve_8b "served-$run" "${args[@]}"
  done
  exit 0
fi
if [[ "$PHASE" == B ]]; then
  # The issue's own figure: `npm run bench:gpu` (PyTorch and Chorus at 1 and 64 sequences, same run), Chorus as
  # shipped and with Chorus's kernels (--linear-kernels chorus --decode-attention chorus).
  ensure_weights
  say "bench:gpu: PyTorch and Chorus (default kernels)"
  CHORUS_CUDA_GRAPHS=1 STAGES="torch chorus" DEADLINE_S=$([[ "${B_FLAGS:-}" == none ]] && echo $(($(left) - 10)) || echo $(( ($(left) - 20) / 2 + 20 ))) OUT="$OUT/bench-default" bash scripts/gpu/run-all.sh --batches 1,64 --int4 "${B_INT4:-b32-zp}" > /dev/null 2>&1
  say "exit $?"; cat "$OUT"/bench-default/bench/bench-gpu.md 2>/dev/null | head -8
  [[ "${B_FLAGS:-}" == none ]] && exit 0  # B_FLAGS=none: the first bench alone (B_INT4: its int4 variants, default b32-zp)
  say "bench:gpu: Chorus with ${B_FLAGS:---linear-kernels chorus}"
  CHORUS_CUDA_GRAPHS=1 STAGES="chorus" DEADLINE_S=$(($(left) - 10)) OUT="$OUT/bench-chorus" bash scripts/gpu/run-all.sh --batches 1,64 \
    ${B_FLAGS:---linear-kernels chorus} > /dev/null 2>&1
  say "exit $?"; cat "$OUT"/bench-chorus/bench/bench-gpu.md 2>/dev/null | head -8
  exit 0
fi
if [[ "$PHASE" == U ]]; then
  # Each MLP's SwiGLU folded into its down projection's chorus.Linear (activation swiglu, the default since
  # 2026-12-01i; CHORUS_FOLD_SWIGLU=0 keeps the Split, Sigmoid and Muls): the MLP probe (a, a-chorus,
  # a-chorus-swiglu), the device test's chorus.Linear cases (folded and not), then the 8B served folded and not and
  # bench:gpu folded, while time is left.
  cuda_ops_setup
  say "MLP probe: chorus.Linear with and without the SwiGLU fold"
  timeout 150 "$NODE" native/probes/mlp-fusion.ts --batches 1,2,4,64 --only ${U_PROBE:-a,a-chorus,a-chorus-swiglu} 2>&1 | tee "$OUT/mlp-swiglu.txt" | grep -E "^\||M=|REFUSED|FAILED|MISMATCH"
  rm -rf /tmp/mlp-fusion
  if [[ -z "${U_SKIP_TEST:-}" ]]; then
    say "device test: chorus.Linear, folded and not (CUDA graphs on)"
    chorus_ops_device_test run-all-linear chorus.Linear
  fi
  ensure_weights
  for fold in ${U_RUNS:-1 0}; do
    (( $(left) > 90 )) || { say "no time left for served, CHORUS_FOLD_SWIGLU=$fold"; continue; }
    say "8B float16 served, CHORUS_FOLD_SWIGLU=$fold"
    CHORUS_FOLD_SWIGLU=$fold serve_8b "served-fold-$fold"
    grep -m2 -E "Chorus's kernels|rror" "$OUT/served-fold-$fold/server.log" | cut -c1-300
  done
  if (( $(left) > 80 )); then
    say "bench:gpu (Chorus alone, SwiGLU folded)"
    CHORUS_CUDA_GRAPHS=1 STAGES="chorus" DEADLINE_S=$(($(left) - 10)) OUT="$OUT/bench-fold" bash scripts/gpu/run-all.sh --batches 1,64 --int4 none > /dev/null 2>&1
    say "exit $?"; head -8 "$OUT/bench-fold/bench/bench-gpu.md" 2>/dev/null
  fi
  exit 0
fi
if [[ "$PHASE" == O ]]; then
  # Where a one-stream decode step's time goes outside ORT's run (the served 8B: 6.67 ms a step on the shards, 5.59
  # in run, 2026-12-01i): the CUDA-graph device tests (bound runs, both layouts; O_SKIP_TEST=1 skips them), then
  # native/probes/step-overhead.ts on the 8B float16 with CUDA graphs without and with V8's CPU profiler (a profile a
  # thread, summarized by native/probes/cpuprofile-top.py), O_TOKENS tokens, then the 8B served (O_SERVED=0 skips it).
  cuda_ops_setup
  if [[ -z "${O_SKIP_TEST:-}" ]]; then
    say "device tests: PagedShard (both layouts, CUDA graphs) and chorus.Linear"
    device_test run-all-paged 150 "" test/device/PagedShard.test.ts
    chorus_ops_device_test run-all-linear chorus.Linear
  fi
  ensure_weights
  for prof in 0 1; do
    say "step overhead, one stream$([[ $prof == 1 ]] && echo ", CPU profiles")"
    flags=(); [[ $prof == 1 ]] && flags=(--cpu-prof --cpu-prof-dir="$OUT/prof")
    ORT_ENABLE_XQA=1 timeout 200 "$NODE" "${flags[@]}" native/probes/step-overhead.ts --model "$CKPT" --device cuda:0 --dtype float16 --cuda-graphs --tokens ${O_TOKENS:-512} 2>&1 | grep -v INFO | tail -4
    say "exit $?"
  done
  python3 native/probes/cpuprofile-top.py "$OUT/prof" 25 > "$OUT/prof-top.txt"; grep -B1 -A25 "rowGraphStep\|blockGraphStep" "$OUT/prof-top.txt" | head -40
  if [[ "${O_SERVED:-1}" == 1 ]] && (( $(left) > 90 )); then
    say "8B float16 served"
    serve_8b served
  fi
  exit 0
fi
if [[ "$PHASE" == MA ]]; then
  # Marlin (CHORUS_INT4_KERNEL=marlin, third_party/marlin): marlin-check (20 runs a row count), its device test, the MLP probe at block 128 against
  # MatMulNBits and Chorus's own tensor-core kernel, then the 8B int4 (block 128, symmetric) served with Marlin, as
  # float16 and with ORT's MatMulNBits (MA_RUNS), then bench:gpu's int4 b128-sym with Marlin while time is left.
  cuda_ops_setup
  if [[ -z "${MA_SKIP_CHECK:-}" ]]; then
    marlin_check
  fi
  if [[ -z "${MA_SKIP_TEST:-}" ]]; then
    say "device test: chorus.Int4Linear's Marlin path against MatMulNBits"
    device_test run-all-marlin 120 "" test/device/Int4MarlinDevice.test.ts
  fi
  if [[ -z "${MA_SKIP_PROBE:-}" ]]; then
    say "MLP probe, block 128: MatMulNBits, chorus.Int4Linear, Marlin"
    timeout 180 "$NODE" native/probes/mlp-fusion.ts --block 128 --batches ${MA_BATCHES:-1,4,16,64,128,512} --only ${MA_PROBE:-a,q-sym,q-sym-chorus,q-sym-marlin} 2>&1 | tee "$OUT/mlp-marlin.txt" | grep -E "^\||REFUSED|FAILED|MISMATCH|M=|^q-|^a"
    rm -rf /tmp/mlp-fusion
  fi
  ensure_weights
  for run in ${MA_RUNS:-int4-marlin float16 int4-ort}; do
    [[ $run == none ]] && continue
    (( $(left) > 100 )) || { say "no time left for $run"; continue; }
    args=(); [[ $run == int4-* ]] && args=(--serve-arg=--quantize=int4 --serve-arg=--quant-symmetric --serve-arg=--quant-block-size=128)
    case $run in
      int4-marlin) args+=(--serve-arg=--linear-kernels=chorus); export CHORUS_INT4_KERNEL=marlin ;;
      int4-chorus) args+=(--serve-arg=--linear-kernels=chorus); unset CHORUS_INT4_KERNEL ;;
      int4-ort) args+=(--serve-arg=--linear-kernels=ort); unset CHORUS_INT4_KERNEL ;;
      *) unset CHORUS_INT4_KERNEL ;;
    esac
    say "8B served: $run"
    serve_8b "$run" "${args[@]}"
    grep -m3 -E "Int4Linear|Marlin|rror" "$OUT/$run/server.log" | cut -c1-300
  done
  unset CHORUS_INT4_KERNEL
  if [[ -n "${MA_BENCH:-}" ]] && (( $(left) > 80 )); then
    say "bench:gpu int4 b128-sym with Marlin"
    CHORUS_INT4_KERNEL=marlin CHORUS_CUDA_GRAPHS=1 STAGES="chorus" DEADLINE_S=$(($(left) - 10)) OUT="$OUT/bench-marlin" bash scripts/gpu/run-all.sh --batches 1,64 --int4 b128-sym --linear-kernels chorus > /dev/null 2>&1
    say "exit $?"; head -12 "$OUT/bench-marlin/bench/bench-gpu.md" 2>/dev/null
  fi
  exit 0
fi
if [[ "$PHASE" == T ]]; then
  # Kernel timelines of decode steps (issue 12's "what limits it, with kernel times"): marlin-check and the Marlin
  # device test first (T_MARLIN=0 skips them), the device tests of Chorus's SwiGLU and ArgMax ops (T_TESTS=ops; =1 also
  # inside shards), then native/probes/step-overhead.ts on the 8B under Nsight Systems
  # (CUDA graphs traced node by node; Nsight Compute's kernel durations where the host has no nsys) for each of
  # T_RUNS (SETTING:STREAMS), summarized by native/probes/kernel-steps.py into $OUT/steps-SETTING-STREAMS.txt.
  cuda_ops_setup
  if [[ "${T_MARLIN:-1}" == 1 ]]; then
    marlin_check
    say "device test: chorus.Int4Linear's Marlin path against MatMulNBits"
    device_test run-all-marlin 120 "" test/device/Int4MarlinDevice.test.ts
  fi
  if [[ "${T_TESTS:-0}" != 0 ]]; then
    # chorus.GreedyArgMax and chorus.SwiGLU op by op, then inside shards (CUDA graphs on): chorus.Linear's cases
    # (the staged SwiGLU fold and the ArgMax against transformers), DeviceParity (what `auto` picks), int4 under auto.
    say "device tests: GreedyArgMax and SwiGLU ops"
    device_test run-all-ops 120 "" test/device/GreedySwigluDevice.test.ts
    grep -h "^SwiGLU K=" "$OUT/run-all-ops/log" 2>/dev/null | sort -u
  fi
  if [[ "${T_TESTS:-0}" == 1 ]]; then
    say "device tests: chorus.Linear (SwiGLU staged, GreedyArgMax) with CUDA graphs"
    chorus_ops_device_test run-all-linear chorus.Linear
    say "device tests: DeviceParity and Int4Device with CUDA graphs (auto: Chorus's ops where the library is built)"
    device_test run-all-parity 240 CHORUS_TEST_CUDA_GRAPHS=1 test/device/DeviceParity.test.ts test/device/Int4Device.test.ts
  fi
  ensure_weights
  NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda*/nsight-systems*/bin/nsys 2>/dev/null | head -1)
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  say "nsys: ${NSYS:-none}; ncu: ${NCU:-none}"
  for run in ${T_RUNS:-f16:1 int4-ort:1 int4-marlin:1 f16:64 int4-marlin:64 int4-ort:64}; do
    setting=${run%%:*} streams=${run##*:} name="${run/:/-}"
    (( $(left) > 100 )) || { say "no time left for $run"; continue; }
    args=(); unset CHORUS_INT4_KERNEL
    case $setting in
      int4-auto) args=(--quantize b128-sym) ;;
      int4-ort) args=(--quantize b128-sym --linear-kernels ort) ;;
      int4-marlin) args=(--quantize b128-sym --linear-kernels chorus); export CHORUS_INT4_KERNEL=marlin ;;
      int4-chorus) args=(--quantize b128-sym --linear-kernels chorus) ;;
    esac
    probe=("$NODE" native/probes/step-overhead.ts --model "$CKPT" --device cuda:0 --dtype float16 --cuda-graphs --streams "$streams" "${args[@]}")
    say "timeline: $setting, $streams stream(s)"
    if [[ -n "$NSYS" ]]; then
      timeout $(($(left) - 40)) "$NSYS" profile -t cuda --cuda-graph-trace=node --sample=none --cpuctxsw=none -f true -o "/tmp/tl-$name" \
        "${probe[@]}" --tokens ${T_TOKENS:-128} 2>&1 | grep -E "ms a step|median|hand-off|rror" | tee "$OUT/probe-$name.txt"
      timeout 120 "$NSYS" stats -r cuda_gpu_trace -f csv --force-export=true -o "/tmp/tl-$name" "/tmp/tl-$name.nsys-rep" >/dev/null 2>&1
      trace="/tmp/tl-${name}_cuda_gpu_trace.csv"
    elif [[ -n "$NCU" ]]; then
      timeout $(($(left) - 30)) "$NCU" --graph-profiling node --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
        "${probe[@]}" --tokens 12 > "/tmp/tl-$name.csv" 2>&1
      grep -E "ms a step|median" "/tmp/tl-$name.csv" | tee "$OUT/probe-$name.txt"
      trace="/tmp/tl-$name.csv"
    else
      say "neither nsys nor ncu here"; break
    fi
    python3 native/probes/kernel-steps.py "$trace" --one-step "$OUT/one-step-$name.csv" > "$OUT/steps-$name.txt" 2>&1
    head -24 "$OUT/steps-$name.txt"
    rm -f /tmp/tl-$name*
  done
  unset CHORUS_INT4_KERNEL
  exit 0
fi
if [[ "$PHASE" == D ]]; then
  # Decode ahead (the default since 2026-12-02; CHORUS_DECODE_AHEAD=0 turns it off): the device tests with CUDA graphs
  # (PagedShard and DeviceParity; D_SKIP_TESTS=1 skips them), then native/probes/step-overhead.ts and the 8B served
  # with decode ahead and without, alternating (D_RUNS), then bench:gpu with it, while time is left.
  cuda_ops_setup
  if [[ -z "${D_SKIP_TESTS:-}" ]]; then
    say "device tests with decode ahead (CUDA graphs on)"
    device_test run-all-ahead 200 CHORUS_TEST_CUDA_GRAPHS=1 test/device/PagedShard.test.ts test/device/DeviceParity.test.ts
  fi
  ensure_weights
  n=0
  # A run: 1 or 0 (CHORUS_DECODE_AHEAD).
  for run in ${D_RUNS:-1 0 1 0}; do
    (( $(left) > 100 )) || { say "no time left for run $run"; continue; }
    ahead=$run
    say "CHORUS_DECODE_AHEAD=$ahead: step overhead, one stream, then served"
    CHORUS_DECODE_AHEAD=$ahead ORT_ENABLE_XQA=1 timeout 100 "$NODE" native/probes/step-overhead.ts --model "$CKPT" --device cuda:0 --dtype float16 --cuda-graphs --tokens 256 2>&1 | grep -v INFO | tail -3
    CHORUS_DECODE_AHEAD=$ahead serve_8b "served-$run-$((++n))"
  done
  if (( $(left) > 80 )); then
    say "bench:gpu (Chorus alone, decode ahead)"
    CHORUS_CUDA_GRAPHS=1 STAGES="chorus" DEADLINE_S=$(($(left) - 10)) OUT="$OUT/bench-ahead" bash scripts/gpu/run-all.sh --batches 1,64 --int4 none > /dev/null 2>&1
    say "exit $?"; head -8 "$OUT/bench-ahead/bench/bench-gpu.md" 2>/dev/null
  fi
  exit 0
fi
if [[ "$PHASE" == W ]]; then
  # Why chorus.Int4Linear is slow at one row: the probe over W_PROBE, then warp-stall reasons and instruction counts
  # (ncu raw metrics) of one kernel per variant at M 1, and the SASS of the one-row kernels where cuobjdump is found.
  cuda_ops_setup
  say "MLP probe"
  timeout 150 "$NODE" native/probes/mlp-fusion.ts --batches 1,4,16,64 --only ${W_PROBE:-q-sym,q-zp,q-sym-chorus,q-zp-chorus,q-sym-lop3,q-zp-lop3} 2>&1 | tee "$OUT/mlp-w.txt" | grep -E "^\||REFUSED|FAILED|MISMATCH"
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  CUOBJDUMP=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
  if [[ -n "$CUOBJDUMP" ]]; then
    "$CUOBJDUMP" -sass native/build-cuda/libchorus_cuda_ops.so > "$OUT/sass-all.txt" 2>&1
    say "SASS: $(wc -l < "$OUT/sass-all.txt") lines"
  fi
  STALLS=smsp__average_warp_latency_issue_stalled_long_scoreboard.ratio,smsp__average_warp_latency_issue_stalled_wait.ratio,smsp__average_warp_latency_issue_stalled_math_pipe_throttle.ratio,smsp__average_warp_latency_issue_stalled_lg_throttle.ratio,smsp__average_warp_latency_issue_stalled_mio_throttle.ratio,smsp__average_warp_latency_issue_stalled_short_scoreboard.ratio,smsp__average_warp_latency_issue_stalled_not_selected.ratio,smsp__average_warp_latency_issue_stalled_selected.ratio,smsp__average_warp_latency_issue_stalled_no_instruction.ratio,smsp__average_warp_latency_issue_stalled_dispatch_stall.ratio,smsp__average_warp_latency_issue_stalled_barrier.ratio,smsp__average_warp_latency_issue_stalled_tex_throttle.ratio,smsp__average_warp_latency_issue_stalled_drain.ratio,smsp__average_warp_latency_issue_stalled_imc_miss.ratio,smsp__average_warp_latency_issue_stalled_membar.ratio,smsp__average_warp_latency_issue_stalled_sleeping.ratio,smsp__average_warp_latency_issue_stalled_branch_resolving.ratio,smsp__inst_executed.sum,smsp__inst_executed_pipe_tensor.sum,smsp__inst_executed_pipe_alu.sum,smsp__inst_executed_pipe_fma.sum,smsp__inst_executed_pipe_lsu.sum,smsp__inst_executed_pipe_fp16.sum,gpu__time_duration.sum,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active
  if [[ -n "$NCU" ]]; then
    for v in ${W_NCU:-q-sym-chorus q-sym-lop3}; do
      (( $(left) > 40 )) || { say "no time left for ncu $v"; break; }
      timeout 60 "$NCU" --target-processes all -k "regex:int4|Int4|MatMulFloat|Dequantize|gemv|Gemv" --launch-skip 40 --launch-count 6 \
        --metrics "$STALLS" --csv --page raw "$NODE" native/probes/mlp-fusion.ts --batches 1 --runs 4 --warmup 2 --layers 2 --only "$v" > "$OUT/ncu-stalls-$v.csv" 2>&1
      say "ncu $v exit $?"
    done
  fi
  rm -rf /tmp/mlp-fusion
  exit 0
fi
if [[ "$PHASE" == V ]]; then
  # Check after a fix: the paged and row device tests, then 64 and 256 streams on the default server.
  CUDA_TEST_CMD='CHORUS_TEST_DEVICE=cuda node_modules/node/bin/node node_modules/vitest/vitest.mjs run --config vitest.device.config.ts test/device/PagedShard.test.ts test/device/DeviceParity.test.ts -t "paged|rows|second turn|pattern of load"' \
    STAGES="parity" DEADLINE_S=120 PARITY_TIMEOUT_S=100 OUT="$OUT/run-all" bash scripts/gpu/run-all.sh
  say "device tests exit $?"; grep -E "Tests |×" "$OUT/run-all/log" | head -20
  ensure_weights
  timeout $(($(left) - 5)) "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/server" --skip-weights \
    --max-batch 256 --concurrency 64,256 --prefix-history 0 --ready-timeout-s 120 --bench-timeout-s 120
  say "sweep exit $?"; grep -m2 -E "illegal|disabled" "$OUT/server/server.log" | cut -c1-250
  exit 0
fi
echo "PHASE must be S, Q1, Q2, Q3, V, F, X, I, M, K, C, N, W, A, AN, G, H, B, U, O, D, MA or T" >&2
exit 2
