#!/usr/bin/env bash
# The GPU suite in one call: bash benchmarks/gpu/run.sh OUT_DIR [--smoke] [--budget S] [--only P,..]
# Run from the repository root; easyfit comes from the source tree (PYTHONPATH), not from an
# install. On the GPU machine "python3" is the interpreter that holds jax. See suite.py.
set -u
cd "$(dirname "$0")/../.."
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/gpu/run.sh OUT_DIR [--smoke] [--budget SECONDS]" >&2
  exit 2
fi
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
mkdir -p "$1"
echo "easyfit GPU suite: $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'), $("$PYTHON" --version 2>&1)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$PYTHON" benchmarks/gpu/suite.py "$@"
