#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up, start the services the tests need, lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
[ -x scripts/install_chromium.sh ] && scripts/install_chromium.sh
.venv/bin/ruff check moecomp tests benchmarks
.venv/bin/ruff format --check moecomp tests benchmarks
.venv/bin/mypy moecomp
.venv/bin/python -m pytest -q "$@"
