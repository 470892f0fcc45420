#!/usr/bin/env bash
# The GPU training benchmark in one command, for a short loan of a GPU machine (≈ 5 min):
#
#   LIBTORCH=<CUDA libtorch, e.g. the torch wheel's directory> [PY=<python with torch>] \
#       crates/qat-train/examples/bench_gpu.sh [steps]
#
# Builds bench_train with libtorch_cuda linked (QAT_LINK_CUDA=1), then, for MobileNet-v1 α 0.25 and
# α 0.5 at batch 64 and 256 on cuda:0: float, whitepaper QAT, PyTorch-fold QAT and BN frozen (both
# folds), interleaved in one run, ms/step, ×float and host reads per step; and PyTorch's own eager
# QAT (torch.ao) on the same net and device (xtask/py/bench_torch_qat.py) when PY's torch sees a GPU.
# Run from the repository root.
set -euo pipefail
: "${LIBTORCH:?set LIBTORCH to a CUDA build of libtorch (directory with include/ and lib/)}"
steps="${1:-20}"
PY="${PY:-python3}"
QAT_LINK_CUDA=1 cargo build --release -p qat-train --example bench_train
bin=target/release/examples/bench_train
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
for width in 0.25 0.5; do
  for batch in 64 256; do
    echo "=== MobileNet-v1 a${width}, batch ${batch}, cuda"
    "$bin" "$steps" 1 both --device cuda --batch "$batch" --width "$width" --repeats 1 \
      --phases float,qat,bn-frozen
    if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      "$PY" xtask/py/bench_torch_qat.py --device cuda --width "$width" --batch "$batch" --steps "$steps"
    else
      echo "torch.ao eager QAT: skipped ($PY has no torch with CUDA)"
    fi
  done
done
