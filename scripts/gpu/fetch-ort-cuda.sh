#!/usr/bin/env bash
# Puts the CUDA 13 build of ONNX Runtime 1.29's CUDA provider (from the npm package
# com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9, folder Plugins/Linux/x64/) into vendor/ort-cuda/, on the
# development machine: GPU hosts have no network. scripts/gpu/run-all.sh copies the two files next to
# onnxruntime-node's libonnxruntime.so.1 on the host. vendor/ is ignored by git: pack it with the build,
#   ../shared/gpu/pack.sh .gpu-parts node_modules build vendor
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PKG=com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9
DEST="$REPO/vendor/ort-cuda"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG" > /dev/null && tar xzf ./*.tgz)
mkdir -p "$DEST"
cp -f "$tmp"/package/Plugins/Linux/x64/libonnxruntime_providers_{cuda,shared}.so "$DEST/"
# The files this script was written against; a different package content fails here, not on the GPU host.
(cd "$DEST" && sha256sum -c - <<'SUMS'
56cf3254b118ad837ccc4ed8f6d1b23504bbf7ef91b34cbc0b289cb7f10b3037  libonnxruntime_providers_cuda.so
c6a12593396095f5670160e284c35d1700b7708cf3037b7042e2a5200ccae772  libonnxruntime_providers_shared.so
SUMS
)
ls -l "$DEST"
