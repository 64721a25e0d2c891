#!/usr/bin/env bash
# One short check of the CUDA path on a machine with an NVIDIA GPU (the `device` tool's machine):
#   bash scripts/gpu-check.sh
# It needs onnxruntime-node's CUDA provider libraries beside its binding; they are not in the npm
# package, so this fetches them when missing (network access to NuGet, CUDA 12 and cuDNN 9).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
if ! ls node_modules/onnxruntime-node/bin/napi-v*/linux/x64/libonnxruntime_providers_cuda.so >/dev/null 2>&1; then
  ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js
fi
node --import tsx scripts/gpu-check.ts
