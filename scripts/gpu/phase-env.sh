# Sourced by the phase scripts of scripts/gpu (serving-session.sh, multi-gpu.sh, paged-serving.sh) after they set
# PHASE: the repository root as working folder, the bench folder and conversion cache kept between calls on a warm
# host, the host's CUDA libraries, and the timing helpers (`say` logs a step with the seconds since the start, `left`
# is what remains of DEADLINE_S, default 575 of a call's 600 s).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 2
export BENCH_DIR="${BENCH_DIR:-/tmp/chorus-gpu-bench}"
export CHORUS_CACHE="$BENCH_DIR/chorus-cache"
NODE="$REPO/node_modules/node/bin/node"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$REPO/node_modules/.bin:$PATH"
START=$SECONDS
say() { printf '\n=== [%s %ss] %s\n' "$PHASE" "$((SECONDS - START))" "$*"; }
left() { echo $((${DEADLINE_S:-575} - (SECONDS - START))); }
