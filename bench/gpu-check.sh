#!/usr/bin/env bash
# GPU check (needs torch with CUDA already installed; analogpipe is used from ./src):
#   the core bench on CUDA, AP training of ResNet10 at M = 4 on CIFAR-shaped synthetic data,
#   the CUDA parity tests (tests/test_cuda.py). One JSON (runs/gpu-check.json), one table.
# Usage: bench/gpu-check.sh [--out FILE] [--case-budget S]
#        bench/gpu-check.sh --device cpu --smoke     # dry run of the same code on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# 8 minutes in all; the script's own parts are bounded well below that
exec timeout --signal=INT --kill-after=10 480 "$PY" bench/gpu_check.py "$@"
