#!/usr/bin/env bash
# Create .venv and install moecomp with its pinned dependencies (idempotent: a second run only checks).
# torch is installed first and pinned, so that pip takes the CPU build on machines without CUDA
# instead of pulling several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import moecomp, torch, transformers, llmcompressor, lm_eval, playwright, schemathesis" 2>/dev/null; then
    .venv/bin/python -m pip install -q torch==2.13.0
    .venv/bin/python -m pip install -q -e '.[test]'
fi
