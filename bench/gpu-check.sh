#!/usr/bin/env bash
# GPU check (needs torch with CUDA already installed; analogpipe is used from ./src):
#   the core bench on CUDA, AP training of ResNet10 at M = 4 on CIFAR-shaped synthetic data,
#   the CUDA parity tests (tests/test_cuda.py). One JSON (the repository's runs/gpu-check.json,
#   or --out FILE relative to the current folder), one table.
# Usage: bench/gpu-check.sh [--out FILE] [--case-budget S]
#        bench/gpu-check.sh --device cpu --smoke     # dry run of the same code on the CPU
set -euo pipefail
# no cd: a relative --out is relative to the folder it is run from
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
# 8 minutes in all; the script's own parts are bounded well below that
exec timeout --signal=INT --kill-after=10 480 "$PY" "$ROOT/bench/gpu_check.py" "$@"
