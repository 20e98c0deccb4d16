#!/usr/bin/env bash
# Bisects the CUDA "illegal memory access" seen at the start of a bench level on the row layout: the same short
# load (4 streams one after another, then 16 at once, whose warm-up repeats an earlier prompt) against serve variants.
set -uo pipefail
: "${OUT:?}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 2
FINAL="$OUT"; OUT=/tmp/rows-crash; rm -rf "$OUT"; mkdir -p "$OUT"
trap 'tar czf "$FINAL/rows-crash.tgz" -C "$OUT" . 2>/dev/null' EXIT
export BENCH_DIR=/tmp/chorus-gpu-bench CHORUS_CACHE=/tmp/chorus-gpu-bench/chorus-cache
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu"
cp -f vendor/ort-cuda/*.so node_modules/onnxruntime-node/bin/napi-v6/linux/x64/
NODE=node_modules/node/bin/node; CKPT=$BENCH_DIR/llama3-8b-random
[[ -f $CKPT/model.safetensors.index.json ]] || timeout 200 python3 tools/bench-gpu/make_weights.py "$CKPT" > "$OUT/weights.log" 2>&1
variant() {
  local name=$1; shift
  timeout 150 env "$@" "$NODE" tools/bench-gpu/server-sweep.ts --checkpoint "$CKPT" --out "$OUT/$name" --skip-weights --max-batch 256 \
    --concurrency 1,16 --requests 16 --prefix-history 0 --ready-timeout-s 120 --bench-timeout-s 60 $SERVE > "$OUT/$name.log" 2>&1
  echo "== $name: $(grep -E '^\| (1|16) \|' "$OUT/$name/server-sweep.md" | tr '\n' ' ' | cut -c1-200)"
  grep -m2 -E "illegal|disabled" "$OUT/$name/server.log" | cut -c1-250
}
SERVE="" variant graphs-reuse X=1
SERVE="--serve-arg=--no-prefix-caching" variant graphs-noreuse X=1
SERVE="--no-cuda-graphs" variant nographs-reuse X=1
SERVE="--no-cuda-graphs" variant nographs-reuse-blocking CUDA_LAUNCH_BLOCKING=1
